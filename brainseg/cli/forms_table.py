"""Validation numbers of training runs in every input form, side by side, from their ``log.csv`` (best epoch).

For runs trained with ``--select-on forms``: one row per run (the epoch with the best forms score), one column
per input form of :data:`brainseg.evaluation.forms.SELECTION_FORMS` (volume Dice, or slice Dice with ``--metric``), and
the forms score that picked the epoch. Nothing here looks at the held-out or external patients.

    brainseg forms-table runs/ablate-* [--metric slice_dice] [--markdown table.md]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from brainseg.cli.common import parse_and_run
from brainseg.evaluation.forms import SELECTION_FORMS
from brainseg.fileio import atomic_write_text
from brainseg.training.checkpoints import LOG_FILE

METRICS = ("volume_dice", "slice_dice")


def best_row(run_dir: Path) -> dict:
    """The ``log.csv`` row of ``run_dir`` with the highest ``val_forms_score``."""
    path = run_dir / LOG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: is {run_dir} a training run folder?")
    with open(path, newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row.get("val_forms_score")]
    if not rows:
        raise ValueError(f"{path} has no forms columns: train with --select-on forms")
    return max(rows, key=lambda row: float(row["val_forms_score"]))


def markdown(run_dirs: list[Path], metric: str) -> str:
    """The table: run, best epoch, each form's ``metric``, their mean, the forms score."""
    header = ["run", "epoch", *SELECTION_FORMS, "mean", "forms score"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run_dir in run_dirs:
        row = best_row(run_dir)
        values = [float(row[f"val_{form}_{metric}"]) for form in SELECTION_FORMS]
        cells = [run_dir.name, row["epoch"], *(f"{v:.3f}" for v in values), f"{sum(values) / len(values):.3f}",
                 f"{float(row['val_forms_score']):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainseg forms-table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders (each with log.csv)")
    parser.add_argument("--metric", choices=METRICS, default="volume_dice")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    return parser


def report(args: argparse.Namespace) -> int:
    table = markdown(args.runs, args.metric)
    print(table, end="")
    if args.markdown:
        atomic_write_text(args.markdown, table)
    return 0


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
