"""Tune a model's threshold, minimum component size and flip TTA on the validation patients.

The choice is written into the model's config.json, so the app and evaluation use it.
Only validation patients are used: the held-out test patients never influence it.
"""
from __future__ import annotations

import argparse
import json

from brainseg import Segmenter
from brainseg.cli.common import add_device_argument, add_validation_patient_arguments, parse_and_run
from brainseg.evaluation.forms import SELECTION_FORMS
from brainseg.evaluation.scoring import tune_on_validation_patients

FLIP_TTA_OPTIONS = {"search": (False, True), "off": (False,), "on": (True,)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainseg tune", description=__doc__)
    parser.add_argument("--model", required=True, help="model folder to tune (its config.json is updated)")
    add_validation_patient_arguments(parser)
    add_device_argument(parser, precision="fp32")
    parser.add_argument("--flip-tta", choices=list(FLIP_TTA_OPTIONS), default="search",
                        help="'search' tries both; 'off' keeps inference single-pass (half the latency)")
    parser.add_argument("--forms", action="store_true",
                        help="choose on the mean over the validation slices in every input form (as is, "
                        f"{', '.join(SELECTION_FORMS[1:])}): one threshold for home and outside scans; default: the "
                        "slices as they are")
    return parser


def tune(args: argparse.Namespace) -> int:
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, bf16=args.precision == "bf16")
    tuned, report = tune_on_validation_patients(  # the training run's own split
        segmenter, args.data_dir, split_seed=args.split_seed, val_fraction=args.val_fraction,
        flip_tta_options=FLIP_TTA_OPTIONS[args.flip_tta], forms=SELECTION_FORMS if args.forms else ("as_is",))
    tuned.save(args.model)
    chosen = {k: getattr(tuned, k) for k in ("threshold", "min_component_px", "flip_tta")}
    print(json.dumps({"chosen": chosen, "validation": report}))
    return 0


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), tune, argv)


if __name__ == "__main__":
    raise SystemExit(main())
