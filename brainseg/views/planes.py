"""Three linked planes (axial, coronal, sagittal) through one point of a presented volume, the way scans are read:
the base always grayscale (one sequence, R = G = B), the prediction, the ground truth, the uncertainty band and
the cross-hair in fixed saturated colours that no grayscale pixel can imitate.

Volumes are in the presented layout of :mod:`brainseg.inference.volume` (Z, R, C): slices inferior -> superior, rows
anterior -> posterior, columns from the patient's right to left. The planes are drawn with square millimetres
on one shared scale (:class:`PlaneGeometry`), superior at the top of the coronal and sagittal planes, anterior
on the sagittal plane's left, so a click on any plane maps back to one voxel.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from brainseg.views.overlay import PREDICTION_COLOUR, TRUTH_COLOUR, Colour, contour_thickness, tint_table

PLANES = ("axial", "coronal", "sagittal")
UNCERTAIN_COLOUR: Colour = (255, 196, 0)  # amber: the probability band around the threshold
CROSSHAIR_COLOUR: Colour = (0, 214, 80)  # green: where the three planes meet
FILL_ALPHA = 0.3
UNCERTAIN_ALPHA = 0.35
DISPLAY_SIDE = 320  # px of the volume's longest side in mm
CROSSHAIR_GAP = 6  # px left open around the point, so the voxel itself stays visible
SEQUENCES = {"FLAIR": 1, "T1": 0, "T1c": 2}  # the presented images' channels (pre-contrast, FLAIR, post-contrast)


@dataclass(frozen=True)
class PlaneGeometry:
    """Where voxels land on the drawn planes: ``shape`` (Z, R, C) voxels of ``spacing`` mm, drawn at ``mm_per_px``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    mm_per_px: float

    @classmethod
    def of(cls, shape: Sequence[int], spacing: Sequence[float], side: int = DISPLAY_SIDE) -> PlaneGeometry:
        extent = max(n * s for n, s in zip(shape, spacing))
        return cls(tuple(int(n) for n in shape), tuple(float(s) for s in spacing), extent / side)

    def axes(self, plane: str) -> tuple[int, int]:
        """The presented axes along a plane's (rows, columns)."""
        return {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}[plane]

    def size(self, plane: str) -> tuple[int, int]:
        """(height, width) of the drawn plane in px."""
        rows, cols = self.axes(plane)
        return tuple(max(1, round(self.shape[a] * self.spacing[a] / self.mm_per_px)) for a in (rows, cols))

    def _flipped(self, plane: str) -> bool:
        return plane != "axial"  # coronal and sagittal: superior (the last slice) at the top

    def section(self, volume: np.ndarray, plane: str, point: Sequence[int]) -> np.ndarray:
        """The 2D section of a (Z, R, C[, ...]) array through ``point`` (z, r, c), in drawing orientation."""
        z, r, c = (int(v) for v in point)
        out = {"axial": volume[z], "coronal": volume[:, r], "sagittal": volume[:, :, c]}[plane]
        return out[::-1] if self._flipped(plane) else out

    def to_pixel(self, plane: str, point: Sequence[int]) -> tuple[int, int]:
        """(x, y) px of the centre of voxel ``point`` on the drawn ``plane``."""
        rows, cols = self.axes(plane)
        height, width = self.size(plane)
        row = (self.shape[rows] - 1 - point[rows]) if self._flipped(plane) else point[rows]
        y = (row + 0.5) * height / self.shape[rows]
        x = (point[cols] + 0.5) * width / self.shape[cols]
        return int(x), int(y)

    def to_voxel(self, plane: str, x: float, y: float, point: Sequence[int]) -> tuple[int, int, int]:
        """The voxel under px (x, y) of the drawn ``plane``; the axis across the plane keeps ``point``'s index."""
        rows, cols = self.axes(plane)
        height, width = self.size(plane)
        row = min(max(int(y * self.shape[rows] / height), 0), self.shape[rows] - 1)
        col = min(max(int(x * self.shape[cols] / width), 0), self.shape[cols] - 1)
        if self._flipped(plane):
            row = self.shape[rows] - 1 - row
        out = [int(v) for v in point]
        out[rows], out[cols] = row, col
        return tuple(out)  # type: ignore[return-value]

    def clamp(self, point: Sequence[int]) -> tuple[int, int, int]:
        return tuple(min(max(int(v), 0), n - 1) for v, n in zip(point, self.shape))  # type: ignore[return-value]


@dataclass(frozen=True)
class Layers:
    """Presented (Z, R, C) bool masks drawn over the base; None draws nothing."""

    prediction: np.ndarray | None = None
    truth: np.ndarray | None = None
    uncertain: np.ndarray | None = None


def grayscale(images: np.ndarray, sequence: str = "FLAIR") -> np.ndarray:
    """(Z, R, C) uint8: one sequence's channel of the presented (Z, R, C, 3) images (FLAIR unless named)."""
    return images[..., SEQUENCES.get(sequence, SEQUENCES["FLAIR"])]


def _tint(out: np.ndarray, mask: np.ndarray, colour: Colour, alpha: float) -> None:
    if mask.any():
        out[mask] = tint_table(colour, alpha)[np.arange(3), out[mask]]


def _outline(out: np.ndarray, mask: np.ndarray, colour: Colour) -> None:
    if mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, contour_thickness(out.shape))


def _crosshair(out: np.ndarray, x: int, y: int) -> None:
    height, width = out.shape[:2]
    gap = CROSSHAIR_GAP
    out[y, : max(x - gap, 0)] = CROSSHAIR_COLOUR
    out[y, min(x + gap + 1, width) :] = CROSSHAIR_COLOUR
    out[: max(y - gap, 0), x] = CROSSHAIR_COLOUR
    out[min(y + gap + 1, height) :, x] = CROSSHAIR_COLOUR


def render_plane(base: np.ndarray, geometry: PlaneGeometry, plane: str, point: Sequence[int],
                 layers: Layers = Layers(), crosshair: bool = True) -> np.ndarray:
    """(H, W, 3) uint8: the grayscale ``base`` (Z, R, C) cut through ``point`` on ``plane``, square mm, with the
    uncertainty band (amber fill), prediction (red fill and outline), ground truth (blue outline) and cross-hair."""
    height, width = geometry.size(plane)
    gray = cv2.resize(np.ascontiguousarray(geometry.section(base, plane, point)), (width, height),
                      interpolation=cv2.INTER_LINEAR)
    out = np.repeat(gray[:, :, None], 3, axis=2)

    def drawn(mask: np.ndarray) -> np.ndarray:
        section = np.ascontiguousarray(geometry.section(mask, plane, point), dtype=np.uint8)
        return cv2.resize(section, (width, height), interpolation=cv2.INTER_NEAREST) > 0

    if layers.uncertain is not None:
        _tint(out, drawn(layers.uncertain), UNCERTAIN_COLOUR, UNCERTAIN_ALPHA)
    if layers.prediction is not None:
        predicted = drawn(layers.prediction)
        _tint(out, predicted, PREDICTION_COLOUR, FILL_ALPHA)
        _outline(out, predicted, PREDICTION_COLOUR)
    if layers.truth is not None:
        _outline(out, drawn(layers.truth), TRUTH_COLOUR)
    if crosshair:
        _crosshair(out, *geometry.to_pixel(plane, point))
    return out


def render_planes(base: np.ndarray, geometry: PlaneGeometry, point: Sequence[int],
                  layers: Layers = Layers()) -> dict[str, np.ndarray]:
    """The three planes through ``point``, by name."""
    return {plane: render_plane(base, geometry, plane, point, layers) for plane in PLANES}


def overlay_colours() -> tuple[tuple[Colour, float], ...]:
    """Every (colour, alpha) a plane draws over the grayscale base (alpha 1: drawn opaque)."""
    return ((UNCERTAIN_COLOUR, UNCERTAIN_ALPHA), (PREDICTION_COLOUR, FILL_ALPHA), (PREDICTION_COLOUR, 1.0),
            (TRUTH_COLOUR, 1.0), (CROSSHAIR_COLOUR, 1.0))


def explained_by_overlays(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels that are gray (R = G = B) or a gray value drawn over by the planes' colours, one or two
    layers deep (band under prediction). A pixel outside this set is false colour."""
    rgb = np.asarray(rgb, np.uint8)[..., :3]
    flat = rgb.reshape(-1, 3)
    ok = (flat[:, 0] == flat[:, 1]) & (flat[:, 1] == flat[:, 2])
    gray = np.arange(256, dtype=np.uint8)
    allowed = {tuple(c) for c, a in overlay_colours() if a == 1.0}
    tinted = np.repeat(gray[:, None], 3, axis=1)
    for colour, alpha in overlay_colours():
        if alpha < 1.0:
            allowed.update(map(tuple, tint_table(colour, alpha)[np.arange(3), tinted]))
    band = tint_table(UNCERTAIN_COLOUR, UNCERTAIN_ALPHA)[np.arange(3), tinted]
    allowed.update(map(tuple, tint_table(PREDICTION_COLOUR, FILL_ALPHA)[np.arange(3), band]))
    codes = {int(r) << 16 | int(g) << 8 | int(b) for r, g, b in allowed}
    pixel_codes = flat[:, 0].astype(np.int64) << 16 | flat[:, 1].astype(np.int64) << 8 | flat[:, 2]
    ok |= np.isin(pixel_codes, np.fromiter(codes, np.int64))
    return ok.reshape(rgb.shape[:2])


def gray_slice(image: np.ndarray, channel: int = SEQUENCES["FLAIR"]) -> np.ndarray:
    """(H, W, 3) uint8: one channel of an RGB-composite slice (FLAIR unless named) in all three, the grayscale
    base the slice tab draws its overlays on (the composite made the brain olive and T1c structures blue)."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.repeat(image[:, :, channel : channel + 1], 3, axis=2)
