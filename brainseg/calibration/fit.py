"""Calibrating a model to a new site from a few labelled scans (``brainseg calibrate``).

The model runs **once** per scan (:func:`brainseg.inference.volume.predict_volume`, as ``brainseg predict`` runs
it); for every threshold and minimum component size of a grid, :func:`scan_table` counts each scan's true
positives and predicted voxels from the cached probabilities (each presented slice's 8-connected components
labelled once per threshold, the rule :meth:`brainseg.inference.volume.VolumePrediction.presented_mask` applies). The
choice maximises mean 3D Dice over the scans (:func:`choose`); :func:`leave_one_out` says what it is worth on
a scan it was not chosen on. :func:`write_calibrated` writes the source model's folder with the chosen values.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from brainseg.config import CALIBRATION_KEY, ModelConfig
from brainseg.evaluation.external import DEFAULT_TRUTH_GLOBS
from brainseg.fileio import atomic_write_text
from brainseg.inference.volume import VolumePrediction, predict_subject
from brainseg.io.subjects import SubjectInputs, find_subjects, is_patient_folder_input
from brainseg.io.volumes import VolumeError
from brainseg.io.weights import save_weights
from brainseg.publishing.card import calibration_line

MIN_SCANS = 3  # labelled scans below which leave-one-out cannot say anything
DEFAULT_MIN_GAIN = 0.01  # leave-one-out mean 3D Dice gain below which the model is kept as it is
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 .. 0.95
MIN_COMPONENT_GRID = (0, 10, 20, 40, 80, 120, 160, 240, 320)  # model-input pixels, as brainseg.evaluation.scoring
REPORT_FILE = "calibration.json"
SKIPPED_FILES = ("metrics.json",)  # the source's held-out numbers were measured at its own threshold


class CalibrationError(ValueError):
    """Calibration cannot run or is refused; the message says why and what to do."""


@dataclass(frozen=True)
class Grid:
    """The thresholds and minimum component sizes (model-input pixels) searched."""

    thresholds: tuple[float, ...] = THRESHOLD_GRID
    min_sizes: tuple[int, ...] = MIN_COMPONENT_GRID

    def including(self, threshold: float, min_size: int) -> Grid:
        """This grid plus a model's own values (so the uncalibrated score is read from the same table)."""
        return Grid(tuple(sorted({*self.thresholds, float(threshold)})),
                    tuple(sorted({*self.min_sizes, int(min_size)})))

    def index(self, threshold: float, min_size: int) -> tuple[int, int]:
        return self.thresholds.index(float(threshold)), self.min_sizes.index(int(min_size))


@dataclass(frozen=True)
class ScanTable:
    """One scan's counts for every (threshold, minimum size) of a :class:`Grid`: arrays of shape (T, M)."""

    name: str
    truth_voxels: int
    true_positives: np.ndarray
    predicted: np.ndarray
    predict_seconds: float = 0.0

    def dice(self) -> np.ndarray:
        """3D Dice per grid point; 1.0 where prediction and truth are both empty (as ``dice_score``)."""
        total = self.predicted + self.truth_voxels
        return np.where(total > 0, 2.0 * self.true_positives / np.maximum(total, 1), 1.0)


@dataclass(frozen=True)
class Choice:
    """A threshold and minimum component size and the mean 3D Dice they gave on the scans they were chosen on."""

    threshold: float
    min_component_px: int
    mean_dice: float


def min_component_voxels(min_px: int, model_px_per_voxel: float) -> int:
    """A minimum size in model-input pixels as presented voxels (as ``VolumePrediction`` converts it)."""
    return min_px if min_px <= 1 else max(1, round(min_px / model_px_per_voxel))


def _components(proba: np.ndarray, truth: np.ndarray, slice_max: np.ndarray,
                threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Every slice's 8-connected components at ``threshold``: their sizes and their voxels inside the truth."""
    areas, overlaps = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for z in np.flatnonzero(slice_max >= threshold):
        n, labels, stats, _ = cv2.connectedComponentsWithStats((proba[z] >= threshold).astype(np.uint8),
                                                               connectivity=8)
        areas.append(stats[1:, cv2.CC_STAT_AREA].astype(np.int64))
        overlaps.append(np.bincount(labels[truth[z]], minlength=n)[1:].astype(np.int64))
    return np.concatenate(areas), np.concatenate(overlaps)


def scan_table(prediction: VolumePrediction, truth: np.ndarray, grid: Grid, name: str | None = None) -> ScanTable:
    """Counts of ``prediction`` against ``truth`` (labels > 0 on the input grid) at every point of ``grid``;
    ``name`` names the scan (default: the prediction's)."""
    presented = prediction.geometry.to_presented(np.asarray(truth) > 0)
    if presented.shape != prediction.proba.shape:
        raise VolumeError(f"{prediction.name}: the ground truth's shape {np.shape(truth)} differs from the scan's "
                          f"{prediction.geometry.input_shape}")
    slice_max = prediction.proba.reshape(prediction.n_slices, -1).max(axis=1)
    sizes = [min_component_voxels(m, prediction.box.model_px_per_voxel) for m in grid.min_sizes]
    tp = np.zeros((len(grid.thresholds), len(sizes)), np.int64)
    predicted = np.zeros_like(tp)
    for ti, threshold in enumerate(grid.thresholds):
        areas, overlaps = _components(prediction.proba, presented, slice_max, threshold)
        for mi, size in enumerate(sizes):
            kept = areas >= size if size > 1 else np.ones(areas.shape, bool)
            tp[ti, mi], predicted[ti, mi] = overlaps[kept].sum(), areas[kept].sum()
    return ScanTable(name or prediction.name, int(presented.sum()), tp, predicted, prediction.seconds)


def choose(tables: Sequence[ScanTable], grid: Grid, prefer: tuple[float, int]) -> Choice:
    """The grid point with the highest mean 3D Dice over ``tables``; a tie goes to the one nearest ``prefer``
    (the model's own threshold first, then its minimum size), so a flat optimum leaves the model as it is."""
    mean = np.mean([table.dice() for table in tables], axis=0)
    ties = np.argwhere(mean >= mean.max() - 1e-9)
    ti, mi = min(ties, key=lambda tm: (abs(grid.thresholds[tm[0]] - prefer[0]), abs(grid.min_sizes[tm[1]] - prefer[1])))
    return Choice(grid.thresholds[ti], grid.min_sizes[mi], float(mean[ti, mi]))


def leave_one_out(tables: Sequence[ScanTable], grid: Grid, start: tuple[float, int]) -> dict[str, Any]:
    """For each scan: choose on the others, score on it. ``start`` is the model's own (threshold, minimum size).

    Returns ``per_scan`` rows (``name``, ``uncalibrated``, ``calibrated`` 3D Dice, the ``threshold`` and
    ``min_component_px`` chosen without it), ``uncalibrated_mean``, ``calibrated_mean``, ``gain`` and
    ``scans_worse`` (held-out scans that lost more than 0.005).
    """
    if len(tables) < 2:
        raise CalibrationError("leave-one-out needs at least two scans")
    home = grid.index(*start)
    rows = []
    for k, table in enumerate(tables):
        choice = choose([t for j, t in enumerate(tables) if j != k], grid, start)
        dice = table.dice()
        rows.append({"name": table.name, "uncalibrated": round(float(dice[home]), 4),
                     "calibrated": round(float(dice[grid.index(choice.threshold, choice.min_component_px)]), 4),
                     "threshold": choice.threshold, "min_component_px": choice.min_component_px})
    before = float(np.mean([r["uncalibrated"] for r in rows]))
    after = float(np.mean([r["calibrated"] for r in rows]))
    return {"per_scan": rows, "uncalibrated_mean": round(before, 4), "calibrated_mean": round(after, 4),
            "gain": round(after - before, 4),
            "scans_worse": sum(r["calibrated"] < r["uncalibrated"] - 0.005 for r in rows)}


# ------------------------------------------------------------------------------------------------ the scans
def find_scans(folder: str | Path, truth_glob: str | None = None) -> list[SubjectInputs]:
    """The labelled scans under ``folder`` (as ``brainseg predict`` finds subjects): NIfTI subject folders
    with a label file (``truth_glob``, else the first of :data:`DEFAULT_TRUTH_GLOBS` found in every folder),
    or Kaggle patient folders (their ``*_mask.tif``). Refuses fewer than :data:`MIN_SCANS` or unlabelled ones."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"--scans {folder}: no such folder (give a folder with one sub-folder per scan)")
    patterns = (truth_glob,) if truth_glob else DEFAULT_TRUTH_GLOBS
    for pattern in patterns:
        try:
            subjects = find_subjects([folder], pattern)
        except VolumeError:
            if truth_glob:
                raise
            continue
        if all(s.truth is not None or is_patient_folder_input(s) for s in subjects):
            _check_count(len(subjects), folder)
            return subjects
    missing = [s.name for s in find_subjects([folder]) if not is_patient_folder_input(s)]
    raise CalibrationError(f"{folder}: no label file found for every scan ({', '.join(missing)}): calibration needs "
                           "labelled scans, one folder per scan holding its FLAIR and one label NIfTI (labels > 0 = "
                           f"tumor); name the label file with --truth-glob (tried {' / '.join(patterns)})")


def _check_count(n: int, folder: Path) -> None:
    if n < MIN_SCANS:
        raise CalibrationError(f"{folder}: {n} labelled scan{'s' if n != 1 else ''}; calibration needs at least "
                               f"{MIN_SCANS} (5-10 is better), so that leave-one-out can say whether it helps")


def predict_scan(segmenter, subject: SubjectInputs, flair_only: bool = False,
                 intensity: str | None = None) -> tuple[VolumePrediction, np.ndarray]:
    """One scan's prediction (the model run once, under the intensity rule ``intensity``; None: the model's, as
    :func:`~brainseg.inference.volume.predict_volume` resolves it) and its ground truth on the input grid."""
    run = predict_subject(segmenter, subject, flair_only=flair_only, intensity=intensity)
    if run.truth is None:
        raise CalibrationError(f"{subject.name}: a patient folder without a *_mask.tif for every slice is not "
                               "labelled: calibration needs labelled scans")
    return run.prediction, run.truth


def scan_tables(segmenter, subjects: Sequence[SubjectInputs], grid: Grid, *, flair_only: bool = False,
                intensity: str | None = None, on_scan: Callable[[ScanTable], None] | None = None) -> list[ScanTable]:
    """:func:`scan_table` of every scan (each run once through ``segmenter``); refuses when fewer than
    :data:`MIN_SCANS` of them hold any labelled voxel."""
    tables = []
    for subject in subjects:
        prediction, truth = predict_scan(segmenter, subject, flair_only, intensity)
        tables.append(scan_table(prediction, truth, grid, subject.name))
        del prediction
        if on_scan:
            on_scan(tables[-1])
    check_labelled(tables)
    return tables


def check_labelled(tables: Sequence[ScanTable]) -> None:
    """Refuses when fewer than :data:`MIN_SCANS` of the scans hold any labelled voxel."""
    labelled = sum(table.truth_voxels > 0 for table in tables)
    if labelled < MIN_SCANS:
        empty = [t.name for t in tables if t.truth_voxels == 0]
        raise CalibrationError(f"only {labelled} of {len(tables)} scans have any labelled voxel (empty labels: "
                               f"{', '.join(empty)}): calibration needs at least {MIN_SCANS} scans with tumor labelled")


# ------------------------------------------------------------------------------------------------ the folder
def calibrated_config(config: ModelConfig, choice: Choice, record: dict[str, Any]) -> ModelConfig:
    """``config`` with the chosen threshold and minimum size, and ``record`` under ``extra["calibration"]``."""
    extra = {**config.extra, CALIBRATION_KEY: record}
    data = {**config.to_dict(), "threshold": choice.threshold, "min_component_px": choice.min_component_px,
            "extra": extra}
    return ModelConfig.from_dict(data)


def write_calibrated(source: Path, out_dir: Path, config: ModelConfig, report: dict[str, Any],
                     model: torch.nn.Module | None = None) -> Path:
    """Copy the model folder ``source`` to ``out_dir`` (new or empty) with ``config`` as its ``config.json``,
    the report as ``calibration.json``, a calibration line added to its card (``README.md``) and, when ``model``
    is given (a fine-tuned network), its weights as ``model.safetensors``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CalibrationError(f"--out-dir {out_dir} already exists and is not empty: name a new folder")
    staging = out_dir.parent / f".{out_dir.name}.calibrating-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*SKIPPED_FILES, ".*"))
    config.save(staging)
    if model is not None:
        save_weights(model, staging)
    atomic_write_text(staging / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    card = staging / "README.md"
    line = calibration_line(config)
    if card.is_file() and line:
        card.write_text(card.read_text().rstrip() + f"\n\n## Calibration\n\n{line} (`{REPORT_FILE}`: every number)\n")
    if out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)
    return out_dir


def choice_dict(choice: Choice) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(choice).items()}

