"""``brainseg intensity fit --data-dir DATA``: learn the intensity landmarks of the LGG training patients' slices
(bundled as ``brainseg/inference/intensity_landmarks.json``)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from brainseg.cli.common import add_split_arguments, parse_and_run
from brainseg.inference import intensity
from brainseg.inference.intensity import LANDMARKS_FILE, fit_landmarks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainseg intensity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    fit = sub.add_parser("fit", help="learn the target landmarks from the LGG training patients' slices")
    fit.add_argument("--data-dir", required=True, type=Path, help="the full dataset (kaggle_3m, all 110 patients)")
    add_split_arguments(fit)
    fit.add_argument("--out-dir", type=Path, default=Path(intensity.__file__).parent,
                     help=f"folder for {LANDMARKS_FILE} (default: the package's, which the volume pipeline reads)")
    return parser


def fit(args: argparse.Namespace, command: str) -> int:
    if not args.data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {args.data_dir}: no such folder (give kaggle_3m)")
    landmarks = fit_landmarks(args.data_dir, args.val_fraction, args.split_seed, command)
    print(f"{landmarks.patients} training patients -> {landmarks.save(args.out_dir / LANDMARKS_FILE)}")
    print(json.dumps(landmarks.to_dict()["channels"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "brainseg intensity " + shlex.join(argv)
    return parse_and_run(build_parser(), lambda args: fit(args, command), argv)


if __name__ == "__main__":
    raise SystemExit(main())
