"""Pixel conversions shared by decoding, inference and datasets (numpy only).

The one 8/16-bit/float -> 8-bit converter (:func:`to_uint8`), the one "any image -> H x W x 3 uint8"
(:func:`as_rgb_uint8`) and the one "raw mask values -> bool mask" (:func:`binarize_mask`).
Errors are :class:`ValueError` whose message starts with ``name`` (the file, for uploads).
"""
from __future__ import annotations

import numpy as np

FLAIR = 1  # channel order of the LGG slices (and of every model input): pre-contrast T1, FLAIR, post-contrast T1


def to_uint8(array: np.ndarray, name: str = "image") -> np.ndarray:
    """8-bit pixels from bool, 8/16-bit integers or floats.

    Integers up to 255 are kept; an exact 8 -> 16 bit expansion (every value a multiple of 257) is
    inverted exactly; other 16-bit data (e.g. 12-bit MRI in a 16-bit file) is scaled by its maximum
    so no detail is lost. Floats in [0, 1] or [0, 255] keep their scale; other float ranges are
    stretched min..max to 0..255. bool becomes 0 / 255.
    """
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds NaN or infinite pixel values")
        low, high = float(array.min()), float(array.max())
        if low >= 0 and high <= 255:
            scale = 255.0 if high <= 1.0 else 1.0
            return np.clip(array * scale, 0, 255).round().astype(np.uint8)
        return ((array - low) * (255.0 / (high - low or 1.0))).round().astype(np.uint8)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} has unsupported pixel type {array.dtype}: use 8- or 16-bit images")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise ValueError(f"{name} has pixel values {low}..{high}: use 8- or 16-bit images")
    if high <= 255:  # 8-bit values, whatever the container
        return array.astype(np.uint8)
    wide = array.astype(np.uint32)
    if not (wide % 257).any():
        return (wide // 257).astype(np.uint8)
    return ((wide * 255 + high // 2) // max(high, 1)).astype(np.uint8)


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """H x W or H x W x C (C = 1..4) pixels -> H x W x 3 uint8.

    Grayscale (with or without alpha) is replicated to three channels, alpha is dropped, and the
    values go through :func:`to_uint8`.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] in (1, 2):  # grayscale, grayscale + alpha
        array = array[:, :, 0]
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[:, :, :3]
    elif array.ndim != 2:
        raise ValueError(f"{name} has shape {array.shape}: expected an H x W or H x W x 3 image")
    array = to_uint8(array, name)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def binarize_mask(array: np.ndarray) -> np.ndarray:
    """H x W bool mask from raw mask values (bool, 0/1, 8-bit, 16-bit or float).

    Values 0/1 count as binary; otherwise pixels above half the 8-bit (or 16-bit, or [0, 1] float)
    range are set.
    """
    array = np.asarray(array)
    if array.dtype == bool:
        return array.copy()
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("the mask holds NaN or infinite values")
        return array > (0.5 if array.max() <= 1.0 else 127.5)
    top = int(array.max()) if array.size else 0
    if top <= 1:
        return array > 0
    return array > (127 if top <= 255 else 32767)
