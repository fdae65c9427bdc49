"""Route each slice to one of two trained models: the home model on the slices it was built for, the away model
on every other (brainseg.routing).

    python -m train.route --home unet --away robust-ensemble --out-dir assets/models/routed \
        --skull-detector --data-dir DATA

Nothing is tuned: each member keeps its own threshold (the routed threshold 0.5 maps to each), and the minimum
component size is the home model's unless ``--min-component-px`` says otherwise. Without ``--copy-weights``
the folder holds only ``config.json`` and loads its members' weights from ``--home`` and ``--away`` (bundled
names, folders or ORG/NAME@REV): no weights are duplicated. With it, ``model.safetensors`` holds both members
(a self-contained folder to publish). ``--skull-detector`` trains :class:`brainseg.skull.SkullDetector` on the
training patients of ``--data-dir`` (never the validation or held-out ones; its validation accuracy is recorded)
and stores its ~15 k weights in the folder's ``model.safetensors``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from brainseg import Segmenter
from brainseg.config import ONNX_FILE, WEIGHTS_FILE
from brainseg.data import load_slices, make_split
from brainseg.routing import RouteRule, route, self_contained
from brainseg.skull import DetectorTraining, SkullDetector, detector_accuracy, detector_examples, train_skull_detector
from brainseg.weights import WEIGHT_DTYPES, save_model, save_weights
from train.cli import add_validation_patient_arguments, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.route", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="the model for whole-head three-sequence LGG-like slices "
                        "(bundled name, folder or ORG/NAME[@REV])")
    parser.add_argument("--away", required=True, help="the model for every other slice (missing sequences, a "
                        "small brain in the frame)")
    parser.add_argument("--out-dir", required=True, help="the routed model's folder (written)")
    defaults = RouteRule()
    parser.add_argument("--min-extent", type=float, default=defaults.min_extent,
                        help="slices whose tissue spans less of the frame than this go away (default %(default)s)")
    parser.add_argument("--copy-tolerance", type=float, default=defaults.copy_tolerance,
                        help="a channel this close to FLAIR counts as FLAIR copied in (default %(default)s)")
    parser.add_argument("--min-component-px", type=int, default=None,
                        help="the routed model's minimum component size (default: the home model's)")
    parser.add_argument("--copy-weights", choices=list(WEIGHT_DTYPES), default=None,
                        help="also write both members' weights into model.safetensors in this dtype")
    parser.add_argument("--skull-detector", action="store_true",
                        help="train a skull-stripping detector on the training patients of --data-dir (as is vs "
                        "skull-stripped) and send the slices it flags away; its validation accuracy is printed")
    parser.add_argument("--detector-epochs", type=int, default=DetectorTraining().epochs)
    add_validation_patient_arguments(parser, required=False)
    return parser


def skull_detector(args: argparse.Namespace) -> tuple[SkullDetector, dict]:
    """A detector trained on the split's training patients, and its record (settings, validation accuracy)."""
    if not args.data_dir:
        raise ValueError("--skull-detector trains on the dataset's training patients: give --data-dir")
    split = make_split(args.data_dir, val_fraction=args.val_fraction, seed=args.split_seed)
    settings = DetectorTraining(epochs=args.detector_epochs)
    detector = train_skull_detector(*detector_examples(load_slices(list(split.train))[0]), settings)
    validation = detector_accuracy(detector, *detector_examples(load_slices(list(split.val))[0]))
    return detector, {"skull_detector_training": asdict(settings), "skull_detector_trained_on":
                      f"{len(split.patients('train'))} training patients", "skull_detector_validation": validation,
                      "split": "patient", "split_seed": args.split_seed, "val_fraction": args.val_fraction}


def make_routed(args: argparse.Namespace) -> int:
    rule = RouteRule(copy_tolerance=args.copy_tolerance, min_extent=args.min_extent,
                     skull_detector=args.skull_detector)
    detector, record = skull_detector(args) if args.skull_detector else (None, {})
    home, away = (Segmenter.from_pretrained(source, device="cpu", backend="torch") for source in (args.home, args.away))
    config, network = route((home.config, home.model), (away.config, away.model), rule,
                            sources=(args.home, args.away), min_component_px=args.min_component_px,
                            extra={"members_from": [home.description, away.description], **record},
                            detector=detector)
    out_dir = Path(args.out_dir)
    if args.copy_weights:
        save_model(network, self_contained(config), out_dir, WEIGHT_DTYPES[args.copy_weights])
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in (WEIGHTS_FILE, ONNX_FILE):  # files left from an earlier run would be loaded instead
            (out_dir / stale).unlink(missing_ok=True)
        if detector is not None:  # the folder's own weights: the detector's (the members stay in their folders)
            save_weights(detector, out_dir)
        config.save(out_dir)
    print(json.dumps({"out_dir": args.out_dir, "route": config.route, "threshold": config.threshold,
                      "min_component_px": config.min_component_px, **record}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: make_routed(args))


if __name__ == "__main__":
    raise SystemExit(main())
