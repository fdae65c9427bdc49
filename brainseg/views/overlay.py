"""Drawing predictions on slices (filled contours, probability heat maps, agreement with ground truth) and
the numbers shown next to them."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from brainseg.evaluation.metrics import dice_score, iou_score
from brainseg.inference.postprocess import binarize

Colour = tuple[int, int, int]
# The slices are RGB composites where FLAIR (green channel) makes the abnormality greenish: no green here.
PREDICTION_COLOUR: Colour = (255, 40, 40)
TRUTH_COLOUR: Colour = (30, 144, 255)
# Okabe-Ito yellow, vermillion and sky blue: distinguishable with the common colour-vision deficiencies.
TRUE_POSITIVE_COLOUR: Colour = (240, 228, 66)
FALSE_POSITIVE_COLOUR: Colour = (213, 94, 0)
FALSE_NEGATIVE_COLOUR: Colour = (86, 180, 233)
FILL_ALPHA = 0.35  # opacity of the prediction / ground-truth fill


def contour_thickness(shape: tuple[int, ...]) -> int:
    """1 px on a 256 px slice, growing with the image so contours stay visible."""
    return max(1, round(min(shape[:2]) / 256))


def tint_table(colour: Colour, alpha: float) -> np.ndarray:
    """3 x 256 lookup table: row ``c`` maps an 8-bit value ``v`` of channel ``c`` to
    ``round(v * (1 - alpha) + colour[c] * alpha)``, the semi-transparent fill of :func:`fill_and_contour`
    (the browser's live overlay uses the same table)."""
    values = np.arange(256, dtype=np.uint8)[None, :]
    tint = np.asarray(colour, dtype=np.float32)[:, None]
    return (values * (1 - alpha) + tint * alpha).round().astype(np.uint8)


def contour_offsets(thickness: int) -> list[tuple[int, int]]:
    """(dy, dx) offsets that widen a mask's 1-px boundary (its pixels with a 4-neighbour outside) into
    :func:`fill_and_contour`'s contour: identical to OpenCV's at 1 px, about 1 % of the drawn pixels apart
    at 2-6 px (measured on test masks scaled to 512-1536 px; OpenCV draws thick lines with round caps)."""
    if thickness <= 1:
        return [(0, 0)]
    if thickness == 2:
        kernel = np.ones((3, 3), np.uint8)
    else:
        size = 2 * ((thickness + 1) // 2) + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    centre = kernel.shape[0] // 2
    return [(int(y) - centre, int(x) - centre) for y, x in zip(*np.nonzero(kernel))]


def threshold_levels(proba: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """H x W uint8: how many of the increasing ``thresholds`` each probability reaches, so
    ``levels > k`` is exactly ``proba >= thresholds[k]`` (the same comparison as :func:`binarize`).
    Sent to the browser once per slice, it lets the page redraw any of these thresholds without the server."""
    if len(thresholds) > 255 or list(thresholds) != sorted(thresholds):
        raise ValueError("threshold_levels needs at most 255 increasing thresholds")
    proba = np.asarray(proba)
    levels = np.zeros(proba.shape, np.uint8)
    for threshold in thresholds:
        levels += binarize(proba, threshold)
    return levels


def fill_and_contour(image: np.ndarray, mask: np.ndarray, colour: Colour,
                     alpha: float = FILL_ALPHA) -> np.ndarray:
    """``image`` with ``mask`` filled semi-transparently in ``colour`` and outlined in the same colour."""
    out = np.array(image, dtype=np.uint8, copy=True)
    mask = np.asarray(mask, bool)
    if not mask.any():
        return out
    out[mask] = tint_table(colour, alpha)[np.arange(3), out[mask]]
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, colour, contour_thickness(out.shape))
    return out


def probability_heatmap(proba: np.ndarray, image: np.ndarray | None = None, alpha: float = 0.7) -> np.ndarray:
    """Probabilities in the inferno colour map (black 0 -> yellow 1), blended over the slice when given."""
    levels = (np.clip(np.asarray(proba, np.float32), 0, 1) * 255).round().astype(np.uint8)
    heat = cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO)[:, :, ::-1]
    if image is None:
        return np.ascontiguousarray(heat)
    gray = np.asarray(image, np.uint8).mean(axis=2, keepdims=True)
    return (heat * alpha + gray * (1 - alpha)).round().astype(np.uint8)


def agreement_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """True positives, false positives and false negatives painted in three colours."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    out = np.array(image, dtype=np.uint8, copy=True)
    for region, colour in (
        (pred & truth, TRUE_POSITIVE_COLOUR),
        (pred & ~truth, FALSE_POSITIVE_COLOUR),
        (~pred & truth, FALSE_NEGATIVE_COLOUR),
    ):
        if region.any():
            out[region] = (out[region] * (1 - alpha) + np.asarray(colour, np.float32) * alpha).round().astype(np.uint8)
    return out


def mask_image(mask: np.ndarray) -> np.ndarray:
    """A binary mask as H x W uint8, 255 = abnormality (what the dataset's ``_mask.tif`` files hold)."""
    return np.asarray(mask, bool).astype(np.uint8) * 255


@dataclass(frozen=True)
class MaskSummary:
    """Area of a predicted mask and, with ground truth, how well it matches."""

    area_px: int
    area_percent: float
    dice: float | None = None
    iou: float | None = None
    truth_area_px: int | None = None

    @classmethod
    def of(cls, pred: np.ndarray, truth: np.ndarray | None = None) -> "MaskSummary":
        pred = np.asarray(pred, bool)
        area = int(pred.sum())
        percent = 100.0 * area / pred.size
        if truth is None:
            return cls(area, percent)
        return cls(area, percent, dice_score(pred, truth), iou_score(pred, truth), int(np.asarray(truth, bool).sum()))

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "area_px": self.area_px,
            "area_percent": round(self.area_percent, 4),
            "dice": self.dice,
            "iou": self.iou,
            "truth_area_px": self.truth_area_px,
        }

    def markdown(self) -> str:
        """One or two lines for the UI."""
        text = f"**Tumor area:** {self.area_px:,} px ({self.area_percent:.2f} % of the slice)"
        if self.dice is not None:
            text += (
                f"  \n**Against ground truth** ({self.truth_area_px:,} px): "
                f"Dice {self.dice:.3f} · IoU {self.iou:.3f}"
            )
        return text


def slice_numbers(summary: MaskSummary, image: np.ndarray, proba: np.ndarray, threshold: float, normalize: bool,
                  notes: Sequence[str] = ()) -> dict[str, Any]:
    """The numbers shown for a slice at ``threshold``: the mask's ``summary``, the slice's size, the
    probability map's maximum and mean, the preprocessing and the notes about the input."""
    return summary.to_dict() | {
        "threshold": round(float(threshold), 4),
        "normalize": bool(normalize),
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "probability_max": round(float(proba.max()), 6),
        "probability_mean": round(float(proba.mean()), 6),
        "notes": list(notes),
    }


def truth_overlay(image: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The ground truth drawn on ``image`` (it does not depend on the threshold: draw it once per mask)."""
    return fill_and_contour(image, truth, TRUTH_COLOUR)


@dataclass(frozen=True)
class Views:
    """Everything drawn for one predicted mask: overlay, mask image, numbers and (with ground truth) agreement."""

    overlay: np.ndarray
    mask: np.ndarray
    summary: MaskSummary
    agreement: np.ndarray | None = None


def render_views(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> Views:
    """Draw prediction ``pred`` on ``image``; with ``truth`` also the agreement map and the Dice / IoU."""
    return Views(
        overlay=fill_and_contour(image, pred, PREDICTION_COLOUR),
        mask=mask_image(pred),
        summary=MaskSummary.of(pred, truth),
        agreement=None if truth is None else agreement_overlay(image, pred, truth),
    )
