"""Evaluate a model on Kaggle-layout patient folders (JSON + Markdown metrics, figures, ms/slice) and/or on
external NIfTI subjects with labels (``--external``: 3D whole-tumor Dice per subject, all channels vs FLAIR only)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from brainseg import Segmenter
from brainseg.cli.common import USER_ERRORS, run
from brainseg.evaluation.external import DEFAULT_TRUTH_GLOBS, evaluate_external, external_markdown_table
from brainseg.evaluation.forms import REPORT_FORMS
from brainseg.evaluation.scoring import EVAL_SPLITS, evaluate_model, forms_markdown_table, markdown_table
from brainseg.inference.backends import BACKENDS, BackendError
from brainseg.inference.intensity import DEFAULT_RULE, RULES
from brainseg.io.dataset import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainseg evaluate",
        description="Evaluate a brainseg model on every patient folder under --data-dir (Kaggle layout) and/or on "
        "the labelled NIfTI subject folders under --external (whole scans, 3D whole-tumor Dice).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", default=None, help="folder with TCGA_* patient folders (or its parent)")
    parser.add_argument("--external", default=None, metavar="DIR",
                        help="folder of NIfTI subject folders (FLAIR, optional T1/T1c, one label file; labels > 0 = "
                        "whole tumor): each runs through the volume pipeline with all its channels and FLAIR only; "
                        "the result goes into --json under 'external'")
    parser.add_argument("--external-truth-glob", default=None, metavar="GLOB",
                        help="the label file in each --external subject folder (default: the first of "
                        f"{', '.join(DEFAULT_TRUTH_GLOBS)} that matches one file in every folder)")
    parser.add_argument("--intensity", choices=RULES, default=DEFAULT_RULE,
                        help="the intensity rule of the volume pipeline for --external (brainseg.inference.intensity)")
    parser.add_argument("--forms", action="store_true",
                        help="also score --data-dir's slices in every input form (skull-stripped, FLAIR only, "
                        "FLAIR + T1c, half frame, ...; brainseg.evaluation.forms); into --json under 'forms'")
    parser.add_argument("--model", default=None, help="model folder or Hub repo id[@revision]; default: bundled")
    parser.add_argument("--split", choices=EVAL_SPLITS, default="all",
                        help="'all' = every patient under --data-dir; test/val/train = that part of the "
                        "patient split (test = the 11 held-out patients)")
    parser.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED,
                        help="the training run's --split-seed (which patients are validation; --split val/train)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="the training run's --val-fraction (--split val/train)")
    parser.add_argument("--json", dest="json_path", default=None, help="write metrics JSON here")
    parser.add_argument("--markdown", default=None, help="write a Markdown table here")
    parser.add_argument("--figures", default=None, help="folder for examples.png and patient_dice.png")
    parser.add_argument("--threshold", type=float, default=None, help="override the model's threshold")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="override the preprocessing the model was trained with")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast inference")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="what runs the network: onnx = ONNX Runtime (CPU, fp32), torch = PyTorch, auto = ONNX "
                        "Runtime on the CPU when installed and equal to PyTorch within 1e-4, else PyTorch")
    return parser


def load_segmenter(args: argparse.Namespace) -> Segmenter:
    """The model to evaluate, with the overrides given on the command line."""
    segmenter = Segmenter.from_pretrained(args.model, bf16=args.bf16, backend=args.backend)
    if args.threshold is not None:
        segmenter.config = dataclasses.replace(segmenter.config, threshold=args.threshold)
    if args.normalize is not None:
        segmenter.config = dataclasses.replace(segmenter.config, normalize=args.normalize)
    return segmenter


def evaluate_and_write(args: argparse.Namespace) -> int:
    segmenter = load_segmenter(args)
    result, table = {}, ""
    if args.data_dir is not None:
        result = evaluate_model(segmenter, args.data_dir, args.split, split_seed=args.split_seed,
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir is None and args.external is None:
        parser.error("give --data-dir (Kaggle patient folders), --external (NIfTI subject folders) or both")
    if args.data_dir is None and args.forms:
        parser.error("--forms scores --data-dir's slices: give --data-dir too")
    if args.data_dir is None and args.figures is not None:
        parser.error("--figures draws --data-dir's slices: give --data-dir too")
    return run(lambda: evaluate_and_write(args), errors=(*USER_ERRORS, BackendError))


if __name__ == "__main__":
    raise SystemExit(main())
