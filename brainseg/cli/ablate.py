"""Reproduce the article's comparisons (normalization, flip augmentation, depth) at a reduced budget.

Each variant is trained with the same budget, its best epoch picked on validation, then evaluated
on the held-out test patients. Results go to OUT_DIR/<study>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from brainseg import Segmenter
from brainseg.cli.common import add_device_argument, add_seed_arguments, parse_and_run
from brainseg.evaluation.metrics import METRICS_BY_KEY
from brainseg.evaluation.scoring import evaluate_arrays
from brainseg.io.dataset import DEFAULT_SPLIT_SEED, load_slices, make_split
from brainseg.training.config import TrainConfig
from brainseg.training.loop import train

STUDIES: dict[str, list[tuple[str, dict]]] = {
    "normalization": [("Normalize(mean, 2·std) on", {"normalize": True}), ("off (raw [0, 1])", {"normalize": False})],
    "flip": [
        ("no flip", {"flip": "none"}),
        ("offline flip doubling (article)", {"flip": "offline"}),
        ("random on-the-fly flips", {"flip": "random"}),
    ],
    "depth": [(f"depth {d}", {"depth": d}) for d in (2, 3, 4)],
}


TABLE_METRICS = ("slice_dice", "slice_iou", "tumor_slice_dice", "empty_fp_rate", "volume_dice")


@dataclass(frozen=True)
class Budget:
    """What every variant of a study shares."""

    base_channels: int = 8
    epochs: int = 4
    empty_fraction: float = 0.3
    seed: int = 2026  # initialisation, sampling order, augmentation
    split_seed: int = DEFAULT_SPLIT_SEED  # the validation patients
    device: str = "auto"
    precision: str = "bf16"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainseg ablate", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--study", choices=sorted(STUDIES), required=True)
    parser.add_argument("--data-dir", required=True, help="the full dataset (kaggle_3m layout)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--base-channels", type=int, default=Budget.base_channels)
    parser.add_argument("--epochs", type=int, default=Budget.epochs)
    parser.add_argument("--empty-fraction", type=float, default=Budget.empty_fraction)
    add_seed_arguments(parser, Budget.seed, Budget.split_seed)
    add_device_argument(parser, precision=Budget.precision)
    return parser


def run_study(study: str, data_dir: str, out_dir: str | Path, budget: Budget) -> list[dict]:
    """Train every variant of ``study`` into ``out_dir/<study>/<variant>``; one row of held-out metrics each."""
    split = make_split(data_dir, seed=budget.split_seed)
    test_images, test_masks = load_slices(list(split.test))
    test_patients = [r.patient for r in split.test]
    rows = []
    for label, overrides in STUDIES[study]:
        name = "-".join(f"{k}={v}" for k, v in overrides.items())
        cfg = TrainConfig(
            data_dir=data_dir, out_dir=str(Path(out_dir) / study / name),
            base_channels=budget.base_channels, epochs=budget.epochs, empty_fraction=budget.empty_fraction,
            tune_postprocessing=False, seed=budget.seed, split_seed=budget.split_seed, device=budget.device,
            precision=budget.precision, **overrides,
        )
        started = time.time()
        best = train(cfg)
        minutes = (time.time() - started) / 60
        segmenter = Segmenter.from_pretrained(best, device=budget.device)
        report = evaluate_arrays(segmenter, test_images, test_masks, test_patients)
        rows.append({"variant": label, "minutes": round(minutes, 1), **overrides,
                     **{k: v for k, v in report.to_dict().items() if k != "per_patient_dice"}})
    return rows


def markdown(study: str, budget: Budget, rows: list[dict]) -> str:
    """The study's rows as a Markdown table under a line that states the budget."""
    description = (f"width {budget.base_channels}, {budget.epochs} epochs, {budget.empty_fraction:.0%} of tumor-free "
                   f"slices per epoch, {budget.precision}; best epoch on validation; scored on the 11 held-out "
                   "patients at threshold 0.5")
    headers = [METRICS_BY_KEY[key].short for key in TABLE_METRICS]
    lines = [f"**{study}** ({description})", "", "| variant | " + " | ".join(headers) + " | train min |",
             "|---" * (len(headers) + 2) + "|"]
    for r in rows:
        cells = [f"{r[key]:.3f}" for key in TABLE_METRICS]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {r['minutes']} |")
    return "\n".join(lines) + "\n"


def ablate(args: argparse.Namespace) -> int:
    budget = Budget(args.base_channels, args.epochs, args.empty_fraction, args.seed, args.split_seed, args.device,
                    args.precision)
    rows = run_study(args.study, args.data_dir, args.out_dir, budget)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(args.study, budget, rows)
    (out / f"{args.study}.md").write_text(table)
    (out / f"{args.study}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), ablate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
