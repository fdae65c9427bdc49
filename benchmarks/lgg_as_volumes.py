"""Write Kaggle LGG patient folders as NIfTI subjects, to measure the whole-volume pipeline on them.

    python -m benchmarks.lgg_as_volumes --data-dir ../shared/data/lgg-test --out /tmp/lgg-nifti
    brainseg predict /tmp/lgg-nifti --truth-glob 'truth*' --out-dir /tmp/lgg-masks --json lgg.json

Each patient becomes ``OUT/<patient>/{flair,t1,t1ce,truth}.nii.gz``: the slices' three channels
(pre-contrast T1, FLAIR, post-contrast T1) and the mask as 256 x 256 x N volumes on an RAS grid of
0.9 x 0.9 x 2.5 mm (the slices carry no spacing; the pipeline's framing is in mm, so only the in-plane
aspect matters). ``brainseg predict`` then reorients, frames, windows and segments them like any scan.
Write OUT outside the repository: these are dataset files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from brainseg.io.dataset import load_slices, scan_dataset

AFFINE = np.diag([0.9, 0.9, 2.5, 1.0])
CHANNELS = {"t1": 0, "flair": 1, "t1ce": 2}


def ras_from_presented(stack: np.ndarray) -> np.ndarray:
    """(N, R, C) slices (anterior up, patient's right on the left) -> the (X, Y, Z) voxels of an RAS+ grid."""
    return np.ascontiguousarray(np.swapaxes(stack[:, ::-1, ::-1], 0, 2))


def write_patient(images: np.ndarray, masks: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, channel in CHANNELS.items():
        nib.save(nib.Nifti1Image(ras_from_presented(images[..., channel]), AFFINE), str(folder / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(ras_from_presented(masks.astype(np.uint8)), AFFINE), str(folder / "truth.nii.gz"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    for patient in scan_dataset(args.data_dir):
        images, masks = load_slices(list(patient.slices))
        write_patient(images, masks, args.out / patient.folder)
        print(patient.folder, images.shape[0], "slices")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
