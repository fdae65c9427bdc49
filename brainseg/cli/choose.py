"""Choose among trained models, and means of their probabilities, on the validation patients in every input form.

    brainseg choose --data-dir DATA --candidate unet --candidate unet-generalist \\
        --candidate unet+segformer-b0 [--markdown table.md] [--json choice.json]

Each ``--candidate`` is one model (bundled name, folder or ORG/NAME[@REV]) or several joined by ``+`` (the mean of
their probabilities, each with its own flip TTA: a measure of what an ensemble would add). Every model runs
once per input form of the validation patients (the split of ``--split-seed`` / ``--val-fraction``); each
candidate gets its own threshold and minimum component size, searched on the forms score (the mean over the
forms of (slice Dice + volume Dice) / 2), and the table ranks them. Held-out patients are never read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from brainseg.cli.common import USER_ERRORS, add_device_argument, add_validation_patient_arguments, parse_and_run
from brainseg.evaluation.selection import candidates_markdown_table, compare_candidates, parse_candidate
from brainseg.fileio import atomic_write_text
from brainseg.inference.backends import BACKENDS, BackendError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainseg choose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", action="append", required=True,
                        help="a model, or models joined by '+' (mean of their probabilities); repeat")
    add_validation_patient_arguments(parser)
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="what runs each model")
    add_device_argument(parser)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--json", type=Path, help="write every candidate's numbers here")
    return parser


def choose(args: argparse.Namespace) -> int:
    candidates = [parse_candidate(text) for text in args.candidate]
    results = compare_candidates(candidates, args.data_dir, split_seed=args.split_seed,
                                 val_fraction=args.val_fraction, backend=args.backend,
                                 device=args.device)
    table = candidates_markdown_table(results)
    print(table, end="")
    if args.markdown:
        atomic_write_text(args.markdown, table)
    if args.json:
        atomic_write_text(args.json, json.dumps({
            "split_seed": args.split_seed, "val_fraction": args.val_fraction,
            "candidates": [r.to_dict() for r in results]}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), choose, argv, (*USER_ERRORS, BackendError))


if __name__ == "__main__":
    raise SystemExit(main())
