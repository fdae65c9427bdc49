import dataclasses

import numpy as np
import pytest

from brainseg.evaluation.metrics import METRICS, METRICS_BY_KEY, Report, SliceCounts, dice_score, iou_score, summarize
from brainseg.inference.postprocess import binarize, remove_small_components


def square(top: int, left: int, size: int, shape=(10, 10)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_empty_prediction_and_empty_truth_score_one() -> None:
    empty = np.zeros((8, 8), bool)
    assert dice_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0


def test_disjoint_masks_score_zero() -> None:
    a, b = square(0, 0, 3), square(5, 5, 3)
    assert dice_score(a, b) == 0.0 and iou_score(a, b) == 0.0
    assert dice_score(a, np.zeros_like(a)) == 0.0


def test_partial_overlap() -> None:
    a, b = square(0, 0, 4), square(0, 2, 4)  # 16 px each, 8 px overlap
    assert dice_score(a, b) == pytest.approx(2 * 8 / 32)
    assert iou_score(a, b) == pytest.approx(8 / 24)
    counts = SliceCounts.of("p", a, b)
    assert counts.dice == pytest.approx(0.5) and counts.iou == pytest.approx(1 / 3)


def test_summary_averages_slices_and_pools_volumes() -> None:
    empty = np.zeros((10, 10), bool)
    counts = [
        SliceCounts.of("A", square(0, 0, 4), square(0, 2, 4)),  # dice 0.5
        SliceCounts.of("A", empty, empty),  # 1.0
        SliceCounts.of("A", square(0, 0, 2), empty),  # false positive on an empty slice: 0
        SliceCounts.of("B", square(0, 0, 4), square(0, 0, 4)),  # 1.0
    ]
    report = summarize(counts)
    assert report.slice_dice == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert report.tumor_slice_dice == pytest.approx(0.75)
    assert report.empty_fp_rate == pytest.approx(0.5)
    assert report.per_patient_dice["A"] == pytest.approx(2 * 8 / (16 + 16 + 4))
    assert report.volume_dice == pytest.approx((2 * 8 / 36 + 1) / 2)
    assert (report.n_slices, report.n_tumor_slices, report.n_patients) == (4, 2, 2)


def test_small_components_are_removed_large_kept() -> None:
    mask = square(0, 0, 2, (20, 20)) | square(10, 10, 5, (20, 20))
    kept = remove_small_components(mask, 10)
    assert kept.sum() == 25 and not kept[0, 0]
    proba = mask.astype(np.float32) * 0.8
    assert binarize(proba, 0.5, 0).sum() == 29 and binarize(proba, 0.9).sum() == 0


def test_the_metric_table_names_every_rate_of_a_report_once() -> None:
    rates = [f.name for f in dataclasses.fields(Report) if f.type == "float"]
    assert [m.key for m in METRICS] == rates
    assert len({m.label for m in METRICS}) == len({m.short for m in METRICS}) == len(METRICS)
    assert METRICS_BY_KEY["empty_fp_rate"].label == "false-positive rate on tumor-free slices"
    assert METRICS_BY_KEY["empty_fp_rate"].title == "False-positive rate on tumor-free slices"
    assert METRICS_BY_KEY["volume_dice"].title == "Volume Dice (mean over patients)"
