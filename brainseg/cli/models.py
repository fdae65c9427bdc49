"""``brainseg models``: every known model (:mod:`brainseg.registry`) with where it lives, its architecture, what it
is for and its headline numbers; the default is marked."""
from __future__ import annotations

import argparse

from brainseg.cli.common import parse_and_run
from brainseg.io.hub import bundled_models
from brainseg.registry import DEFAULT_MODEL_NAME, MODELS, ModelEntry

HEADER = ("name", "where", "architecture", "held-out slice Dice", "held-out volume Dice", "BRATS 3D Dice",
          "what it is for")


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="brainseg models", description=__doc__)


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def row(entry: ModelEntry) -> list[str]:
    """One table row; a bundled model's numbers come from its folder's metrics.json."""
    headline = entry.headline(bundled_models().get(entry.name))
    name = entry.name + (" (default)" if entry.name == DEFAULT_MODEL_NAME else "")
    return [name, entry.location, entry.architecture, number(headline.slice_dice), number(headline.volume_dice),
            number(headline.brats_dice), entry.purpose]


def models_table() -> str:
    """The Markdown table of every known model."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row(entry)) + " |" for entry in MODELS]
    return "\n".join(lines) + "\n"


def list_models(args: argparse.Namespace) -> int:
    print(models_table(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), list_models, argv)


if __name__ == "__main__":
    raise SystemExit(main())
