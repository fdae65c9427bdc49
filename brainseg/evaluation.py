"""Running a Segmenter over slices and summarising the metrics."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from .config import ModelConfig
from .inference import Segmenter
from .metrics import Report, SliceCounts, summarize
from .postprocess import binarize


def count_slices(
    probas: np.ndarray, masks: np.ndarray, patients: Sequence[str], threshold: float, min_component_px: int
) -> list[SliceCounts]:
    return [
        SliceCounts.of(patient, binarize(proba, threshold, min_component_px), mask)
        for proba, mask, patient in zip(probas, masks, patients)
    ]


def evaluate_arrays(
    segmenter: Segmenter, images: np.ndarray, masks: np.ndarray, patients: Sequence[str]
) -> Report:
    """Metrics of ``segmenter`` on (N, H, W, 3) uint8 slices with (N, H, W) bool masks."""
    probas = segmenter.predict_proba_batch(images)
    cfg = segmenter.config
    return summarize(count_slices(probas, masks, patients, cfg.threshold, cfg.min_component_px))


def timed_probabilities(segmenter: Segmenter, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities for every slice and the mean milliseconds per slice (one slice at a time)."""
    segmenter.predict_proba(images[0])  # warm-up
    started = time.perf_counter()
    probas = np.stack([segmenter.predict_proba(img) for img in images])
    return probas, 1000 * (time.perf_counter() - started) / len(images)


def tune_postprocessing(
    segmenter: Segmenter,
    images: np.ndarray,
    masks: np.ndarray,
    patients: Sequence[str],
    thresholds: Sequence[float] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    min_sizes: Sequence[int] = (0, 10, 20, 40, 80, 120, 160, 240, 320),
    flip_tta_options: Sequence[bool] = (False, True),
) -> tuple[ModelConfig, Report]:
    """Pick threshold, minimum component size and flip TTA that maximise validation slice Dice + volume Dice.

    ``flip_tta_options=(False,)`` keeps inference single-pass (what a latency budget may require).
    The thresholds reach down to 0.05: with a sharp model the optimum can lie below 0.3 (it did for the
    bundled model), and a grid that stops at its edge hides it.

    Returns the chosen config and its report on these slices. Only ever call this with validation
    slices: the chosen values are stored in the model config.
    """
    best_cfg, best_report, best_score = segmenter.config, None, -1.0
    for flip_tta in flip_tta_options:
        trial = Segmenter(segmenter.model, dataclasses.replace(segmenter.config, flip_tta=flip_tta),
                          device=str(segmenter.device), bf16=segmenter.bf16)
        probas = trial.predict_proba_batch(images)
        for threshold in thresholds:
            for min_px in min_sizes:
                report = summarize(count_slices(probas, masks, patients, threshold, min_px))
                score = report.slice_dice + report.volume_dice
                if score > best_score + 1e-9:
                    best_score, best_report = score, report
                    best_cfg = dataclasses.replace(
                        segmenter.config, threshold=threshold, min_component_px=min_px, flip_tta=flip_tta,
                        extra=dict(segmenter.config.extra),
                    )
    return best_cfg, best_report
