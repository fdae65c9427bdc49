"""The input forms a model is chosen on: what each does to real held-out slices, and the forms score."""
from __future__ import annotations

import numpy as np
import pytest

from brainseg import Segmenter
from brainseg.evaluation.forms import FLAIR, FORMS, REPORT_FORMS, SELECTION_FORMS, present
from brainseg.evaluation.scoring import evaluate_forms, forms_score
from brainseg.io.dataset import load_slices, scan_dataset


@pytest.fixture(scope="module")
def slices(lgg_test_dir):
    """Eight tumor slices and four without, from the held-out patients."""
    records = [record for patient in scan_dataset(lgg_test_dir) for record in patient.slices]
    images, masks = load_slices(records)
    tumor = np.flatnonzero(masks.any(axis=(1, 2)))[::12][:8]
    empty = np.flatnonzero(~masks.any(axis=(1, 2)))[::40][:4]
    chosen = np.concatenate([tumor, empty])
    return images[chosen], masks[chosen], [records[i].patient for i in chosen]


def test_every_form_keeps_shapes_and_types(slices) -> None:
    images, masks, _ = slices
    for form in REPORT_FORMS:
        out_images, out_masks = present(form, images, masks)
        assert out_images.shape == images.shape and out_images.dtype == np.uint8, form
        assert out_masks.shape == masks.shape and out_masks.dtype == bool, form
    assert set(SELECTION_FORMS) <= set(REPORT_FORMS) == set(FORMS)


def test_channel_forms_copy_flair(slices) -> None:
    images, masks, _ = slices
    flair_only, same_masks = present("flair_only", images, masks)
    assert (flair_only == images[..., FLAIR : FLAIR + 1]).all() and same_masks is masks
    flair_t1c, _ = present("flair_t1c", images, masks)
    assert (flair_t1c[..., 0] == images[..., FLAIR]).all() and (flair_t1c[..., 1:] == images[..., 1:]).all()


def test_half_frame_shrinks_image_and_mask_together(slices) -> None:
    images, masks, _ = slices
    small_images, small_masks = present("half_frame", images, masks)
    assert small_masks.sum() == pytest.approx(masks.sum() / 4, rel=0.1)
    assert not small_images[:, :64].any() and not small_images[:, -64:].any()  # black frame around
    lesion = small_masks[0]
    flair = small_images[0][..., FLAIR]
    assert flair[lesion].mean() > flair[~lesion & (flair > 0)].mean()  # the FLAIR-bright lesion is still under its mask


def test_skull_stripped_blanks_outside_a_brain_that_keeps_the_tumor(slices) -> None:
    images, masks, _ = slices
    stripped, stripped_masks = present("skull_stripped", images, masks)
    blank = (stripped == 0).all(axis=-1)
    assert blank.mean() > (images == 0).all(axis=-1).mean() + 0.05  # scalp and skull went
    assert stripped_masks.sum() >= 0.95 * masks.sum()  # the tumor stayed
    assert not (stripped_masks & blank).any()


def test_rotated_90_turns_image_and_mask_alike(slices) -> None:
    images, masks, _ = slices
    turned, turned_masks = present("rotated_90", images, masks)
    assert (np.rot90(turned, -1, axes=(1, 2)) == images).all()
    assert (np.rot90(turned_masks, -1, axes=(1, 2)) == masks).all()


def test_unknown_form_is_refused_with_the_known_ones(slices) -> None:
    images, masks, _ = slices
    with pytest.raises(ValueError, match="flair_only"):
        present("t2_only", images, masks)


def test_forms_score_is_the_mean_of_slice_and_volume_dice_over_forms(slices) -> None:
    images, masks, patients = slices
    segmenter = Segmenter.from_pretrained(None, backend="torch")
    reports = evaluate_forms(segmenter, images, masks, patients, ("as_is", "flair_only"))
    assert list(reports) == ["as_is", "flair_only"]
    expected = np.mean([(r.slice_dice + r.volume_dice) / 2 for r in reports.values()])
    assert forms_score(reports) == pytest.approx(expected)
    assert reports["as_is"].slice_dice > 0.8  # the bundled model on its home slices
    assert reports["as_is"].slice_dice != reports["flair_only"].slice_dice


def test_forms_table_takes_each_runs_best_epoch_by_forms_score(tmp_path) -> None:
    from brainseg.cli.forms_table import main
    from brainseg.training.checkpoints import LOG_FILE, write_log
    from brainseg.training.config import TrainConfig
    from brainseg.training.validation import log_fields

    cfg = TrainConfig(data_dir="d", out_dir=str(tmp_path), select_on="forms")
    run_dir = tmp_path / "run-a"
    run_dir.mkdir()
    rows = []
    for epoch, base in ((1, 0.5), (2, 0.7), (3, 0.6)):
        row = {name: 0 for name in log_fields(cfg)}
        row.update({f"val_{form}_volume_dice": base + 0.01 * i for i, form in enumerate(SELECTION_FORMS)})
        row.update(epoch=epoch, val_forms_score=base)
        rows.append(row)
    write_log(run_dir / LOG_FILE, rows, log_fields(cfg))
    out = tmp_path / "table.md"
    assert main([str(run_dir), "--markdown", str(out)]) == 0
    table_row = out.read_text().splitlines()[2].split(" | ")
    assert table_row[1] == "2"  # the epoch with the best forms score
    assert table_row[2:7] == ["0.700", "0.710", "0.720", "0.730", "0.740"]
    assert main([str(tmp_path / "missing")]) == 2


@pytest.mark.slow  # ~26 s of CPU: the evaluate CLI over every form
def test_evaluate_cli_scores_every_form_into_json(lgg_test_dir, tmp_path) -> None:
    import json

    from conftest import link_standin_patients

    from brainseg.cli.evaluate import main

    data = tmp_path / "data"
    link_standin_patients(lgg_test_dir, data, [range(12, 26)])
    out = tmp_path / "m.json"
    assert main(["--test-dir", str(data), "--forms", "--backend", "torch", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["forms"]) == list(REPORT_FORMS)
    assert result["forms"]["as_is"]["slice_dice"] == pytest.approx(result["slice_dice"])
    selection = [result["forms"][form] for form in SELECTION_FORMS]
    expected = np.mean([(r["slice_dice"] + r["volume_dice"]) / 2 for r in selection])
    assert result["forms_score"] == pytest.approx(expected)
