"""Combine trained models into one ensemble model folder (mean of their probabilities), tuned on validation.

    python -m train.ensemble --member unet-robust --member runs/segformer-robust/best \\
        --out-dir runs/ensemble --data-dir DATA --weights-dtype float16

Each member keeps its own flip TTA; the ensemble's threshold and minimum component size are tuned on the
validation patients of the members' split (as ``train.tune`` does for one model), never on held-out patients.
The folder loads like any model (``Segmenter.from_pretrained(folder)``, the app's ``--model``, ``train.evaluate``).
"""
from __future__ import annotations

import argparse
import json

from brainseg import Segmenter
from brainseg.ensemble import combine
from brainseg.evaluation import tune_on_validation_patients
from brainseg.weights import WEIGHT_DTYPES, save_model
from train.cli import add_device_argument, add_validation_patient_arguments, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--member", action="append", required=True,
                        help="a trained model (bundled name, folder or ORG/NAME[@REV]); give two or more")
    parser.add_argument("--out-dir", required=True, help="the ensemble's model folder (written)")
    add_validation_patient_arguments(parser)
    add_device_argument(parser)
    parser.add_argument("--weights-dtype", choices=list(WEIGHT_DTYPES), default="float32",
                        help="how model.safetensors stores the weights (float16 halves the file; loading casts "
                        "back to float32)")
    return parser


def make_ensemble(args: argparse.Namespace) -> int:
    if len(args.member) < 2:
        raise ValueError("give at least two --member models to combine")
    loaded = [Segmenter.from_pretrained(source, device=args.device, backend="torch") for source in args.member]
    config, network = combine([(s.config, s.model) for s in loaded],
                              extra={"members_from": [s.description for s in loaded]})
    ensemble = Segmenter(network, config, device=args.device, backend="torch")
    tuned, report = tune_on_validation_patients(ensemble, args.data_dir, split_seed=args.split_seed,
                                                val_fraction=args.val_fraction, flip_tta_options=(False,))
    tuned.extra.update(split="patient", split_seed=args.split_seed, val_fraction=args.val_fraction)
    save_model(network, tuned, args.out_dir, WEIGHT_DTYPES[args.weights_dtype])
    chosen = {k: getattr(tuned, k) for k in ("threshold", "min_component_px")}
    print(json.dumps({"out_dir": args.out_dir, "chosen": chosen, "validation": report}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: make_ensemble(args))


if __name__ == "__main__":
    raise SystemExit(main())
