"""Choosing among models and probability means on validation patients: the grid search and ``brainseg choose``."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from brainseg import Segmenter
from brainseg.evaluation.forms import SELECTION_FORMS
from brainseg.evaluation.metrics import summarize
from brainseg.evaluation.scoring import count_slices, evaluate_forms, forms_score, search_postprocessing
from brainseg.evaluation.selection import parse_candidate


def blobs(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 32, 32) probabilities: a few soft squares of random size and height on noise."""
    probas = rng.uniform(0, 0.3, (n, 32, 32))
    for proba in probas:
        for _ in range(rng.integers(0, 4)):
            r, c, size = *rng.integers(0, 28, 2), rng.integers(1, 9)
            proba[r:r + size, c:c + size] = rng.uniform(0.35, 1.0)
    return probas


def test_search_postprocessing_finds_the_grid_point_that_brute_force_finds_over_several_forms() -> None:
    rng = np.random.default_rng(3)
    patients = [f"p{i % 4}" for i in range(40)]
    probas = {form: blobs(rng, 40) for form in ("a", "b")}
    masks = {form: blobs(rng, 40) > 0.5 for form in ("a", "b")}
    thresholds, min_sizes = (0.3, 0.5, 0.7, 0.9), (0, 2, 10, 30)
    choice = search_postprocessing(probas, masks, patients, thresholds, min_sizes)

    def brute(threshold: float, min_px: int) -> float:
        return forms_score({form: summarize(count_slices(probas[form], masks[form], patients, threshold, min_px))
                            for form in probas})

    scores = {(t, m): brute(t, m) for t in thresholds for m in min_sizes}
    assert choice.score == pytest.approx(max(scores.values()), abs=1e-12)
    assert scores[(choice.threshold, choice.min_component_px)] == pytest.approx(choice.score, abs=1e-12)
    assert len(set(np.round(list(scores.values()), 6))) > 4, "the grid points must differ for this to test anything"
    for form in probas:  # the reports are those of binarize() at the chosen point
        expected = summarize(count_slices(probas[form], masks[form], patients, choice.threshold,
                                          choice.min_component_px))
        assert choice.reports[form] == expected


def test_parse_candidate_splits_members_and_refuses_empty_or_repeated_ones() -> None:
    assert parse_candidate("unet-generalist + runs/x/best") == ("unet-generalist", "runs/x/best")
    assert parse_candidate("unet") == ("unet",)
    for bad, reason in (("unet+", "empty member"), ("unet+unet", "twice")):
        with pytest.raises(ValueError, match=reason):
            parse_candidate(bad)


@pytest.mark.slow  # ~33 s of CPU: models scored on every form
def test_choose_cli_ranks_models_and_means_on_validation_forms(lgg_test_dir, tmp_path, capsys) -> None:
    from conftest import link_standin_patients

    from brainseg.cli.choose import main
    from brainseg.io.dataset import load_slices, make_split

    data = tmp_path / "data"
    link_standin_patients(lgg_test_dir, data, [range(14, 20), range(20, 26), range(26, 32), range(10, 16)])
    out = tmp_path / "choice.json"
    args = ["--data-dir", str(data), "--val-fraction", "0.5", "--backend", "torch", "--json", str(out),
            "--markdown", str(tmp_path / "table.md"),
            "--candidate", "unet", "--candidate", "unet-generalist", "--candidate", "unet+unet-generalist"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table == (tmp_path / "table.md").read_text()
    assert table.count("\n| ") == 3 and "| unet + unet-generalist |" in table
    results = json.loads(out.read_text())["candidates"]
    scores = [r["forms_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and f"**{scores[0]:.4f}**" in table
    assert all(list(r["forms"]) == list(SELECTION_FORMS) for r in results)

    # a single model's row is what evaluate_forms measures with the chosen post-processing on the same slices
    val = make_split(data, "patient", 0.5, 2026).val
    images, masks = load_slices(list(val))
    patients = [r.patient for r in val]
    unet = Segmenter.from_pretrained("unet", device="cpu", backend="torch")
    row = next(r for r in results if r["members"] == ["unet"])
    tuned = Segmenter(unet.model, dataclasses.replace(unet.config, threshold=row["threshold"],
                                                      min_component_px=row["min_component_px"]), device="cpu")
    reports = evaluate_forms(tuned, images, masks, patients)
    assert forms_score(reports) == pytest.approx(row["forms_score"], abs=2e-3)  # probabilities kept in float16
    # the mean candidate averages the two models' probabilities (each with its own flip TTA)
    robust = Segmenter.from_pretrained("unet-generalist", device="cpu", backend="torch")
    mean = (unet.predict_proba_batch(images) + robust.predict_proba_batch(images)) / 2
    pair = next(r for r in results if r["members"] == ["unet", "unet-generalist"])
    as_is = summarize(count_slices(mean, masks, patients, pair["threshold"], pair["min_component_px"]))
    assert as_is.volume_dice == pytest.approx(pair["forms"]["as_is"]["volume_dice"], abs=2e-3)

    assert main(["--data-dir", str(data), "--candidate", "unet+"]) == 2
    assert "empty member" in capsys.readouterr().err
