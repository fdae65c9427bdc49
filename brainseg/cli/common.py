"""What every ``brainseg`` subcommand shares: parse, run, and a mistake the user can fix ends in one ``error:`` line,
exit status 2 (:func:`parse_and_run`); and the flags spelled the same everywhere (docs/cli.md): ``--data-dir`` /
``--split-seed`` / ``--val-fraction`` (the full dataset and its validation patients), ``--test-dir`` (held-out
patient folders), ``--device`` and ``--precision`` (where and how a model runs)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from brainseg.config import PRECISIONS
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


def parse_and_run(parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int],
                  argv: Sequence[str] | None = None, errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """A subcommand's ``main``: parse ``argv`` with ``parser``, then :func:`run` ``command(args)``."""
    args = parser.parse_args(argv)
    return run(lambda: command(args), errors)


def add_validation_patient_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--data-dir`` (the full dataset), ``--split-seed`` and ``--val-fraction``: which patients the training run
    held out for validation (``args.data_dir``, ``split_seed``, ``val_fraction``); ``required=False`` for a command
    that needs them only for an optional validation pass."""
    parser.add_argument("--data-dir", required=required,
                        help="the full dataset (kaggle_3m layout): validation patients")
    add_split_arguments(parser)


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--split-seed`` and ``--val-fraction``: the training run's patient split (which patients are validation)."""
    parser.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED,
                        help="the training run's --split-seed (which patients are validation)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="the training run's --val-fraction (validation share)")


def add_device_argument(parser: argparse.ArgumentParser, precision: str | None = None) -> None:
    """``--device`` (``args.device``): where the models run, ``auto`` by default (cuda, then mps, then cpu); with a
    ``precision`` (its default) also ``--precision`` (``args.precision``, :data:`PRECISIONS`): fp32, or bf16
    autocast."""
    parser.add_argument("--device", default="auto", help="where the models run: auto (cuda, then mps, then cpu), "
                        "cpu, cuda or mps")
    if precision is not None:
        parser.add_argument("--precision", choices=PRECISIONS, default=precision,
                            help="fp32, or bf16 autocast (PyTorch backend only; faster on recent CPUs and GPUs)")


def add_test_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--test-dir`` (``args.test_dir``): a folder of held-out patient folders (Kaggle layout, e.g. lgg-test),
    every one of which is scored."""
    parser.add_argument("--test-dir", help="folder of held-out patient folders (Kaggle layout, e.g. "
                        "../shared/data/lgg-test): every patient in it is scored")


def add_seed_arguments(parser: argparse.ArgumentParser, seed: int, split_seed: int = DEFAULT_SPLIT_SEED) -> None:
    """``--seed`` (weight init, sampling order, augmentation) and ``--split-seed`` (which patients are validation),
    two numbers so a run can change one and keep the other."""
    parser.add_argument("--seed", type=int, default=seed, help="weight init, sampling order and augmentation")
    parser.add_argument("--split-seed", type=int, default=split_seed, help="which patients are validation")
