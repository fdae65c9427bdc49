"""Browsing a Kaggle-layout folder in the demo: patients, slices and a curated set of examples."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.io.dataset import Patient, SliceRecord, read_mask, scan_dataset


@dataclass(frozen=True)
class Example:
    """One slice offered as an example, with its tumor area for the label."""

    record: SliceRecord
    tumor_px: int

    @property
    def label(self) -> str:
        case = "_".join(self.record.patient.split("_")[:3])
        tumor = f"tumor {self.tumor_px:,} px" if self.tumor_px else "no tumor"
        return f"{case} · slice {self.record.index} · {tumor}"


def mask_areas(patient: Patient) -> np.ndarray:
    """Ground-truth pixel count of every slice of ``patient`` (0 where the mask is missing)."""
    return np.array([int(read_mask(r.mask_path).sum()) if r.mask_path else 0 for r in patient.slices])


def largest_tumor_position(patient: Patient) -> int:
    """0-based position of the slice with the largest tumor, or the middle slice if there is none."""
    areas = mask_areas(patient)
    return int(areas.argmax()) if areas.any() else len(patient.slices) // 2


def curated_examples(patients: list[Patient], max_patients: int = 4) -> list[Example]:
    """From up to ``max_patients`` spread over the list: the largest-tumor slice of each, one small
    tumor, and slices without tumor near the middle of the brain (tumor examples first)."""
    if not patients:
        return []
    picks = sorted({round(i) for i in np.linspace(0, len(patients) - 1, min(max_patients, len(patients)))})
    tumors: list[Example] = []
    empty: list[Example] = []
    small: Example | None = None
    for patient in (patients[i] for i in picks):
        areas = mask_areas(patient)
        if areas.any():
            top = int(areas.argmax())
            tumors.append(Example(patient.slices[top], int(areas[top])))
            positive = np.flatnonzero(areas >= 50)
            low = int(positive[areas[positive].argmin()]) if positive.size else top
            if small is None and low != top:
                small = Example(patient.slices[low], int(areas[low]))
        zero = np.flatnonzero(areas == 0)
        if zero.size:
            middle = int(zero[np.abs(zero - len(areas) // 2).argmin()])
            empty.append(Example(patient.slices[middle], 0))
    return tumors + ([small] if small else []) + empty[:2]


class DatasetIndex:
    """The patients under a data folder, looked up by folder name."""

    def __init__(self, data_dir: str | Path) -> None:
        self.patients = scan_dataset(data_dir)
        self.root = self.patients[0].slices[0].image_path.parent.parent if self.patients else Path(data_dir)
        self._by_name = {p.folder: p for p in self.patients}

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def patient(self, name: str) -> Patient:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"unknown patient {name!r}") from None

    def slice(self, name: str, position: int) -> SliceRecord:
        """The slice at 1-based ``position`` (clamped) of patient ``name``."""
        slices = self.patient(name).slices
        return slices[min(max(int(position), 1), len(slices)) - 1]
