"""The ``brainseg`` command: one subcommand per stage (``brainseg predict | train | evaluate | ...``).

Each subcommand is a module of this package (or of the stage that owns it) with a ``main(argv)``; the module is
imported only when its subcommand runs, so ``brainseg --help`` stays instant. ``python -m brainseg ...`` is the same
command.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Subcommand:
    """One ``brainseg`` subcommand: the module whose ``main(argv)`` runs it, and one line of help."""

    module: str
    summary: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "app": Subcommand("brainseg.app.launch", "start the web demo (slice and Volume tabs)"),
    "predict": Subcommand("brainseg.cli.predict", "segment whole scans: NIfTI, DICOM, patient folders, cohorts"),
    "calibrate": Subcommand("brainseg.cli.calibrate", "adapt a model to a new site from a few labelled scans"),
    "train": Subcommand("brainseg.cli.train", "train a model on the LGG training patients"),
    "tune": Subcommand("brainseg.cli.tune", "choose a model's threshold and minimum component on validation"),
    "choose": Subcommand("brainseg.cli.choose", "compare models on the validation patients in every input form"),
    "evaluate": Subcommand("brainseg.cli.evaluate", "score a model on held-out patients and external scans"),
    "ablate": Subcommand("brainseg.cli.ablate", "reproduce the article's comparisons at a reduced budget"),
    "interpolate": Subcommand("brainseg.cli.interpolate", "interpolate two networks' weights (WiSE-FT)"),
    "forms-table": Subcommand("brainseg.cli.forms_table", "validation numbers of training runs, side by side"),
    "intensity": Subcommand("brainseg.cli.intensity", "fit the intensity landmarks from the training patients"),
    "publish": Subcommand("brainseg.cli.publish", "evaluate, write the model card and push a model to the Hub"),
    "space": Subcommand("brainseg.cli.space", "write a push-ready Hugging Face Space repository"),
    "models": Subcommand("brainseg.cli.models", "list the known models: name, where it lives, what it is for"),
}


def usage() -> str:
    """The top-level help: every subcommand with its line."""
    width = max(map(len, SUBCOMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {sub.summary}" for name, sub in SUBCOMMANDS.items())
    return (f"usage: brainseg SUBCOMMAND [options]\n\nsubcommands:\n{rows}\n\n"
            "`brainseg SUBCOMMAND --help` lists a subcommand's options.")


def main(argv: list[str] | None = None) -> int:
    """Run ``brainseg SUBCOMMAND ...``; exit status 2 with the list of subcommands when the name is unknown."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name].module)
    status = module.main(rest)
    return int(status or 0)
