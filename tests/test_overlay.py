"""Drawing: overlays change only what they should, agreement colours, heat map, numbers."""
from __future__ import annotations

import cv2
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from brainseg.evaluation.metrics import dice_score, iou_score
from brainseg.views.overlay import (
    FALSE_NEGATIVE_COLOUR,
    FALSE_POSITIVE_COLOUR,
    PREDICTION_COLOUR,
    TRUE_POSITIVE_COLOUR,
    TRUTH_COLOUR,
    MaskSummary,
    agreement_overlay,
    contour_thickness,
    fill_and_contour,
    mask_image,
    probability_heatmap,
    render_views,
    slice_numbers,
    truth_overlay,
)

masks = arrays(bool, st.tuples(st.integers(8, 48), st.integers(8, 48)))


def gray_slice(shape: tuple[int, int], value: int = 90) -> np.ndarray:
    return np.full((*shape, 3), value, np.uint8)


def disc(shape: tuple[int, int] = (64, 64), radius: int = 12, centre: tuple[int, int] = (32, 32)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@settings(max_examples=40, deadline=None)
@given(masks)
def test_overlay_only_touches_the_mask_and_its_outline(mask: np.ndarray) -> None:
    image = gray_slice(mask.shape)
    out = fill_and_contour(image, mask, PREDICTION_COLOUR)
    assert out.shape == image.shape and out.dtype == np.uint8
    reach = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert np.array_equal(out[~reach], image[~reach])
    assert (out[mask] != image[mask]).any(axis=1).all() if mask.any() else np.array_equal(out, image)


def test_overlay_fills_semi_transparently_and_outlines() -> None:
    mask = disc()
    out = fill_and_contour(gray_slice(mask.shape), mask, (255, 0, 0), alpha=0.5)
    centre = out[32, 32]
    assert centre[0] > 90 and centre[1] < 90, "the interior is tinted, the slice still shows through"
    assert tuple(out[32, 32 - 12]) == (255, 0, 0), "the boundary is drawn in the full colour"
    assert tuple(out[0, 0]) == (90, 90, 90)


def test_contours_thicken_with_image_size() -> None:
    assert contour_thickness((256, 256)) == 1
    assert contour_thickness((1024, 2048, 3)) == 4


def test_agreement_colours_true_false_positives_and_negatives() -> None:
    pred = np.zeros((10, 10), bool)
    truth = np.zeros((10, 10), bool)
    pred[0, 0] = truth[0, 0] = True
    pred[1, 1] = True
    truth[2, 2] = True
    out = agreement_overlay(gray_slice((10, 10), 0), pred, truth, alpha=1.0)
    assert tuple(out[0, 0]) == TRUE_POSITIVE_COLOUR
    assert tuple(out[1, 1]) == FALSE_POSITIVE_COLOUR
    assert tuple(out[2, 2]) == FALSE_NEGATIVE_COLOUR
    assert tuple(out[5, 5]) == (0, 0, 0)
    assert len({TRUE_POSITIVE_COLOUR, FALSE_POSITIVE_COLOUR, FALSE_NEGATIVE_COLOUR}) == 3


def test_heatmap_gets_brighter_with_probability() -> None:
    ramp = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (4, 1))
    heat = probability_heatmap(ramp)
    assert heat.shape == (4, 50, 3) and heat.dtype == np.uint8
    brightness = heat[0].astype(int).sum(axis=1)
    assert brightness[0] < brightness[25] < brightness[-1]
    blended = probability_heatmap(ramp, gray_slice((4, 50), 200))
    assert blended.shape == (4, 50, 3)
    assert not np.array_equal(blended, heat)


@settings(max_examples=40, deadline=None)
@given(masks, st.randoms(use_true_random=False))
def test_summary_matches_brainseg_metrics(pred: np.ndarray, rnd) -> None:
    truth = np.roll(pred, rnd.randint(0, 3), axis=0) | (np.arange(pred.size).reshape(pred.shape) % 7 == 0)
    summary = MaskSummary.of(pred, truth)
    assert summary.area_px == int(pred.sum())
    assert summary.area_percent == 100 * pred.sum() / pred.size
    assert summary.dice == dice_score(pred, truth)
    assert summary.iou == iou_score(pred, truth)
    assert summary.truth_area_px == int(truth.sum())
    assert f"Dice {summary.dice:.3f}" in summary.markdown()


def test_summary_without_truth() -> None:
    summary = MaskSummary.of(disc())
    assert summary.dice is None and summary.iou is None
    assert summary.to_dict()["dice"] is None
    assert "Dice" not in summary.markdown()
    assert f"{summary.area_px:,} px" in summary.markdown()


def test_mask_image_is_white_on_black() -> None:
    image = mask_image(disc())
    assert image.dtype == np.uint8 and set(np.unique(image)) == {0, 255}
    assert np.array_equal(image == 255, disc())


def test_render_views_with_and_without_truth() -> None:
    image = gray_slice((64, 64))
    plain = render_views(image, disc())
    assert plain.agreement is None and plain.summary.dice is None
    assert np.array_equal(plain.mask == 255, disc())
    assert np.array_equal(plain.overlay, fill_and_contour(image, disc(), PREDICTION_COLOUR))
    truth = disc(centre=(30, 34))
    full = render_views(image, disc(), truth)
    assert np.array_equal(full.agreement, agreement_overlay(image, disc(), truth))
    assert full.summary.dice == dice_score(disc(), truth)


def test_truth_overlay_is_the_truth_in_its_colour() -> None:
    image, truth = gray_slice((64, 64)), disc(centre=(30, 34))
    drawn = truth_overlay(image, truth)
    assert np.array_equal(drawn, fill_and_contour(image, truth, TRUTH_COLOUR))
    assert not np.array_equal(drawn[truth], image[truth]) and np.array_equal(drawn[0, 0], image[0, 0])


def test_slice_numbers_describe_the_mask_the_slice_and_the_map() -> None:
    image = gray_slice((48, 64))
    proba = np.linspace(0, 0.8, 48 * 64, dtype=np.float32).reshape(48, 64)
    pred, truth = proba > 0.5, proba > 0.6
    numbers = slice_numbers(MaskSummary.of(pred, truth), image, proba, 0.123456, True, ["a note"])
    assert numbers["area_px"] == int(pred.sum()) and numbers["dice"] == dice_score(pred, truth)
    assert (numbers["width"], numbers["height"]) == (64, 48)
    assert numbers["threshold"] == 0.1235 and numbers["normalize"] is True and numbers["notes"] == ["a note"]
    assert numbers["probability_max"] == 0.8
    assert numbers["probability_mean"] == round(float(proba.mean()), 6)
