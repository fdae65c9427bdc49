"""Evaluate a model on Kaggle-layout patient folders (JSON + Markdown metrics, figures, ms/slice) and/or on
external NIfTI subjects with labels (``--external``: 3D whole-tumor Dice per subject, all channels vs FLAIR only).

The patients: every one under ``--test-dir`` (held-out folders, e.g. lgg-test), or one part of the full dataset
under ``--data-dir`` (``--split test|val|train`` of the ``--split-seed`` / ``--val-fraction`` split)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from brainseg import Segmenter
from brainseg.cli.common import (
    USER_ERRORS,
    add_device_argument,
    add_split_arguments,
    add_test_dir_argument,
    parse_and_run,
)
from brainseg.evaluation.external import DEFAULT_TRUTH_GLOBS, evaluate_external, external_markdown_table
from brainseg.evaluation.forms import REPORT_FORMS
from brainseg.evaluation.scoring import evaluate_model, forms_markdown_table, markdown_table
from brainseg.inference.backends import BACKENDS, BackendError
from brainseg.inference.intensity import DEFAULT_RULE, RULES

DATA_DIR_SPLITS = ("test", "val", "train")  # --data-dir's parts; --test-dir scores every patient it holds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainseg evaluate",
        description="Evaluate a brainseg model on the held-out patient folders under --test-dir (or one part of the "
        "full dataset under --data-dir) and/or on the labelled NIfTI subject folders under --external (whole scans, "
        "3D whole-tumor Dice).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    patients = parser.add_mutually_exclusive_group()
    add_test_dir_argument(patients)
    patients.add_argument("--data-dir", help="the full dataset (kaggle_3m layout): --split says which part is scored")
    parser.add_argument("--external", default=None, metavar="DIR",
                        help="folder of NIfTI subject folders (FLAIR, optional T1/T1c, one label file; labels > 0 = "
                        "whole tumor): each runs through the volume pipeline with all its channels and FLAIR only; "
                        "the result goes into --json under 'external'")
    parser.add_argument("--external-truth-glob", default=None, metavar="GLOB",
                        help="the label file in each --external subject folder (default: the first of "
                        f"{', '.join(DEFAULT_TRUTH_GLOBS)} that matches one file in every folder)")
    parser.add_argument("--intensity", choices=RULES, default=None,
                        help="the intensity rule of the volume pipeline for --external (brainseg.inference.intensity;"
                        f" default: the rule a calibrated model was calibrated under, else {DEFAULT_RULE})")
    parser.add_argument("--forms", action="store_true",
                        help="also score the patients' slices in every input form (skull-stripped, FLAIR only, "
                        "FLAIR + T1c, half frame, ...; brainseg.evaluation.forms); into --json under 'forms'")
    parser.add_argument("--model", default=None, help="model folder or Hub repo id[@revision]; default: bundled")
    parser.add_argument("--split", choices=DATA_DIR_SPLITS, default="test",
                        help="with --data-dir: that part of the patient split (test = the 11 held-out patients)")
    add_split_arguments(parser)
    parser.add_argument("--json", dest="json_path", default=None, help="write metrics JSON here")
    parser.add_argument("--markdown", default=None, help="write a Markdown table here")
    parser.add_argument("--figures", default=None, help="folder for examples.png and patient_dice.png")
    parser.add_argument("--threshold", type=float, default=None, help="override the model's threshold")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="override the preprocessing the model was trained with")
    add_device_argument(parser, precision="fp32")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="what runs the network: onnx = ONNX Runtime (CPU, fp32), torch = PyTorch, auto = ONNX "
                        "Runtime on the CPU when installed and equal to PyTorch within 1e-4, else PyTorch")
    return parser


def load_segmenter(args: argparse.Namespace) -> Segmenter:
    """The model to evaluate, with the overrides given on the command line."""
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, bf16=args.precision == "bf16",
                                          backend=args.backend)
    if args.threshold is not None:
        segmenter.config = dataclasses.replace(segmenter.config, threshold=args.threshold)
    if args.normalize is not None:
        segmenter.config = dataclasses.replace(segmenter.config, normalize=args.normalize)
    return segmenter


def evaluate_and_write(args: argparse.Namespace) -> int:
    segmenter = load_segmenter(args)
    result, table = {}, ""
    patients_dir, split = (args.test_dir, "all") if args.test_dir is not None else (args.data_dir, args.split)
    if patients_dir is not None:
        result = evaluate_model(segmenter, patients_dir, split, split_seed=args.split_seed,
                                val_fraction=args.val_fraction, figures_dir=args.figures,
                                forms=REPORT_FORMS if args.forms else ())
        table = markdown_table(result)
        if args.forms:
            table += "\n" + forms_markdown_table(result)
    if args.external is not None:
        result["external"] = evaluate_external(segmenter, args.external, args.external_truth_glob,
                                               on_subject=_print_subject, intensity=args.intensity)
        table += ("\n" if table else "") + external_markdown_table(result["external"])
    result.update(backend=segmenter.backend, backend_reason=segmenter.backend_reason)
    print(table)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


def _print_subject(row: dict) -> None:
    dice = ", ".join(f"{form} {value:.3f}" for form, value in row["dice"].items())
    print(f"{row['name']}: Dice {dice} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)


def check_args(args: argparse.Namespace) -> None:
    """Refuse combinations that score nothing or draw from patients not given."""
    if args.test_dir is None and args.data_dir is None:
        if args.external is None:
            raise ValueError("give --test-dir (held-out patient folders), --data-dir (the full dataset), --external "
                             "(NIfTI subject folders), or patients and --external")
        for flag, given in (("--forms", args.forms), ("--figures", args.figures is not None)):
            if given:
                raise ValueError(f"{flag} uses the patients' slices: give --test-dir or --data-dir too")


def evaluate_command(args: argparse.Namespace) -> int:
    check_args(args)
    return evaluate_and_write(args)


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), evaluate_command, argv, (*USER_ERRORS, BackendError))


if __name__ == "__main__":
    raise SystemExit(main())
