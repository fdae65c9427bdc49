"""``brainseg intensity fit --data-dir DATA``: learn the intensity landmarks of the LGG training patients' slices
(bundled as ``brainseg/inference/intensity_landmarks.json``)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from brainseg.inference import intensity
from brainseg.inference.intensity import LANDMARKS_FILE, fit_landmarks


def main(argv: list[str] | None = None) -> int:
    from brainseg.io.dataset import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION

    parser = argparse.ArgumentParser(prog="brainseg intensity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    fit = sub.add_parser("fit", help="learn the target landmarks from the LGG training patients' slices")
    fit.add_argument("--data-dir", required=True, type=Path, help="kaggle_3m (all 110 patients)")
    fit.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED)
    fit.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    fit.add_argument("--out", type=Path, default=Path(intensity.__file__).with_name(LANDMARKS_FILE))
    args = parser.parse_args(argv)
    command = "brainseg intensity " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]) if a)
    if not args.data_dir.is_dir():
        print(f"error: --data-dir {args.data_dir}: no such folder (give kaggle_3m)", file=sys.stderr)
        return 2
    landmarks = fit_landmarks(args.data_dir, args.val_fraction, args.split_seed, command)
    print(f"{landmarks.patients} training patients -> {landmarks.save(args.out)}")
    print(json.dumps(landmarks.to_dict()["channels"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
