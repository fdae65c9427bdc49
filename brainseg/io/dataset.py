"""Reading the Kaggle ``kaggle_3m`` layout and splitting it by patient."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from brainseg.io.pixels import binarize_mask

PATIENT_DIR = re.compile(r"^TCGA_(?P<inst>[A-Z0-9]{2})_(?P<id>[A-Z0-9]{4})_(?P<date>\d{8})$")
SLICE_FILE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)\.tif$")
TEST_PATIENTS_FILE = "lgg_test_patients.txt"
SPLIT_PROTOCOLS = ("patient", "article")  # see make_split
DEFAULT_SPLIT_SEED = 2026
DEFAULT_VAL_FRACTION = 0.1


@dataclass(frozen=True)
class SliceRecord:
    """One slice: its image, its mask (None when missing) and where it belongs."""

    patient: str
    index: int
    image_path: Path
    mask_path: Path | None


@dataclass(frozen=True)
class Patient:
    """A patient folder, e.g. ``TCGA_CS_4941_19960909``, with its slices in numeric order."""

    folder: str
    slices: tuple[SliceRecord, ...]

    @property
    def case_id(self) -> str:
        """The ID used in ``data.csv``, e.g. ``TCGA_CS_4941``."""
        return "_".join(self.folder.split("_")[:3])

    @property
    def institution(self) -> str:
        return self.folder.split("_")[1]


def find_dataset_root(data_dir: str | Path) -> Path:
    """The folder holding ``TCGA_*`` patient folders: ``data_dir`` itself or its ``kaggle_3m``."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data directory {root} does not exist: point it at a Kaggle lgg-mri-segmentation folder"
        )
    for candidate in (root, root / "kaggle_3m", root / "lgg-mri-segmentation" / "kaggle_3m"):
        if candidate.is_dir() and any(_is_patient_dir(p) for p in candidate.iterdir()):
            return candidate
    raise FileNotFoundError(
        f"no TCGA_* patient folders in {root}: expected the Kaggle kaggle_3m layout "
        "(TCGA_<inst>_<id>_<date>/..._<n>.tif and ..._<n>_mask.tif)"
    )


def _is_patient_dir(path: Path) -> bool:
    return path.is_dir() and PATIENT_DIR.match(path.name) is not None


def scan_patient(folder: Path) -> Patient:
    """List a patient folder's slices in numeric order, pairing each with its mask."""
    records = []
    for path in folder.iterdir():
        match = SLICE_FILE.match(path.name)
        if match is None or path.name.endswith("_mask.tif"):
            continue
        mask_path = path.with_name(f"{match['stem']}_{match['n']}_mask.tif")
        records.append(SliceRecord(folder.name, int(match["n"]), path, mask_path if mask_path.exists() else None))
    records.sort(key=lambda r: r.index)
    return Patient(folder.name, tuple(records))


def scan_dataset(data_dir: str | Path) -> list[Patient]:
    """All patients under ``data_dir`` (sorted by folder name), each with its slices."""
    root = find_dataset_root(data_dir)
    patients = [scan_patient(p) for p in sorted(root.iterdir()) if _is_patient_dir(p)]
    return [p for p in patients if p.slices]


def require_masks(patients: list[Patient], data_dir: str | Path) -> list[Patient]:
    """``patients``, or a ValueError when none of their slices has a ``*_mask.tif`` ground truth."""
    if not any(r.mask_path for p in patients for r in p.slices):
        raise ValueError(f"no ground-truth masks (*_<n>_mask.tif next to each slice) in {data_dir}: "
                         "training and evaluation need them")
    return patients


def read_image(path: str | Path) -> np.ndarray:
    """A dataset slice as H x W x 3 uint8 (pre-contrast, FLAIR, post-contrast)."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path | None, shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    """A dataset mask as H x W bool; a missing mask means no abnormality."""
    if path is None:
        return np.zeros(shape, dtype=bool)
    with Image.open(path) as img:
        return binarize_mask(np.array(img.convert("L")))


def load_slices(records: list[SliceRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Stack slices into (N, H, W, 3) uint8 images and (N, H, W) bool masks."""
    images = np.stack([read_image(r.image_path) for r in records])
    masks = np.stack([read_mask(r.mask_path, images.shape[1:3]) for r in records])
    return images, masks


def bundled_test_patients() -> list[str]:
    """The 11 held-out patient folders (never used for training or checkpoint choice)."""
    text = resources.files("brainseg.splits").joinpath(TEST_PATIENTS_FILE).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class Split:
    """Slices for train, validation and test, plus how they were chosen."""

    train: tuple[SliceRecord, ...]
    val: tuple[SliceRecord, ...]
    test: tuple[SliceRecord, ...]
    protocol: str

    def patients(self, part: str) -> set[str]:
        return {r.patient for r in getattr(self, part)}


def patient_split(
    patients: list[Patient],
    test_patients: list[str] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = DEFAULT_SPLIT_SEED,
) -> Split:
    """Held-out patients for test, a seeded ``val_fraction`` of the rest for validation."""
    test_ids = set(bundled_test_patients() if test_patients is None else test_patients)
    rest = sorted(p.folder for p in patients if p.folder not in test_ids)
    rng = random.Random(seed)
    n_val = min(len(rest), max(1, round(val_fraction * len(rest)))) if val_fraction > 0 and rest else 0
    val_ids = set(rng.sample(rest, n_val))
    by_part: dict[str, list[SliceRecord]] = {"train": [], "val": [], "test": []}
    for patient in patients:
        part = "test" if patient.folder in test_ids else "val" if patient.folder in val_ids else "train"
        by_part[part].extend(patient.slices)
    split = Split(tuple(by_part["train"]), tuple(by_part["val"]), tuple(by_part["test"]), "patient")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        overlap = split.patients(a) & split.patients(b)
        assert not overlap, f"patients in both {a} and {b}: {sorted(overlap)}"
    return split


def article_split(patients: list[Patient], test_fraction: float = 0.1, seed: int = DEFAULT_SPLIT_SEED) -> Split:
    """The article's protocol: a random split over slices (patients leak between parts)."""
    records = [r for p in patients for r in p.slices]
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_test = round(test_fraction * len(records))
    test = tuple(records[i] for i in sorted(order[:n_test]))
    train = tuple(records[i] for i in sorted(order[n_test:]))
    return Split(train, test, test, "article-leaky")


def make_split(
    data_dir: str | Path,
    protocol: str = "patient",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = DEFAULT_SPLIT_SEED,
) -> Split:
    """The split every command uses: the patients under ``data_dir`` (masks required) split by ``protocol``.

    ``patient``: the committed held-out patients are test, a ``seed``-ed ``val_fraction`` of the rest is
    validation (:func:`patient_split`). ``article``: the article's leaky random split over slices, where
    validation and test are the same slices (:func:`article_split`, ``val_fraction`` unused).
    """
    patients = require_masks(scan_dataset(data_dir), data_dir)
    if protocol == "patient":
        return patient_split(patients, val_fraction=val_fraction, seed=seed)
    if protocol == "article":
        return article_split(patients, seed=seed)
    raise ValueError(f"unknown split {protocol!r}: use one of {', '.join(SPLIT_PROTOCOLS)}")
