"""`brainseg publish --dry-run` with --forms and --external: the numbers reach evaluation.json, config.json
and the card, and nothing written names a folder of this machine."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STANDIN_SOURCE, link_patient
from volume_synth import affine_of, save_nifti

from brainseg.cli.publish import main as publish_main
from brainseg.config import ModelConfig
from brainseg.evaluation.external import ALL_CHANNELS, FLAIR_ONLY
from brainseg.evaluation.forms import REPORT_FORMS, SELECTION_FORMS
from brainseg.evaluation.metrics import Report
from brainseg.evaluation.scoring import forms_score
from brainseg.io.weights import save_model
from brainseg.models.unet import build_model
from brainseg.training.config import TrainConfig

SLICES = range(17, 23)  # six slices of a held-out patient, with lesion
SHAPE = (48, 48, 12)


def tiny_run(tmp_path: Path) -> Path:
    """RUN/best (a 4-channel, depth-2 U-Net) with RUN/train_config.json recording the generalization recipe."""
    run = tmp_path / "run"
    torch.manual_seed(0)
    config = ModelConfig(base_channels=4, depth=2, extra={"best_epoch": 1})
    save_model(build_model(config), config, run / "best")
    cfg = TrainConfig(data_dir=str(tmp_path / "kaggle_3m"), out_dir=str(run), base_channels=4, depth=2, epochs=1,
                      augment="affine_gamma", scale_min=0.5, scale_max=1.4, strip_prob=0.5, acquisition=True,
                      select_on="forms")
    (run / "train_config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "world_size": 1}))
    return run / "best"


def external_subject(folder: Path) -> None:
    """A small head-like volume with a bright FLAIR blob labelled 2, BraTS-style file names, no T1 / T1c."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    head = ((x - 24) / 20) ** 2 + ((y - 24) / 22) ** 2 + ((z - 6) / 7) ** 2 < 1
    blob = ((x - 30) / 6) ** 2 + ((y - 26) / 5) ** 2 + ((z - 6) / 3) ** 2 < 1
    affine = affine_of(np.diag([4.0, 4.0, 5.0]))
    folder.mkdir(parents=True)
    save_nifti((np.where(head, 100.0, 0.0) + np.where(blob, 140.0, 0.0)).astype(np.float32), affine,
               folder / "Flair_subtrMeanDivStd.nii.gz")
    save_nifti(np.where(blob, 2, 0).astype(np.uint8), affine, folder / "OTMultiClass.nii.gz")


def test_dry_run_with_forms_and_external_puts_their_numbers_in_every_published_file(lgg_test_dir, tmp_path, capsys):
    best = tiny_run(tmp_path)
    data = tmp_path / "lgg-held-out"
    link_patient(lgg_test_dir / STANDIN_SOURCE, data / STANDIN_SOURCE, SLICES)
    external_subject(tmp_path / "outside-set" / "subject_1")
    out = tmp_path / "dry"
    status = publish_main(["--repo-id", "org/robust", "--model", str(best), "--test-dir", str(data), "--forms",
                           "--external", str(tmp_path / "outside-set"), "--dry-run", str(out)])
    assert status == 0, capsys.readouterr().err
    assert "external subject_1: Dice all channels" in capsys.readouterr().err

    evaluation = json.loads((out / "evaluation.json").read_text())
    assert list(evaluation["forms"]) == list(REPORT_FORMS)
    reports = {form: Report(**evaluation["forms"][form]) for form in SELECTION_FORMS}
    assert evaluation["forms_score"] == pytest.approx(forms_score(reports), abs=1e-12)
    for report in evaluation["forms"].values():
        assert (report["n_slices"], report["n_patients"]) == (len(SLICES), 1)
        assert list(report["per_patient_dice"]) == [STANDIN_SOURCE]
    assert evaluation["forms"]["as_is"]["slice_dice"] == evaluation["slice_dice"]  # same slices, same model
    external = evaluation["external"]
    assert (external["folder"], external["model"], external["n_subjects"]) == ("outside-set", "org/robust", 1)
    [subject] = external["subjects"]
    assert subject["truth_voxels"] > 0 and set(subject["dice"]) == {ALL_CHANNELS, FLAIR_ONLY}

    metrics = ModelConfig.load(out).extra["metrics"]
    assert metrics["forms"]["half_frame"]["volume_dice"] == evaluation["forms"]["half_frame"]["volume_dice"]
    assert metrics["external"] == {"folder": "outside-set", "n_subjects": 1, "mean_dice": external["mean_dice"]}

    card = (out / "README.md").read_text()
    for form in ("as_is", "half_frame", "rotated_90"):
        report = evaluation["forms"][form]
        assert f"| {report['slice_dice']:.4f} | {report['volume_dice']:.4f} |" in card, form
    assert f"**{evaluation['forms_score']:.4f}**" in card
    assert f"| subject_1 | FLAIR | {subject['dice'][ALL_CHANNELS]:.3f} | {subject['dice'][FLAIR_ONLY]:.3f} |" in card
    assert "on 1 external NIfTI subjects (folder `outside-set`)" in card
    assert ("random rotation/scale (0.5–1.4)/shift + per-channel gamma; skull-stripped with the heuristic brain "
            "mask on 50 % of slices; MONAI bias field") in card
    for name in ("README.md", "evaluation.json", "config.json"):
        assert str(tmp_path) not in (out / name).read_text(), name


def test_forms_and_external_options_are_checked_first(tmp_path, capsys):
    eval_json = tmp_path / "eval.json"
    metrics = {"slice_dice": 0.5, "slice_iou": 0.4, "tumor_slice_dice": 0.3, "tumor_slice_iou": 0.2,
               "empty_fp_rate": 0.1, "volume_dice": 0.6, "n_slices": 3, "n_tumor_slices": 1, "n_patients": 1}
    eval_json.write_text(json.dumps({**metrics, "per_patient_dice": {STANDIN_SOURCE: 0.6}}))
    cases = [
        (["--eval-json", str(eval_json), "--forms"], "--forms scores the held-out patients' slices"),
        (["--eval-json", str(eval_json), "--external-truth-glob", "seg*.nii.gz"], "give --external too"),
        (["--eval-json", str(eval_json), "--external", str(tmp_path / "missing")], "no such file or folder"),
    ]
    for n, (args, message) in enumerate(cases):
        assert publish_main(["--repo-id", "org/x", "--dry-run", str(tmp_path / f"o{n}"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
