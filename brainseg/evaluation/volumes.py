"""Scoring a whole-volume prediction against a ground truth on the input's grid (3D Dice, per-slice Dice)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from brainseg.evaluation.metrics import dice_score
from brainseg.inference.volume import VolumePrediction
from brainseg.io.volumes import VolumeError


@dataclass(frozen=True)
class VolumeScore:
    """Agreement of a predicted mask with a ground truth on the same grid."""

    dice: float
    predicted_voxels: int
    truth_voxels: int
    per_slice_dice: tuple[float, ...]  # presented slice order; 1.0 where both are empty

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_volume(prediction: VolumePrediction, truth: np.ndarray, threshold: float | None = None) -> VolumeScore:
    """3D Dice of the prediction against ``truth`` (bool or labels > 0, on the input grid), plus per-slice Dice."""
    truth = np.asarray(truth) > 0
    if truth.shape != prediction.geometry.input_shape:
        raise VolumeError(f"the ground truth's shape {truth.shape} differs from the input's "
                          f"{prediction.geometry.input_shape}")
    predicted = prediction.presented_mask(threshold)
    presented_truth = prediction.geometry.to_presented(truth)
    per_slice = tuple(round(dice_score(p, t), 4) for p, t in zip(predicted, presented_truth))
    return VolumeScore(dice_score(predicted, presented_truth), int(predicted.sum()), int(presented_truth.sum()),
                       per_slice)
