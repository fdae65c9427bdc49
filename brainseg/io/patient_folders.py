"""Kaggle ``kaggle_3m`` patient folders as whole scans: their slices (and masks) in numeric order, and the
predicted masks written back as one PNG per slice."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from brainseg.fileio import atomic_write
from brainseg.io.dataset import SLICE_FILE, read_image, read_mask, scan_patient
from brainseg.io.volumes import VolumeError, first_line


@dataclass(frozen=True)
class PatientSlices:
    """A Kaggle ``kaggle_3m`` patient folder: its slices in numeric order (N, H, W, 3 uint8) and their masks."""

    folder: Path
    images: np.ndarray
    slice_names: tuple[str, ...]  # e.g. "TCGA_CS_4944_20010208_1" (the file name without ".tif")
    truth: np.ndarray | None = None  # (N, H, W) bool when every slice has a *_mask.tif

    @property
    def name(self) -> str:
        return self.folder.name


def is_patient_folder(path: Path) -> bool:
    """A Kaggle patient folder holds ``<stem>_<n>.tif`` slices."""
    return path.is_dir() and any(
        SLICE_FILE.match(p.name) and not p.name.endswith("_mask.tif") for p in path.iterdir())


def load_patient_folder(folder: str | Path) -> PatientSlices:
    """A Kaggle patient folder's slices (and masks, when every slice has one) in numeric order."""
    folder = Path(folder)
    patient = scan_patient(folder)
    if not patient.slices:
        raise VolumeError(f"{folder.name}: no <name>_<n>.tif slices in it: give a Kaggle patient folder")
    try:
        images = np.stack([read_image(r.image_path) for r in patient.slices])
    except (OSError, ValueError) as exc:
        raise VolumeError(f"{folder.name}: a slice cannot be read ({first_line(exc)})") from None
    truth = None
    if all(r.mask_path for r in patient.slices):
        truth = np.stack([read_mask(r.mask_path, images.shape[1:3]) for r in patient.slices])
    names = tuple(r.image_path.name[: -len(".tif")] for r in patient.slices)
    return PatientSlices(folder, images, names, truth)


def save_png_masks(masks: np.ndarray, names: tuple[str, ...], folder: str | Path) -> list[Path]:
    """One 0/255 PNG per slice, ``<slice name>_mask.png``, each written atomically."""
    written = []
    for mask, slice_name in zip(masks, names):
        image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
        written.append(atomic_write(Path(folder) / f"{slice_name}_mask.png", lambda tmp, im=image: im.save(tmp, "PNG")))
    return written
