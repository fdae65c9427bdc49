"""Post-processing search: it returns the grid point with the best slice Dice + volume Dice."""
import itertools

import numpy as np

from brainseg import Segmenter
from brainseg.data import load_slices, scan_dataset
from brainseg.evaluation import count_slices, evaluate_arrays, tune_postprocessing
from brainseg.metrics import summarize

THRESHOLDS = (0.3, 0.5, 0.7)
MIN_SIZES = (0, 40, 320)


def every_other_slice_of_two_patients(lgg_test_dir):
    records = [r for p in scan_dataset(lgg_test_dir)[:2] for r in p.slices[::2]]
    images, masks = load_slices(records)
    return images, masks, [r.patient for r in records]


def test_tuning_without_tta_picks_the_best_grid_point(lgg_test_dir) -> None:
    images, masks, patients = every_other_slice_of_two_patients(lgg_test_dir)
    segmenter = Segmenter.from_pretrained()
    tuned, report = tune_postprocessing(
        segmenter, images, masks, patients, thresholds=THRESHOLDS, min_sizes=MIN_SIZES, flip_tta_options=(False,)
    )
    assert tuned.flip_tta is False
    assert tuned.architecture() == segmenter.config.architecture() and tuned.extra == segmenter.config.extra

    probas = Segmenter(segmenter.model, tuned).predict_proba_batch(images)  # single pass, as tuned
    reports = {
        (t, m): summarize(count_slices(probas, masks, patients, t, m)) for t, m in itertools.product(THRESHOLDS, MIN_SIZES)
    }
    scores = {key: r.slice_dice + r.volume_dice for key, r in reports.items()}
    assert len(set(np.round(list(scores.values()), 6))) > 1  # the grid does matter on these slices
    assert report.slice_dice + report.volume_dice == max(scores.values())
    assert scores[(tuned.threshold, tuned.min_component_px)] == max(scores.values())
    # the returned report is what the chosen config gives when evaluated from scratch
    again = evaluate_arrays(Segmenter(segmenter.model, tuned), images, masks, patients)
    assert again.slice_dice == report.slice_dice and again.volume_dice == report.volume_dice


def test_tuning_can_be_forced_to_use_tta(lgg_test_dir) -> None:
    images, masks, patients = every_other_slice_of_two_patients(lgg_test_dir)
    tuned, _ = tune_postprocessing(
        Segmenter.from_pretrained(), images[:20], masks[:20], patients[:20],
        thresholds=(0.5,), min_sizes=(0,), flip_tta_options=(True,),
    )
    assert tuned.flip_tta is True and tuned.threshold == 0.5 and tuned.min_component_px == 0
