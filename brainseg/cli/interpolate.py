"""Interpolate the weights of a trained network and one fine-tuned from it, tuned on validation (WiSE-FT).

    brainseg interpolate --start unet --end unet-generalist --alpha 0.6 --out-dir runs/wise-0.6 --data-dir DATA

The result is one network with weights (1 - alpha) * start + alpha * end (brainseg.training.interpolation): alpha 0 is
the start, 1 the end. Pick alpha by scoring several folders with ``brainseg choose``; this command tunes
the folder's threshold, minimum component size and flip TTA on the validation patients (as ``brainseg tune``
does), never on held-out patients. With ``--no-tune`` it keeps the end network's post-processing.
"""
from __future__ import annotations

import argparse
import json

from brainseg import Segmenter
from brainseg.cli.common import add_device_argument, add_validation_patient_arguments, parse_and_run
from brainseg.cli.tune import FLIP_TTA_OPTIONS
from brainseg.evaluation.scoring import tune_on_validation_patients
from brainseg.io.weights import save_model
from brainseg.training.interpolation import interpolate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainseg interpolate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", required=True, help="the network fine-tuning started from (bundled name, "
                        "folder or ORG/NAME[@REV])")
    parser.add_argument("--end", required=True, help="the fine-tuned network (same architecture)")
    parser.add_argument("--alpha", type=float, required=True, help="weight of the end network, in [0, 1]")
    parser.add_argument("--out-dir", required=True, help="the interpolated model's folder (written)")
    add_validation_patient_arguments(parser, required=False)
    add_device_argument(parser)
    parser.add_argument("--flip-tta", choices=list(FLIP_TTA_OPTIONS), default="search",
                        help="flip TTA while tuning: 'search' tries both")
    parser.add_argument("--no-tune", dest="tune", action="store_false",
                        help="keep the end network's post-processing (no validation pass)")
    return parser


def make_interpolation(args: argparse.Namespace) -> int:
    if args.tune and not args.data_dir:
        raise ValueError("--data-dir (the full dataset) is needed to tune on the validation patients; "
                         "or pass --no-tune to keep the end network's post-processing")
    start, end = (Segmenter.from_pretrained(source, device=args.device, backend="torch")
                  for source in (args.start, args.end))
    config, network = interpolate((start.config, start.model), (end.config, end.model), args.alpha,
                                  extra={"interpolated_from": [start.description, end.description]})
    report = None
    if args.tune:
        mixed = Segmenter(network, config, device=args.device, backend="torch")
        config, report = tune_on_validation_patients(mixed, args.data_dir, split_seed=args.split_seed,
                                                     val_fraction=args.val_fraction,
                                                     flip_tta_options=FLIP_TTA_OPTIONS[args.flip_tta])
    save_model(network, config, args.out_dir)
    chosen = {k: getattr(config, k) for k in ("threshold", "min_component_px", "flip_tta")}
    print(json.dumps({"out_dir": args.out_dir, "alpha": args.alpha, "chosen": chosen, "validation": report}))
    return 0


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), make_interpolation, argv)


if __name__ == "__main__":
    raise SystemExit(main())
