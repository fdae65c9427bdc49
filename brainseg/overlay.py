"""Drawing predictions on slices: filled contours, probability heat maps, agreement with ground truth."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .metrics import dice_score, iou_score

Colour = tuple[int, int, int]
# The slices are RGB composites where FLAIR (green channel) makes the abnormality greenish: no green here.
PREDICTION_COLOUR: Colour = (255, 40, 40)
TRUTH_COLOUR: Colour = (30, 144, 255)
# Okabe-Ito yellow, vermillion and sky blue: distinguishable with the common colour-vision deficiencies.
TRUE_POSITIVE_COLOUR: Colour = (240, 228, 66)
FALSE_POSITIVE_COLOUR: Colour = (213, 94, 0)
FALSE_NEGATIVE_COLOUR: Colour = (86, 180, 233)


def contour_thickness(shape: tuple[int, ...]) -> int:
    """1 px on a 256 px slice, growing with the image so contours stay visible."""
    return max(1, round(min(shape[:2]) / 256))


def fill_and_contour(image: np.ndarray, mask: np.ndarray, colour: Colour, alpha: float = 0.35) -> np.ndarray:
    """``image`` with ``mask`` filled semi-transparently in ``colour`` and outlined in the same colour."""
    out = np.array(image, dtype=np.uint8, copy=True)
    mask = np.asarray(mask, bool)
    if not mask.any():
        return out
    tint = np.asarray(colour, dtype=np.float32)
    out[mask] = (out[mask] * (1 - alpha) + tint * alpha).round().astype(np.uint8)
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


@dataclass(frozen=True)
class Views:
    """Everything the demo draws for one mask: overlay, mask image, agreement and numbers."""

    overlay: np.ndarray
    mask: np.ndarray
    summary: MaskSummary
    truth_overlay: np.ndarray | None = None
    agreement: np.ndarray | None = None


def render_views(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> Views:
    """Draw prediction ``pred`` on ``image``; with ``truth`` also the ground truth and the agreement map."""
    overlay = fill_and_contour(image, pred, PREDICTION_COLOUR)
    summary = MaskSummary.of(pred, truth)
    if truth is None:
        return Views(overlay, mask_image(pred), summary)
    return Views(
        overlay,
        mask_image(pred),
        summary,
        truth_overlay=fill_and_contour(image, truth, TRUTH_COLOUR),
        agreement=agreement_overlay(image, pred, truth),
    )
