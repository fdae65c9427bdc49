"""The forms in which a user may send a slice, made from LGG slices, to score a model on each.

A model is chosen on the validation patients in every form of :data:`SELECTION_FORMS` (the mean of
:func:`brainseg.evaluation.scoring.evaluate_forms`), not on the LGG slices as they are alone:

- ``as_is``: the Kaggle slice (pre-contrast T1, FLAIR, post-contrast T1; skull and scalp);
- ``skull_stripped``: outside the heuristic brain mask (:mod:`brainseg.inference.brainmask`) set to 0;
- ``flair_only``: FLAIR in all three channels (how the app and the volume pipeline fill missing sequences);
- ``flair_t1c``: FLAIR in place of the pre-contrast T1 (a FLAIR + post-contrast study);
- ``half_frame``: the slice shrunk to half its size around the centre (a whole-FOV 1 mm slice);

and, reported but not used for the choice (:data:`REPORT_FORMS`): ``stripped_flair_only`` (the commonest
outside scan) and ``rotated_90`` (a slice turned by a quarter, which the volume pipeline's reorientation
prevents but a slice upload does not).
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from brainseg.inference.brainmask import brain_masks
from brainseg.io.pixels import FLAIR

Slices = tuple[np.ndarray, np.ndarray]  # (N, H, W, 3) uint8 images, (N, H, W) bool masks


def as_is(images: np.ndarray, masks: np.ndarray) -> Slices:
    return images, masks


def skull_stripped(images: np.ndarray, masks: np.ndarray) -> Slices:
    """Everything outside each slice's brain mask set to 0 (the tumor mask cut to the brain as well)."""
    brains = brain_masks(images)
    return images * brains[..., None].astype(images.dtype), masks & brains


def flair_only(images: np.ndarray, masks: np.ndarray) -> Slices:
    return np.repeat(images[..., FLAIR : FLAIR + 1], 3, axis=-1), masks


def flair_t1c(images: np.ndarray, masks: np.ndarray) -> Slices:
    out = images.copy()
    out[..., 0] = images[..., FLAIR]
    return out, masks


def half_frame(images: np.ndarray, masks: np.ndarray, factor: float = 0.5) -> Slices:
    """Each slice resized by ``factor`` (area for the image, nearest for the mask) in the middle of a black frame."""
    n, rows, cols = masks.shape
    small_rows, small_cols = round(rows * factor), round(cols * factor)
    top, left = (rows - small_rows) // 2, (cols - small_cols) // 2
    out_images = np.zeros_like(images)
    out_masks = np.zeros_like(masks)
    for i in range(n):
        out_images[i, top : top + small_rows, left : left + small_cols] = cv2.resize(
            images[i], (small_cols, small_rows), interpolation=cv2.INTER_AREA)
        out_masks[i, top : top + small_rows, left : left + small_cols] = cv2.resize(
            masks[i].astype(np.uint8), (small_cols, small_rows), interpolation=cv2.INTER_NEAREST).astype(bool)
    return out_images, out_masks


def stripped_flair_only(images: np.ndarray, masks: np.ndarray) -> Slices:
    return flair_only(*skull_stripped(images, masks))


def rotated_90(images: np.ndarray, masks: np.ndarray) -> Slices:
    return np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2))), np.ascontiguousarray(np.rot90(masks, 1, axes=(1, 2)))


FORMS: dict[str, Callable[[np.ndarray, np.ndarray], Slices]] = {
    "as_is": as_is, "skull_stripped": skull_stripped, "flair_only": flair_only, "flair_t1c": flair_t1c,
    "half_frame": half_frame, "stripped_flair_only": stripped_flair_only, "rotated_90": rotated_90,
}
SELECTION_FORMS = ("as_is", "skull_stripped", "flair_only", "flair_t1c", "half_frame")
REPORT_FORMS = (*SELECTION_FORMS, "stripped_flair_only", "rotated_90")


def present(form: str, images: np.ndarray, masks: np.ndarray) -> Slices:
    """``images`` (N, H, W, 3) uint8 and ``masks`` (N, H, W) bool in the form ``form`` (new arrays)."""
    if form not in FORMS:
        raise ValueError(f"unknown input form {form!r}: use one of {', '.join(FORMS)}")
    return FORMS[form](images, masks)
