"""Post-processing search: it returns the grid point with the best slice Dice + volume Dice."""
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import link_patient

from brainseg import Segmenter
from brainseg.config import ModelConfig
from brainseg.evaluation.metrics import METRICS, summarize
from brainseg.evaluation.scoring import (
    count_slices,
    evaluate_arrays,
    evaluate_model,
    select_slices,
    tune_postprocessing,
)
from brainseg.io.dataset import load_slices, make_split, scan_dataset
from brainseg.models.unet import build_model

THRESHOLDS = (0.3, 0.5, 0.7)
MIN_SIZES = (0, 40, 320)


def every_other_slice_of_two_patients(lgg_test_dir):
    records = [r for p in scan_dataset(lgg_test_dir)[:2] for r in p.slices[::2]]
    images, masks = load_slices(records)
    return images, masks, [r.patient for r in records]


@pytest.mark.slow
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
        (t, m): summarize(count_slices(probas, masks, patients, t, m))
        for t, m in itertools.product(THRESHOLDS, MIN_SIZES)
    }
    scores = {key: r.slice_dice + r.volume_dice for key, r in reports.items()}
    assert len(set(np.round(list(scores.values()), 6))) > 1  # the grid does matter on these slices
    assert report.slice_dice + report.volume_dice == max(scores.values())
    assert scores[(tuned.threshold, tuned.min_component_px)] == max(scores.values())
    # the returned report is what the chosen config gives when evaluated from scratch
    again = evaluate_arrays(Segmenter(segmenter.model, tuned), images, masks, patients)
    assert again.slice_dice == report.slice_dice and again.volume_dice == report.volume_dice


@pytest.mark.slow
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


HELD_OUT = "TCGA_CS_4944_20010208"


def dataset_with_stand_ins(lgg_test_dir, root):
    """One held-out patient under its own name and 20 stand-in patients with two real slices each (links)."""
    root.mkdir()
    (root / HELD_OUT).symlink_to(lgg_test_dir / HELD_OUT, target_is_directory=True)
    for i in range(20):  # slice 20 has a lesion, 1..16 have none
        link_patient(lgg_test_dir / "TCGA_DU_5871_19941206", root / f"TCGA_XX_{i:04d}_20000101", [i % 16 + 1, 20])
    return root


@pytest.mark.slow
def test_evaluate_model_scores_the_patients_its_split_seed_picks(lgg_test_dir, tmp_path) -> None:
    data = dataset_with_stand_ins(lgg_test_dir, tmp_path / "data")
    segmenter = Segmenter.from_pretrained()
    result = evaluate_model(segmenter, data, "val", split_seed=7)
    val = make_split(data, seed=7).val
    assert set(result["per_patient_dice"]) == {r.patient for r in val} and result["n_slices"] == len(val) == 4
    assert (result["split"], result["split_seed"], result["val_fraction"]) == ("val", 7, 0.1)
    images, masks = load_slices(list(val))
    expected = evaluate_arrays(segmenter, images, masks, [r.patient for r in val])  # batched, not one at a time
    for metric in METRICS:
        assert result[metric.key] == pytest.approx(getattr(expected, metric.key), abs=1e-3), metric.key
    assert result["model_config"] == segmenter.config.to_dict() and result["ms_per_slice"] > 0
    assert set(evaluate_model(segmenter, data, "val", split_seed=8)["per_patient_dice"]) != set(
        result["per_patient_dice"])
    assert {r.patient for r in select_slices(data, "test")} == {HELD_OUT}
    assert len(select_slices(data, "all")) == 20 + 2 * 20
    with pytest.raises(ValueError, match="unknown split 'validation': use one of all, test, val, train"):
        select_slices(data, "validation")


@pytest.mark.slow
@pytest.mark.e2e
def test_evaluate_cli_takes_the_split_seed_and_writes_the_same_table(lgg_test_dir, tmp_path) -> None:
    data = dataset_with_stand_ins(lgg_test_dir, tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-m", "brainseg.cli.evaluate", "--data-dir", str(data), "--split", "val", "--split-seed", "5",
         "--json", str(tmp_path / "e.json"), "--markdown", str(tmp_path / "e.md")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "e.json").read_text())
    assert set(result["per_patient_dice"]) == make_split(data, seed=5).patients("val")
    assert result["split_seed"] == 5
    table = (tmp_path / "e.md").read_text()
    assert table in done.stdout
    lines = table.splitlines()
    assert lines[:2] == ["| metric | value |", "|---|---|"] and len(lines) == 2 + len(METRICS) + 2
    assert f"| Dice per slice (empty/empty = 1) | {result['slice_dice']:.4f} |" in lines
    assert f"| false-positive rate on tumor-free slices | {result['empty_fp_rate']:.4f} |" in lines
    assert f"| slices / tumor slices / patients | 4 / {result['n_tumor_slices']} / 2 |" in lines


@pytest.mark.slow  # ~20 s of CPU: every input form through tuning
def test_tuning_on_every_input_form_picks_what_the_forms_search_picks() -> None:
    """``forms=SELECTION_FORMS``: one threshold for home and outside slices, the forms search's choice; the report
    is the slices as they are at that choice."""
    from brainseg.evaluation.forms import SELECTION_FORMS, present
    from brainseg.evaluation.scoring import search_postprocessing

    rng = np.random.default_rng(0)
    images = rng.integers(20, 90, (6, 64, 64, 3), dtype=np.uint8)
    masks = np.zeros((6, 64, 64), bool)
    for i in range(4):
        masks[i, 10 + 4 * i : 40 + 4 * i, 20:44] = True
        images[i][masks[i]] = 160 + 20 * (i % 2)
    patients = ["A", "A", "A", "B", "B", "B"]
    torch.manual_seed(0)
    config = ModelConfig(base_channels=4, depth=2)
    segmenter = Segmenter(build_model(config), config, device="cpu")
    grid = dict(thresholds=(0.3, 0.45, 0.5, 0.55, 0.7), min_sizes=(0, 20))

    tuned, report = tune_postprocessing(segmenter, images, masks, patients, flip_tta_options=(False,),
                                        forms=SELECTION_FORMS, **grid)
    presented = {form: present(form, images, masks) for form in SELECTION_FORMS}
    probas = {form: segmenter.predict_proba_batch(x) for form, (x, _) in presented.items()}
    choice = search_postprocessing(probas, {f: m for f, (_, m) in presented.items()}, patients, **grid)
    assert (tuned.threshold, tuned.min_component_px) == (choice.threshold, choice.min_component_px)
    assert report == choice.reports["as_is"]
