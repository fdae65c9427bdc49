"""Segmentation metrics: per-slice IoU/Dice, tumor-slice Dice, empty-slice FP rate, volume Dice."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    """How reports name one metric: ``key`` in :class:`Report` and the evaluation JSON, a ``label`` for
    tables, a ``short`` column header, and the ``kind`` of metric for Hub model-card data."""

    key: str
    label: str
    short: str
    kind: str

    @property
    def title(self) -> str:
        """``label`` starting with a capital letter (for a model card)."""
        return self.label[:1].upper() + self.label[1:]


# The one table of metric names: evaluation tables, ablation tables and model cards read it.
METRICS: tuple[Metric, ...] = (
    Metric("slice_dice", "Dice per slice (empty/empty = 1)", "slice Dice", "dice"),
    Metric("slice_iou", "IoU per slice (empty/empty = 1)", "slice IoU", "iou"),
    Metric("tumor_slice_dice", "Dice over tumor-bearing slices", "tumor-slice Dice", "dice"),
    Metric("tumor_slice_iou", "IoU over tumor-bearing slices", "tumor-slice IoU", "iou"),
    Metric("empty_fp_rate", "false-positive rate on tumor-free slices", "empty FP rate", "false_positive_rate"),
    Metric("volume_dice", "volume Dice (mean over patients)", "volume Dice", "dice"),
)
METRICS_BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (the article's convention)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def iou_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two binary masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = int(np.logical_or(pred, truth).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(pred, truth).sum()) / union


@dataclass
class SliceCounts:
    """Pixel counts of one slice, enough to compute every metric."""

    patient: str
    intersection: int
    pred_area: int
    truth_area: int

    @classmethod
    def of(cls, patient: str, pred: np.ndarray, truth: np.ndarray) -> "SliceCounts":
        pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
        return cls(patient, int(np.logical_and(pred, truth).sum()), int(pred.sum()), int(truth.sum()))

    @property
    def dice(self) -> float:
        total = self.pred_area + self.truth_area
        return 1.0 if total == 0 else 2.0 * self.intersection / total

    @property
    def iou(self) -> float:
        union = self.pred_area + self.truth_area - self.intersection
        return 1.0 if union == 0 else self.intersection / union


@dataclass
class Report:
    """Aggregate metrics over a set of slices."""

    slice_dice: float
    slice_iou: float
    tumor_slice_dice: float
    tumor_slice_iou: float
    empty_fp_rate: float
    volume_dice: float
    n_slices: int
    n_tumor_slices: int
    n_patients: int
    per_patient_dice: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(counts: Sequence[SliceCounts]) -> Report:
    """Average per-slice metrics (empty/empty scores 1) and pool slices per patient for volume Dice."""
    if not counts:
        raise ValueError("no slices to summarize")
    tumor = [c for c in counts if c.truth_area > 0]
    empty = [c for c in counts if c.truth_area == 0]
    pooled: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c in counts:
        pooled[c.patient][0] += c.intersection
        pooled[c.patient][1] += c.pred_area + c.truth_area
    per_patient = {p: (1.0 if total == 0 else 2.0 * inter / total) for p, (inter, total) in sorted(pooled.items())}
    return Report(
        slice_dice=float(np.mean([c.dice for c in counts])),
        slice_iou=float(np.mean([c.iou for c in counts])),
        tumor_slice_dice=float(np.mean([c.dice for c in tumor])) if tumor else float("nan"),
        tumor_slice_iou=float(np.mean([c.iou for c in tumor])) if tumor else float("nan"),
        empty_fp_rate=float(np.mean([c.pred_area > 0 for c in empty])) if empty else float("nan"),
        volume_dice=float(np.mean(list(per_patient.values()))),
        n_slices=len(counts),
        n_tumor_slices=len(tumor),
        n_patients=len(per_patient),
        per_patient_dice=per_patient,
    )
