"""Evaluate a model on Kaggle-layout patient folders: JSON + Markdown metrics, figures, ms/slice."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from brainseg import Segmenter
from brainseg.backends import BACKENDS, BackendError
from brainseg.data import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION
from brainseg.evaluation import EVAL_SPLITS, evaluate_model, markdown_table
from train.cli import USER_ERRORS, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Evaluate a brainseg model on every patient folder under --data-dir (Kaggle layout).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", required=True, help="folder with TCGA_* patient folders (or its parent)")
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
    result = evaluate_model(segmenter, args.data_dir, args.split, split_seed=args.split_seed,
                            val_fraction=args.val_fraction, figures_dir=args.figures)
    result.update(backend=segmenter.backend, backend_reason=segmenter.backend_reason)
    table = markdown_table(result)
    print(table)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: evaluate_and_write(args), errors=(*USER_ERRORS, BackendError))


if __name__ == "__main__":
    raise SystemExit(main())
