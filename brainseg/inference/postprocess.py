"""Turning probability maps into masks: threshold, then drop small connected components."""
from __future__ import annotations

import cv2
import numpy as np


def remove_small_components(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Keep only 8-connected components of at least ``min_px`` pixels."""
    mask = np.asarray(mask, bool)
    if min_px <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    return keep[labels]


def binarize(proba: np.ndarray, threshold: float = 0.5, min_component_px: int = 0) -> np.ndarray:
    """``proba >= threshold`` with components smaller than ``min_component_px`` removed."""
    return remove_small_components(np.asarray(proba) >= threshold, min_component_px)
