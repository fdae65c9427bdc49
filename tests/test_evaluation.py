"""Post-processing search: it returns the grid point with the best slice Dice + volume Dice."""
import itertools

import numpy as np
import torch

from brainseg import Segmenter
from brainseg.config import ModelConfig
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


class _FixedConfidence(torch.nn.Module):
    """Probability 0.2 where the FLAIR channel is above the slice mean, ~0 elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.logit(torch.tensor(0.2))
        return torch.where(x[:, 1:2] > 0, low, torch.tensor(-12.0))


def test_default_grid_finds_an_optimum_below_0_3() -> None:
    images = np.zeros((6, 256, 256, 3), np.uint8)
    masks = np.zeros((6, 256, 256), bool)
    for i in range(4):  # four slices with a bright square "lesion", two empty (constant) slices
        masks[i, 40 + 10 * i : 120 + 10 * i, 60:150] = True
        images[i][masks[i]] = 200
    patients = ["A", "A", "A", "B", "B", "B"]
    segmenter = Segmenter(_FixedConfidence(), ModelConfig(base_channels=4, depth=2), device="cpu")

    tuned, report = tune_postprocessing(segmenter, images, masks, patients, flip_tta_options=(False,))

    assert tuned.threshold <= 0.2  # at 0.3 (the old lowest grid point) nothing would be found
    assert report.slice_dice == 1.0 and report.volume_dice == 1.0
    at_03 = summarize(count_slices(segmenter.predict_proba_batch(images), masks, patients, 0.3, 0))
    assert at_03.tumor_slice_dice == 0.0
