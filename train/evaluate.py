"""Evaluate a model on Kaggle-layout patient folders: JSON + Markdown metrics, figures, ms/slice."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from brainseg import Segmenter
from brainseg.data import load_slices, patient_split, require_masks, scan_dataset
from brainseg.evaluation import count_slices, timed_probabilities
from brainseg.figures import example_grid, patient_dice_plot
from brainseg.inference import describe_device
from brainseg.metrics import summarize

METRIC_ROWS = [
    ("slice_dice", "Dice per slice (empty/empty = 1)"),
    ("slice_iou", "IoU per slice (empty/empty = 1)"),
    ("tumor_slice_dice", "Dice over tumor-bearing slices"),
    ("tumor_slice_iou", "IoU over tumor-bearing slices"),
    ("empty_fp_rate", "false-positive rate on tumor-free slices"),
    ("volume_dice", "volume Dice (mean over patients)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Evaluate a brainseg model on every patient folder under --data-dir (Kaggle layout).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", required=True, help="folder with TCGA_* patient folders (or its parent)")
    parser.add_argument("--model", default=None, help="model folder or Hub repo id[@revision]; default: bundled")
    parser.add_argument("--split", choices=["all", "test", "val", "train"], default="all",
                        help="'all' = every patient under --data-dir; test/val/train = that part of the "
                        "patient split (test = the 11 held-out patients)")
    parser.add_argument("--json", dest="json_path", default=None, help="write metrics JSON here")
    parser.add_argument("--markdown", default=None, help="write a Markdown table here")
    parser.add_argument("--figures", default=None, help="folder for examples.png and patient_dice.png")
    parser.add_argument("--threshold", type=float, default=None, help="override the model's threshold")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="override the preprocessing the model was trained with")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast inference")
    return parser


def markdown_table(result: dict) -> str:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {label} | {result[key]:.4f} |" for key, label in METRIC_ROWS]
    lines.append(f"| slices / tumor slices / patients | {result['n_slices']} / {result['n_tumor_slices']} / "
                 f"{result['n_patients']} |")
    lines.append(f"| inference ms per slice ({result['hardware']}) | {result['ms_per_slice']:.1f} |")
    return "\n".join(lines) + "\n"


def pick_examples(masks: np.ndarray, count: int = 8) -> list[int]:
    """Largest-tumor slices first, then a few tumor-free ones."""
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    tumor = [int(i) for i in np.argsort(-areas) if areas[i] > 0]
    empty = [int(i) for i in np.flatnonzero(areas == 0)]
    picked = tumor[: count * 3 // 4]
    picked += empty[:: max(1, len(empty) // max(1, count - len(picked)))][: count - len(picked)]
    return picked


def evaluate(args: argparse.Namespace) -> dict:
    segmenter = Segmenter.from_pretrained(args.model, bf16=args.bf16)
    if args.threshold is not None:
        segmenter.config = dataclasses.replace(segmenter.config, threshold=args.threshold)
    if args.normalize is not None:
        segmenter.config = dataclasses.replace(segmenter.config, normalize=args.normalize)
    patients = require_masks(scan_dataset(args.data_dir), args.data_dir)
    if args.split == "all":
        records = [r for p in patients for r in p.slices]
    else:
        records = list(getattr(patient_split(patients), args.split))
    if not records:
        raise ValueError(f"no slices for split {args.split!r} under {args.data_dir}")
    images, masks = load_slices(records)
    probas, ms_per_slice = timed_probabilities(segmenter, images)
    cfg = segmenter.config
    counts = count_slices(probas, masks, [r.patient for r in records], cfg.threshold, cfg.min_component_px)
    report = summarize(counts)
    result = report.to_dict()
    result.update(
        ms_per_slice=ms_per_slice,
        hardware=f"{describe_device(segmenter.device)}, bf16={args.bf16}",
        model=str(segmenter.source),
        model_config=cfg.to_dict(),
        data_dir=str(args.data_dir),
        split=args.split,
    )
    if args.figures:
        folder = Path(args.figures)
        folder.mkdir(parents=True, exist_ok=True)
        chosen = pick_examples(masks)
        preds = [segmenter.to_mask(probas[i]) for i in chosen]
        titles = [f"{records[i].patient[5:12]} #{records[i].index} Dice {counts[i].dice:.2f}" for i in chosen]
        example_grid(images[chosen], masks[chosen], np.stack(preds), titles, folder / "examples.png")
        patient_dice_plot(report.per_patient_dice, folder / "patient_dice.png")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(result)
    print(table)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
