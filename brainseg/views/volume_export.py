"""What the app shows and hands out for a whole-volume prediction: per-slice views, the per-slice tumor-area
plot, an animated GIF of the overlays, the report numbers and a ground truth read onto the prediction's grid.

Nothing here runs the model: everything is drawn from a :class:`~brainseg.inference.volume.VolumePrediction`'s
stored probabilities at any threshold.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from brainseg.evaluation.volumes import VolumeScore, evaluate_volume
from brainseg.fileio import atomic_write
from brainseg.inference.volume import VolumePrediction
from brainseg.io.volumes import Volume, VolumeError, check_same_grid, load_nifti
from brainseg.views.overlay import PREDICTION_COLOUR, TRUTH_COLOUR, fill_and_contour, probability_heatmap

GIF_FRAME_MS = 120  # per slice: a 130-slice brain plays in about 16 s
GIF_MAX_SIDE = 256  # larger slices are shrunk for the GIF (the NIfTI mask keeps the input's grid)


def overlay_frame(prediction: VolumePrediction, index: int, threshold: float,
                  truth: np.ndarray | None = None) -> np.ndarray:
    """Presented slice ``index`` with the predicted mask in red (and the ground truth, presented, in blue)."""
    image = prediction.images[index]
    if truth is not None:
        image = fill_and_contour(image, truth[index], TRUTH_COLOUR)
    return fill_and_contour(image, prediction.slice_mask(index, threshold), PREDICTION_COLOUR)


def probability_frame(prediction: VolumePrediction, index: int) -> np.ndarray:
    """Presented slice ``index``'s probabilities (black 0 -> yellow 1) blended over the slice."""
    return probability_heatmap(prediction.proba[index], prediction.images[index])


def shown_slices(prediction: VolumePrediction) -> range:
    """The presented slices from the first to the last that is not black (all of them if every one is)."""
    lit = np.flatnonzero(prediction.images.reshape(prediction.n_slices, -1).max(axis=1) > 0)
    return range(int(lit[0]), int(lit[-1]) + 1) if len(lit) else range(prediction.n_slices)


def presented_truth(prediction: VolumePrediction, truth: np.ndarray) -> np.ndarray:
    """A ground truth on the input grid in the presented (slice, row, column) layout, as bool."""
    return prediction.geometry.to_presented(np.asarray(truth) > 0)


def save_overlay_gif(prediction: VolumePrediction, path: str | Path, threshold: float,
                     truth: np.ndarray | None = None, *, frame_ms: int = GIF_FRAME_MS,
                     max_side: int = GIF_MAX_SIDE) -> Path:
    """An animated GIF of :func:`overlay_frame` over :func:`shown_slices` (inferior -> superior), looping,
    written atomically. ``truth`` is presented (see :func:`presented_truth`)."""
    frames = []
    for index in shown_slices(prediction):
        frame = overlay_frame(prediction, index, threshold, truth)
        scale = max_side / max(frame.shape[:2])
        if scale < 1:
            size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        frames.append(Image.fromarray(frame).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=0))
    first, *rest = frames
    return atomic_write(path, lambda tmp: first.save(tmp, format="GIF", save_all=True, append_images=rest,
                                                     duration=frame_ms, loop=0, disposal=1))


def slice_area_mm2(prediction: VolumePrediction) -> float:
    """One presented pixel's area in mm^2 (1 when the spacing is unknown)."""
    _, row_mm, col_mm = prediction.geometry.presented_spacing
    return row_mm * col_mm


def area_plot(prediction: VolumePrediction, threshold: float, truth: np.ndarray | None = None,
              current: int | None = None) -> Figure:
    """Tumor area per presented slice (cm^2, inferior -> superior); the ground truth's dashed, ``current`` marked.

    ``truth`` is presented (see :func:`presented_truth`). A plain :class:`~matplotlib.figure.Figure`
    (no pyplot state): the caller renders or discards it.
    """
    to_cm2 = slice_area_mm2(prediction) / 100.0
    slices = np.arange(1, prediction.n_slices + 1)
    predicted = prediction.slice_areas(threshold) * to_cm2
    figure = Figure(figsize=(7.0, 2.6), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.fill_between(slices, predicted, step="mid", color="#ff2828", alpha=0.3, linewidth=0)
    axes.step(slices, predicted, where="mid", color="#d01010", linewidth=1.5, label="predicted")
    if truth is not None:
        axes.step(slices, truth.sum(axis=(1, 2)) * to_cm2, where="mid", color="#1e90ff", linestyle="--",
                  linewidth=1.5, label="ground truth")
        axes.legend(loc="upper right", fontsize=8, frameon=False)
    if current is not None:
        axes.axvline(current + 1, color="0.4", linewidth=1, linestyle=":")
    axes.set_xlim(0.5, prediction.n_slices + 0.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(bottom=0)
    axes.set_xlabel("slice (inferior → superior)")
    axes.set_ylabel("tumor area (cm²)")
    axes.grid(alpha=0.3, linewidth=0.5)
    return figure


def read_truth(prediction: VolumePrediction, path: str | Path) -> np.ndarray:
    """A ground-truth label NIfTI (labels > 0 = tumor) as bool on the input grid; it must be on the
    prediction's grid (same shape, affine within 0.01 mm), else :class:`VolumeError`."""
    truth = load_nifti(path)
    geometry = prediction.geometry
    if geometry.affine is None:
        raise VolumeError("this prediction has no voxel grid to compare a ground-truth NIfTI with")
    grid = Volume(np.broadcast_to(np.float32(0), geometry.input_shape), geometry.affine, prediction.name, "nifti")
    check_same_grid(grid, truth, "the ground truth")
    return truth.data > 0


def volume_numbers(prediction: VolumePrediction, threshold: float, seconds: float | None = None,
                   score: VolumeScore | None = None) -> dict:
    """The numbers of ``brainseg predict --json``: ``summary``, ``seconds`` (end to end, when given)
    and ``ms_per_slice`` and, with ``score``, the Dice, the true volume and the per-slice Dice (presented order)."""
    numbers = prediction.summary(threshold)
    if seconds is not None:
        numbers["seconds"] = round(seconds, 3)
        numbers["ms_per_slice"] = round(1000 * seconds / max(prediction.n_slices, 1), 2)
    if score is not None:
        numbers["dice"] = round(score.dice, 4)
        numbers["truth_voxels"] = score.truth_voxels
        if prediction.voxel_volume_ml is not None:
            numbers["truth_volume_ml"] = round(score.truth_voxels * prediction.voxel_volume_ml, 4)
        numbers["per_slice_dice"] = list(score.per_slice_dice)
    return numbers


def score_truth(prediction: VolumePrediction, truth: np.ndarray | None, threshold: float) -> VolumeScore | None:
    """:func:`~brainseg.evaluation.volumes.evaluate_volume` at ``threshold``, or None without a ground truth."""
    return None if truth is None else evaluate_volume(prediction, truth, threshold)
