"""Reproduce the article's comparisons (normalization, flip augmentation, depth) at a reduced budget.

Each variant is trained with the same budget, its best epoch picked on validation, then evaluated
on the held-out test patients. Results go to OUT_DIR/<study>.md and .json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from brainseg import Segmenter
from brainseg.data import load_slices, patient_split, scan_dataset
from brainseg.evaluation import evaluate_arrays
from brainseg.training import TrainConfig, train

STUDIES: dict[str, list[tuple[str, dict]]] = {
    "normalization": [("Normalize(mean, 2·std) on", {"normalize": True}), ("off (raw [0, 1])", {"normalize": False})],
    "flip": [
        ("no flip", {"flip": "none"}),
        ("offline flip doubling (article)", {"flip": "offline"}),
        ("random on-the-fly flips", {"flip": "random"}),
    ],
    "depth": [(f"depth {d}", {"depth": d}) for d in (2, 3, 4)],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.ablate", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--study", choices=sorted(STUDIES), required=True)
    parser.add_argument("--data-dir", required=True, help="the full dataset (kaggle_3m layout)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--empty-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=2026)
    return parser


def run_study(args: argparse.Namespace) -> list[dict]:
    split = patient_split(scan_dataset(args.data_dir), seed=args.seed)
    test_images, test_masks = load_slices(list(split.test))
    test_patients = [r.patient for r in split.test]
    rows = []
    for label, overrides in STUDIES[args.study]:
        name = "-".join(f"{k}={v}" for k, v in overrides.items())
        cfg = TrainConfig(
            data_dir=args.data_dir, out_dir=str(Path(args.out_dir) / args.study / name),
            base_channels=args.base_channels, epochs=args.epochs, empty_fraction=args.empty_fraction,
            tune_postprocessing=False, seed=args.seed, split_seed=args.seed, **overrides,
        )
        started = time.time()
        best = train(cfg)
        minutes = (time.time() - started) / 60
        report = evaluate_arrays(Segmenter.from_pretrained(best), test_images, test_masks, test_patients)
        rows.append({"variant": label, "minutes": round(minutes, 1), **overrides,
                     **{k: v for k, v in report.to_dict().items() if k != "per_patient_dice"}})
    return rows


def markdown(study: str, args: argparse.Namespace, rows: list[dict]) -> str:
    budget = (f"width {args.base_channels}, {args.epochs} epochs, {args.empty_fraction:.0%} of tumor-free slices "
              "per epoch, bf16 CPU; best epoch on validation; scored on the 11 held-out patients at threshold 0.5")
    lines = [f"**{study}** ({budget})", "", "| variant | slice Dice | slice IoU | tumor-slice Dice | empty FP rate | "
             "volume Dice | train min |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['slice_dice']:.3f} | {r['slice_iou']:.3f} | {r['tumor_slice_dice']:.3f} | "
                     f"{r['empty_fp_rate']:.3f} | {r['volume_dice']:.3f} | {r['minutes']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = run_study(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(args.study, args, rows)
    (out / f"{args.study}.md").write_text(table)
    (out / f"{args.study}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
