"""What every ``train.*`` command shares: a mistake the user can fix ends in one ``error:`` line, exit status 2;
and the arguments that name a training run's validation patients."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from brainseg.io.dataset import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION

# A missing folder, a bad value, no masks, ...: the message says what to do, a traceback would only hide it.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)
MAX_MESSAGE_CHARS = 400


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (at most ``MAX_MESSAGE_CHARS``), or its type when it has none."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def run(command: Callable[[], int], errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """``command()``'s exit status; one of ``errors`` is printed as ``error: <message>`` on stderr and gives 2.

    Any other exception is a bug and keeps its traceback.
    """
    try:
        return command()
    except errors as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


def add_validation_patient_arguments(parser: argparse.ArgumentParser, *seed_aliases: str,
                                     required: bool = True) -> None:
    """``--data-dir`` (the full dataset), ``--split-seed`` (also spelled ``seed_aliases``) and ``--val-fraction``:
    which patients the training run held out for validation (``args.data_dir``, ``split_seed``, ``val_fraction``);
    ``required=False`` for a command that needs them only for an optional validation pass."""
    parser.add_argument("--data-dir", required=required,
                        help="the full dataset (kaggle_3m layout): validation patients")
    parser.add_argument("--split-seed", *seed_aliases, dest="split_seed", type=int, default=DEFAULT_SPLIT_SEED,
                        help="the training run's --split-seed (which patients are validation)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="the training run's --val-fraction (validation share)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` (``args.device``): where the models run, ``auto`` by default (cuda, then mps, then cpu)."""
    parser.add_argument("--device", default="auto", help="where the models run: auto (cuda, then mps, then cpu), "
                        "cpu, cuda or mps")
