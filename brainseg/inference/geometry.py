"""Where a scan's slices go: the presented layout (:class:`Geometry`: axial slices inferior -> superior,
anterior up, the patient's right on the left; an exact permutation/flip of the voxel grid and back) and the
framing box the model sees of each slice (:class:`CropBox`, :func:`crop_box` around :func:`head_bounding_box`)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

PRESENTED_AXES = ("S", "P", "L")  # presented array axes: slice (inferior -> superior), row (-> posterior), column
PRESENTED_ORNT = axcodes2ornt(PRESENTED_AXES)
# The head's longest in-plane side over the box's side: on the 11 held-out LGG patients, head_mask() of the
# FLAIR channel spans 0.83-0.96 of the 256-px frame (median 0.887).
HEAD_FRAME_FILL = 0.89


@dataclass(frozen=True)
class Geometry:
    """How an input voxel grid maps to the presented (Z, R, C) slices and back (None affine: already presented)."""

    input_shape: tuple[int, ...]
    affine: np.ndarray | None = None
    header: nib.Nifti1Header | None = None

    @property
    def _ornt(self) -> np.ndarray:
        return io_orientation(self.affine)

    def to_presented(self, array: np.ndarray) -> np.ndarray:
        """Input-grid array (extra trailing axes allowed) -> presented layout, a pure axis permutation/flip."""
        if self.affine is None:
            return np.asarray(array)
        return np.ascontiguousarray(apply_orientation(array, ornt_transform(self._ornt, PRESENTED_ORNT)))

    def from_presented(self, array: np.ndarray) -> np.ndarray:
        """The exact inverse of :meth:`to_presented`."""
        if self.affine is None:
            return np.asarray(array)
        return np.ascontiguousarray(apply_orientation(array, ornt_transform(PRESENTED_ORNT, self._ornt)))

    @property
    def presented_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the presented axes (1 mm when unknown)."""
        if self.affine is None:
            return (1.0, 1.0, 1.0)
        sizes = np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0))
        spacing = [1.0, 1.0, 1.0]
        for input_axis, (world_axis, _) in enumerate(self._ornt):
            spacing[2 - int(world_axis)] = float(sizes[input_axis])  # presented axis j holds world axis 2 - j
        return tuple(spacing)  # type: ignore[return-value]

    @property
    def slice_axis(self) -> int:
        """The input axis along which the presented slices are stacked (the one closest to inferior-superior)."""
        if self.affine is None:
            return 0
        return int(np.flatnonzero(self._ornt[:, 0] == 2)[0])

    def input_slice_index(self, presented_index: int) -> int:
        """The index along :attr:`slice_axis` of presented slice ``presented_index``."""
        if self.affine is None:
            return presented_index
        flip = self._ornt[self.slice_axis, 1]
        return presented_index if flip > 0 else self.input_shape[self.slice_axis] - 1 - presented_index


@dataclass(frozen=True)
class CropBox:
    """A box on the presented slices (may reach outside them: zero padding) resized to ``size`` x ``size``."""

    top: int
    left: int
    height: int
    width: int
    size: int

    def extract(self, images: np.ndarray) -> np.ndarray:
        """(N, R, C, 3) uint8 -> (N, size, size, 3) uint8: the box of every slice, resized."""
        n, rows, cols = images.shape[:3]
        box = np.zeros((n, self.height, self.width, images.shape[3]), images.dtype)
        r0, r1 = max(self.top, 0), min(self.top + self.height, rows)
        c0, c1 = max(self.left, 0), min(self.left + self.width, cols)
        if r1 > r0 and c1 > c0:
            box[:, r0 - self.top : r1 - self.top, c0 - self.left : c1 - self.left] = images[:, r0:r1, c0:c1]
        if (self.height, self.width) == (self.size, self.size):
            return box
        shrink = self.height * self.width > self.size * self.size
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return np.stack([cv2.resize(b, (self.size, self.size), interpolation=interpolation) for b in box])

    def put_back(self, proba: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """(size, size) probabilities -> (rows, cols) on the slice, zero outside the box."""
        if (self.height, self.width) != (self.size, self.size):
            proba = cv2.resize(proba, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        out = np.zeros((rows, cols), np.float32)
        r0, r1 = max(self.top, 0), min(self.top + self.height, rows)
        c0, c1 = max(self.left, 0), min(self.left + self.width, cols)
        if r1 > r0 and c1 > c0:
            out[r0:r1, c0:c1] = proba[r0 - self.top : r1 - self.top, c0 - self.left : c1 - self.left]
        return out

    @property
    def model_px_per_voxel(self) -> float:
        """Model-input pixels per slice pixel (area ratio)."""
        return (self.size * self.size) / (self.height * self.width)


def head_bounding_box(head: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) inclusive of the largest blob of the head's in-plane projection, or None."""
    projection = head.any(axis=0).astype(np.uint8)
    if not projection.any():
        return None
    opened = cv2.morphologyEx(projection, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if opened.any():
        projection = opened
    n, _, stats, _ = cv2.connectedComponentsWithStats(projection, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, width, height = (int(v) for v in stats[largest, :4])
    return top, left, top + height - 1, left + width - 1


def crop_box(shape: tuple[int, int], spacing: tuple[float, float], size: int,
             bbox: tuple[int, int, int, int] | None = None) -> CropBox:
    """A box square in mm: around ``bbox`` with the head filling :data:`HEAD_FRAME_FILL`, or the whole slice."""
    rows, cols = shape
    row_mm, col_mm = spacing
    if bbox is None:
        top, left, bottom, right = 0, 0, rows - 1, cols - 1
        side_mm = max(rows * row_mm, cols * col_mm)
    else:
        top, left, bottom, right = bbox
        side_mm = max((bottom - top + 1) * row_mm, (right - left + 1) * col_mm) / HEAD_FRAME_FILL
    height, width = max(1, round(side_mm / row_mm)), max(1, round(side_mm / col_mm))
    centre_r, centre_c = (top + bottom + 1) / 2, (left + right + 1) / 2
    return CropBox(round(centre_r - height / 2), round(centre_c - width / 2), height, width, size)
