"""``brainseg calibrate``: leave-one-scan-out on synthetic scans with a known best threshold, the
refusals, and a calibrated folder that loads wherever a model folder loads."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from volume_synth import affine_of, save_nifti

from brainseg.calibration.finetune import (
    PARTS,
    FineTuneSettings,
    Tail,
    features_and_tables,
    fine_tune,
    fine_tune_and_choose,
    fine_tune_leave_one_out,
    repredicted,
    trained_parameters,
    tuned_tables,
)
from brainseg.calibration.fit import (
    CalibrationError,
    Grid,
    calibrated_config,
    choose,
    find_scans,
    leave_one_out,
    predict_scan,
    scan_table,
    scan_tables,
    write_calibrated,
)
from brainseg.cli.calibrate import NO_GAIN_STATUS, main
from brainseg.cli.predict import main as predict_main
from brainseg.config import ModelConfig
from brainseg.evaluation.volumes import evaluate_volume
from brainseg.inference.segmenter import Segmenter
from brainseg.io.weights import save_model
from brainseg.models.unet import build_model
from brainseg.publishing.card import calibration_line

AFFINE = affine_of(np.eye(3))
BRAIN, RIM, CORE = 50.0, 75.0, 100.0  # intensities; the intensity rule RULE maps CORE (the 99th percentile) to 160
# what the stub below outputs for them (the rule's 160/255 scale, no normalisation): 0.31, 0.47, 0.63
RULE = "percentile"  # (the default, percentile80, would put BRAIN, the head's 80th percentile, at 160)


class FlairIsProbability(nn.Module):
    """A network whose probability is the FLAIR channel's input value (in [0, 1] without normalisation)."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.logit(batch[:, 1:2].float().clamp(1e-4, 1 - 1e-4))


def stub_segmenter(threshold: float = 0.5, min_component_px: int = 10) -> Segmenter:
    config = ModelConfig(base_channels=2, depth=2, input_size=64, normalize=False, threshold=threshold,
                         min_component_px=min_component_px)
    return Segmenter(FlairIsProbability(), config, source="flair stub", device="cpu")


def synthetic_scan(folder: Path, centre: tuple[int, int], rim_is_tumor: bool, seed: int) -> Path:
    """A 64 x 64 x 12 scan: a brain disk, a lesion (core inside a rim) on slices 3-8; labels: core (+ rim)."""
    folder.mkdir(parents=True)
    x, y = np.mgrid[:64, :64]
    brain = (x - 32) ** 2 + (y - 32) ** 2 <= 27 ** 2
    lesion = (x - centre[0]) ** 2 + (y - centre[1]) ** 2
    flair = np.zeros((64, 64, 12), np.float32)
    truth = np.zeros((64, 64, 12), np.uint8)
    for z in range(1, 11):
        flair[..., z][brain] = BRAIN
    for z in range(3, 9):
        flair[..., z][lesion <= 9 ** 2] = RIM
        flair[..., z][lesion <= 5 ** 2] = CORE
        truth[..., z][lesion <= (9 if rim_is_tumor else 5) ** 2] = 2
    flair += np.random.default_rng(seed).normal(0, 0.5, flair.shape).astype(np.float32) * (flair > 0)
    save_nifti(flair, AFFINE, folder / "flair.nii.gz")
    save_nifti(truth, AFFINE, folder / "label.nii.gz")
    return folder


CENTRES = ((28, 30), (36, 34), (30, 38), (34, 26))


def four_scans(root: Path, rim_is_tumor: bool) -> Path:
    """A folder of one synthetic scan per centre of :data:`CENTRES`."""
    for k, centre in enumerate(CENTRES):
        synthetic_scan(root / f"scan{k}", centre, rim_is_tumor=rim_is_tumor, seed=k)
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Four scans whose annotators count the rim as tumor: the best threshold lies between BRAIN and RIM."""
    return four_scans(tmp_path_factory.mktemp("site"), rim_is_tumor=True)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """Four scans labelled like the model: the core only (the model's own threshold is already right)."""
    return four_scans(tmp_path_factory.mktemp("home"), rim_is_tumor=False)


@pytest.fixture(scope="module")
def site_tables(site) -> tuple[Grid, list]:
    """The site's scans run once through the stub, counted on the grid around its threshold 0.5 / 10 px."""
    grid = Grid().including(0.5, 10)
    return grid, scan_tables(stub_segmenter(), find_scans(site, "label*"), grid, intensity=RULE)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A real (tiny, untrained) U-Net model folder, loadable by name like any model."""
    torch.manual_seed(0)
    config = ModelConfig(base_channels=2, depth=2, input_size=32, threshold=0.5, min_component_px=10)
    folder = save_model(build_model(config), config, tmp_path_factory.mktemp("tiny") / "model")
    (folder / "README.md").write_text("# tiny\n")
    (folder / "metrics.json").write_text("{}\n")
    return folder


def test_the_table_counts_what_the_volume_pipeline_scores(site):
    segmenter = stub_segmenter()
    subject = find_scans(site, "label*")[0]
    prediction, truth = predict_scan(segmenter, subject)
    grid = Grid().including(0.5, 10)
    dice = scan_table(prediction, truth, grid).dice()
    for threshold, min_px in ((0.5, 10), (0.4, 0), (0.2, 80)):
        expected = evaluate_volume(dataclasses.replace(prediction, min_component_px=min_px), truth, threshold).dice
        assert dice[grid.index(threshold, min_px)] == pytest.approx(expected, abs=1e-9)


def test_leave_one_out_finds_the_known_best_threshold(site_tables):
    grid, tables = site_tables
    loo = leave_one_out(tables, grid, (0.5, 10))
    # between BRAIN (0.31) and RIM (0.47): 0.35 takes in brain blurred at the rim's edge, 0.45 loses that edge
    assert [(row["threshold"], row["min_component_px"]) for row in loo["per_scan"]] == [(0.4, 10)] * 4
    assert all(row["uncalibrated"] < 0.6 for row in loo["per_scan"])  # about the core alone: 25/81 of the labels
    assert all(row["calibrated"] > 0.99 for row in loo["per_scan"])
    assert loo["gain"] > 0.4 and loo["scans_worse"] == 0
    assert choose(tables, grid, (0.5, 10)).threshold == 0.4


def test_where_the_model_is_already_right_calibration_keeps_it(home):
    """Labelled like the model: a threshold halfway between RIM and CORE (0.55) is right, and stays."""
    grid = Grid().including(0.55, 10)
    tables = scan_tables(stub_segmenter(0.55), find_scans(home, "label*"), grid, intensity=RULE)
    loo = leave_one_out(tables, grid, (0.55, 10))
    assert loo["gain"] == pytest.approx(0.0, abs=1e-4) and loo["calibrated_mean"] > 0.95
    assert all(row["threshold"] == 0.55 for row in loo["per_scan"])


def test_refusals_say_what_is_wrong(site, tiny_folder, tmp_path, capsys):
    two = tmp_path / "two"
    two.mkdir()
    for name in ("scan0", "scan1"):
        (two / name).symlink_to(site / name)
    out = tmp_path / "out"
    assert main(["--model", str(tiny_folder), "--scans", str(two), "--truth-glob", "label*",
                 "--out-dir", str(out)]) == 2
    assert "2 labelled scans; calibration needs at least 3" in capsys.readouterr().err
    assert main(["--model", str(tiny_folder), "--scans", str(site), "--truth-glob", "seg*",
                 "--out-dir", str(out)]) == 2
    assert "0 files match --truth-glob 'seg*'" in capsys.readouterr().err
    unlabelled = tmp_path / "unlabelled"
    for name in ("scan0", "scan1", "scan2"):
        (unlabelled / name).mkdir(parents=True)
        (unlabelled / name / "flair.nii.gz").symlink_to(site / name / "flair.nii.gz")
    assert main(["--model", str(tiny_folder), "--scans", str(unlabelled), "--out-dir", str(out)]) == 2
    assert "no label file found for every scan (scan0, scan1, scan2)" in capsys.readouterr().err
    assert main(["--model", str(tiny_folder), "--scans", str(tmp_path / "nowhere"), "--out-dir", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not out.exists()


def test_empty_labels_are_refused(tmp_path):
    for k, centre in enumerate(CENTRES[:3]):
        synthetic_scan(tmp_path / f"scan{k}", centre, rim_is_tumor=True, seed=k)
    save_nifti(np.zeros((64, 64, 12), np.uint8), AFFINE, tmp_path / "scan2" / "label.nii.gz")
    with pytest.raises(CalibrationError, match=r"only 2 of 3 scans have any labelled voxel \(empty labels: scan2\)"):
        scan_tables(stub_segmenter(), find_scans(tmp_path, "label*"), Grid())


def test_no_gain_keeps_the_model_and_writes_nothing(site, tiny_folder, tmp_path, capsys):
    out, report = tmp_path / "out", tmp_path / "report.json"
    rc = main(["--model", str(tiny_folder), "--scans", str(site), "--truth-glob", "label*", "--out-dir", str(out),
               "--min-gain", "1.0", "--json", str(report)])
    assert rc == NO_GAIN_STATUS and not out.exists()
    assert "calibration does not help on these scans" in capsys.readouterr().err
    written = json.loads(report.read_text())
    assert written["written"] is None and written["record"]["n_scans"] == 4
    assert written["record"]["intensity"] == "percentile80"  # the default rule, as predict runs it
    assert len(written["record"]["leave_one_out"]["per_scan"]) == 4
    assert main(["--model", str(tiny_folder), "--scans", str(site), "--truth-glob", "label*", "--out-dir", str(out),
                 "--min-gain", "1.0", "--json", str(report), "--intensity", RULE]) == NO_GAIN_STATUS
    assert json.loads(report.read_text())["record"]["intensity"] == RULE
    assert f"(intensity rule {RULE})" in capsys.readouterr().err


@pytest.mark.slow  # imports the app (gradio)
def test_a_calibrated_folder_loads_everywhere_a_model_folder_loads(site, site_tables, tiny_folder, tmp_path):
    grid, tables = site_tables
    choice = choose(tables, grid, (0.5, 10))
    record = {"source": "tiny", "source_threshold": 0.5, "source_min_component_px": 10, "scans_folder": "site",
              "n_scans": 4, "channels": "all channels", "date": "2026-12-01T00:00:00+00:00",
              "leave_one_out": leave_one_out(tables, grid, (0.5, 10))}
    config = calibrated_config(ModelConfig.load(tiny_folder), choice, record)
    out = write_calibrated(tiny_folder, tmp_path / "calibrated", config, {"record": record})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "calibration.json", "config.json",
                                                     "model.safetensors"]
    loaded = Segmenter.from_pretrained(out, backend="torch")
    assert (loaded.config.threshold, loaded.config.min_component_px) == (0.4, 10)
    line = calibration_line(loaded.config)
    assert line.startswith("Calibrated on 4 labelled scans of `site`") and "threshold 0.5 -> 0.4" in line
    assert line in (out / "README.md").read_text()
    # the app: selectable by --model like any folder, its model line and label say where it was calibrated
    from brainseg.app.models import ModelRegistry, bundled_label, model_description

    assert line in model_description(loaded)
    assert bundled_label("site-model", out) == "site-model: bundled U-Net, calibrated"
    assert str(out) in ModelRegistry.around(loaded, requested=str(out)).sources
    report = tmp_path / "predict.json"
    assert predict_main([str(site / "scan0"), "--truth-glob", "label*", "--model", str(out), "--out-dir",
                         str(tmp_path / "masks"), "--json", str(report), "--quiet", "--backend", "torch"]) == 0
    assert json.loads(report.read_text())["threshold"] == 0.4
    # this record names no intensity rule (as folders calibrated before it was recorded): the rule of then runs
    assert json.loads(report.read_text())["intensity"] == "percentile"
    with pytest.raises(CalibrationError, match="already exists and is not empty"):
        write_calibrated(tiny_folder, out, config, {"record": record})


# ------------------------------------------------------------------------------------------------ --fine-tune
@pytest.fixture
def one_thread():
    """Small tensors on a busy CPU: one thread is many times faster than two fighting over the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def random_unet() -> Segmenter:
    """A tiny untrained U-Net: far off on the site's scans (3D Dice about 0.08 at its threshold)."""
    torch.manual_seed(0)
    config = ModelConfig(base_channels=4, depth=2, input_size=64, threshold=0.5, min_component_px=10)
    return Segmenter(build_model(config), config, source="tiny", device="cpu", backend="torch")


@pytest.mark.parametrize("part", PARTS)
def test_fine_tune_changes_only_what_it_trains_and_is_seeded(site, random_unet, part, one_thread):
    grid = Grid().including(0.5, 10)
    scans, tables = features_and_tables(random_unet, find_scans(site, "label*"), part, grid)
    untouched = repredicted(scans[0], Tail(random_unet.model, part))
    assert np.array_equal(untouched.proba, scans[0].prediction.proba)  # the cached tail is the pipeline's model
    settings = FineTuneSettings(part=part, steps=5, lr=1e-2)
    tuned, again = fine_tune(random_unet.model, scans, settings), fine_tune(random_unet.model, scans, settings)
    before, after = random_unet.model.state_dict(), tuned.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    trained = trained_parameters(random_unet.model, part)
    assert changed == trained and trained[-2:] == ["outc.weight", "outc.bias"]
    assert (len(trained) == 2) == (part == "head")
    assert all(torch.equal(value, again.state_dict()[name]) for name, value in after.items())
    other = fine_tune(random_unet.model, scans, dataclasses.replace(settings, seed=1))
    assert not torch.equal(other.state_dict()["outc.weight"], after["outc.weight"])


def test_fine_tuning_the_last_block_fixes_a_model_that_is_off(site, random_unet, one_thread):
    """Trained on three scans, scored on the fourth at the model's own threshold: 0.08 -> above 0.8."""
    grid = Grid().including(0.5, 10)
    scans, tables = features_and_tables(random_unet, find_scans(site, "label*"), "last-block", grid)
    tuned = fine_tune(random_unet.model, scans[:3], FineTuneSettings(part="last-block", steps=200, lr=3e-2))
    before = tables[3].dice()[grid.index(0.5, 10)]
    after = tuned_tables(tuned, scans[3:], "last-block", grid)[0].dice()[grid.index(0.5, 10)]
    assert before < 0.1 and after > 0.8


def test_fine_tune_leave_one_out_scores_each_scan_untrained_on(site, random_unet, one_thread):
    grid = Grid().including(0.5, 10)
    scans, tables = features_and_tables(random_unet, find_scans(site, "label*"), "head", grid)
    loo = fine_tune_leave_one_out(random_unet.model, scans, FineTuneSettings(steps=3), grid, (0.5, 10))
    assert [row["name"] for row in loo["per_scan"]] == [t.name for t in tables]
    home = grid.index(0.5, 10)
    assert [row["uncalibrated"] for row in loo["per_scan"]] == [round(float(t.dice()[home]), 4) for t in tables]
    tuned, choice = fine_tune_and_choose(random_unet.model, scans[1:], FineTuneSettings(steps=3), grid, (0.5, 10))
    held = tuned_tables(tuned, scans[:1], "head", grid)[0].dice()
    assert loo["per_scan"][0]["calibrated"] == round(float(held[grid.index(choice.threshold,
                                                                             choice.min_component_px)]), 4)


def test_a_fine_tuned_folder_has_the_tuned_weights_and_says_how(site, tiny_folder, tmp_path, one_thread):
    out, report = tmp_path / "tuned", tmp_path / "report.json"
    assert main(["--model", str(tiny_folder), "--scans", str(site), "--truth-glob", "label*", "--out-dir", str(out),
                 "--fine-tune", "last-block", "--fine-tune-steps", "4", "--min-gain", "-1", "--device", "cpu",
                 "--json", str(report)]) == 0
    loaded = Segmenter.from_pretrained(out, backend="torch", device="cpu")
    record = loaded.config.extra["calibration"]
    assert record["fine_tune"]["part"] == "last-block" and record["fine_tune"]["steps"] == 4
    assert record["intensity"] == "percentile80"  # the default rule, recorded: predict and the app run it
    assert record["fine_tune"]["modules"] == ["ups.1", "outc"] and "--fine-tune last-block" in record["command"]
    assert len(record["leave_one_out"]["per_scan"]) == 4 and "fine_tuned_own" in record["leave_one_out"]["per_scan"][0]
    assert len(record["threshold_only_leave_one_out"]["per_scan"]) == 4
    source = Segmenter.from_pretrained(tiny_folder, backend="torch", device="cpu")
    grid = Grid().including(0.5, 10)
    scans, _ = features_and_tables(source, find_scans(site, "label*"), "last-block", grid)
    expected = fine_tune(source.model, scans, FineTuneSettings(part="last-block", steps=4))
    assert all(torch.equal(value, loaded.model.state_dict()[name]) for name, value in expected.state_dict().items())
    assert not torch.equal(loaded.model.state_dict()["outc.weight"], source.model.state_dict()["outc.weight"])
    assert json.loads(report.read_text())["written"] == str(out)
    assert "from `" in calibration_line(loaded.config) and "its last-block fine-tuned (4 steps), threshold 0.5 -> " \
        in calibration_line(loaded.config)
