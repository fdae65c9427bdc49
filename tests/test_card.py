"""The model card (brainseg.publishing.card, its facts from brainseg.publishing.facts): the training recipe line,
the input-form and external-check sections."""
from __future__ import annotations

import csv
import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from brainseg.cli.publish import public_evaluation
from brainseg.cli.train import build_parser, config_from_args
from brainseg.config import ModelConfig
from brainseg.evaluation.external import ALL_CHANNELS, FLAIR_ONLY
from brainseg.evaluation.forms import SELECTION_FORMS
from brainseg.evaluation.metrics import Report, SliceCounts, summarize
from brainseg.evaluation.scoring import forms_score
from brainseg.io.dataset import bundled_test_patients
from brainseg.publishing.card import build_card, training_recipe
from brainseg.publishing.facts import check_evaluation, metrics_summary, read_training_info, train_command
from brainseg.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
RECIPE = dict(augment="affine_gamma", scale_min=0.5, scale_max=1.4, strip_prob=0.5, missing_channel_prob=0.45,
              acquisition=True, select_on="forms")
LOGGED_FORMS = ("as_is", "skull_stripped", "flair_only")  # a run validated on fewer forms than SELECTION_FORMS


def write_run(folder: Path, cfg: TrainConfig, log_columns: list[str], epochs: int = 3) -> Path:
    """A run folder as brainseg.cli.train leaves it: train_config.json (with world_size) and log.csv."""
    folder.mkdir(parents=True)
    (folder / "train_config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "world_size": 1}, indent=2))
    with open(folder / "log.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", *log_columns, "seconds"])
        writer.writeheader()
        writer.writerows({"epoch": e, **{c: 0.5 for c in log_columns}, "seconds": 600.0} for e in range(1, epochs + 1))
    return folder


def forms_columns(forms: tuple[str, ...]) -> list[str]:
    """log.csv's validation columns of a select_on=forms run (brainseg.training.validation.log_fields)."""
    columns = ["val_slice_dice", "val_tumor_slice_dice", "val_volume_dice"]
    for form in forms:
        columns += [f"val_{form}_slice_dice", f"val_{form}_volume_dice"]
    return columns + ["val_forms_score"]


def training_section(card: str) -> str:
    return card.split("## Training", 1)[1].split("\n## ", 1)[0]


def parsed_command(command: str, data_dir: str) -> TrainConfig:
    """The TrainConfig that brainseg.cli.train builds from the card's command line."""
    words = shlex.split(command.replace(" \\\n    ", " ").replace("$DATA", data_dir))
    assert words[:2] == ["brainseg", "train"], words[:2]
    return config_from_args(build_parser().parse_args(words[2:]))


def test_recipe_line_names_every_recorded_augmentation_and_the_forms_choice(tmp_path):
    cfg = TrainConfig(data_dir="/work/data/lgg/kaggle_3m", out_dir="runs/robust", seed=2027, split_seed=2026,
                      init_from="/work/main/runs/start/best", **RECIPE)
    run = write_run(tmp_path / "run", cfg, forms_columns(LOGGED_FORMS))
    config = ModelConfig(extra={"best_epoch": 2})
    training = read_training_info(run, config)
    assert training.selection_forms == list(LOGGED_FORMS) and training.scale_range == [0.5, 1.4]
    assert training_recipe(training) == (
        "random horizontal flips; random rotation/scale (0.5–1.4)/shift + per-channel gamma; skull-stripped with "
        "the heuristic brain mask on 50 % of slices; T1 (or T1 and T1c) replaced by FLAIR on 45 %; MONAI bias "
        "field / low resolution / histogram shift / noise; checkpoint chosen on the mean over input forms (as is, "
        "skull-stripped, FLAIR only) of (slice Dice + volume Dice) / 2")
    text = training_section(build_card("org/robust", config, evaluation(), training, 1000))
    assert f"- **Augmentation and choice:** {training_recipe(training)}." in text
    assert "weights from epoch 2 (best validation score over input forms)" in text
    assert "(seed 2026) form the validation set" in text  # the split seed, not the training seed 2027
    assert "30 min 00 s (sum of epoch times in `log.csv`)" in text
    # the command line rebuilds the run, booleans as --flag / --no-flag, and names no folder of this machine
    assert "--acquisition" in text and "--no-sync-bn" in text and "--select-on forms" in text
    assert "/work/" not in text and "--init-from INIT_MODEL" in text and "--data-dir $DATA" in text
    rebuilt = parsed_command(training.command, "DATA_DIR")
    assert rebuilt == dataclasses.replace(cfg, data_dir="DATA_DIR", init_from="INIT_MODEL")
    off = TrainConfig(data_dir="$DATA", out_dir="runs/b", acquisition=False, select_on="as_is")
    command = train_command({**dataclasses.asdict(off), "world_size": 1})
    assert "--no-acquisition" in command and "--init-from" not in command  # "" is the default: left out
    assert parsed_command(command, "$DATA") == off
    recorded = {k: v for k, v in dataclasses.asdict(off).items() if k != "precision"}  # before --precision
    assert "--precision fp32" in train_command({**recorded, "amp": False}) and "amp" not in train_command(recorded)


def test_forms_choice_is_not_claimed_for_last_epoch_weights_and_unlogged_forms_fall_back(tmp_path):
    cfg = TrainConfig(data_dir="$DATA", out_dir="runs/r", **RECIPE)
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))  # no log.csv
    training = read_training_info(run, ModelConfig(extra={"best_epoch": 4}))
    assert training.selection_forms == list(SELECTION_FORMS) and training.epochs_run is None
    assert training_recipe(training).endswith(
        "checkpoint chosen on the mean over input forms (as is, skull-stripped, FLAIR only, FLAIR + T1c, half "
        "frame) of (slice Dice + volume Dice) / 2")
    last = read_training_info(run, ModelConfig(extra={"epoch": 40}))
    assert "checkpoint chosen" not in training_recipe(last) and "MONAI" in training_recipe(last)


@pytest.mark.parametrize("folder, rows", [("assets/models/unet", 80)])
def test_old_train_config_says_only_what_it_recorded(folder, rows):
    """The default's run predates the recipe fields: flips and affine + gamma only, no scale range, no choice."""
    run = REPO / folder
    config = ModelConfig.load(run)
    training = read_training_info(run, config)
    assert training_recipe(training) == "random horizontal flips; random rotation/scale/shift + per-channel gamma"
    assert (training.epochs_run, training.log_file) == (rows, "training_log.csv")
    assert None in (training.scale_range, training.strip_prob, training.acquisition, training.select_on)
    text = training_section(build_card("org/old", config, evaluation(), training, 1000))
    assert "- **Augmentation and choice:** random horizontal flips; random rotation/scale/shift + per-channel " \
           "gamma.\n" in text
    for absent in ("skull-stripped", "MONAI", "input forms", "scale (", "--scale-min", "--acquisition",
                   "--select-on", "--init-from"):
        assert absent not in text, absent
    assert f"{rows} of {rows} planned" in text and "(sum of epoch times in `training_log.csv`)" in text


def test_no_train_config_no_recipe_line():
    text = training_section(build_card("org/x", ModelConfig(), evaluation(), read_training_info(None, ModelConfig()),
                                       10))
    assert "Augmentation" not in text and "Command not recorded." in text


# ------------------------------------------------------------------ evaluation dicts with the real structure
PATIENTS = bundled_test_patients()[:2]


def report(hits: tuple[int, int]) -> Report:
    """Four slices of two held-out patients: one tumor slice each (``hits`` = overlap of a 40-pixel lesion with a
    40-pixel prediction) and one empty slice each (a 10-pixel false positive on the second patient's)."""
    a, b = PATIENTS
    return summarize([SliceCounts(a, hits[0], 40, 40), SliceCounts(a, 0, 0, 0),
                      SliceCounts(b, hits[1], 40, 40), SliceCounts(b, 0, 10, 0)])


def evaluation(**extra) -> dict:
    """What evaluate_model returns (the keys the card reads), held-out patients, plus ``extra``."""
    base = report((30, 20)).to_dict()
    return {**base, "ms_per_slice": 12.5, "hardware": "test CPU", "model": "/tmp/model", "data_dir": "/tmp/lgg",
            "split": "all", **extra}


def forms_result() -> dict:
    """brainseg.evaluation.scoring.forms_result's shape: {"forms": {form: Report.to_dict()}, "forms_score": ...}."""
    hits = {"as_is": (30, 20), "skull_stripped": (20, 20), "flair_only": (10, 0), "flair_t1c": (40, 40),
            "half_frame": (0, 0), "stripped_flair_only": (20, 0), "rotated_90": (0, 10)}
    reports = {form: report(h) for form, h in hits.items()}
    selection = {form: reports[form] for form in SELECTION_FORMS}
    return {"forms": {form: r.to_dict() for form, r in reports.items()}, "forms_score": forms_score(selection)}


def external_result() -> dict:
    """evaluate_external's result for two subjects, one with a post-contrast T1, one with the FLAIR alone."""
    subjects = [
        {"name": "brats_a", "truth_voxels": 5000, "dice": {ALL_CHANNELS: 0.8123, FLAIR_ONLY: 0.7001},
         "predicted_voxels": {ALL_CHANNELS: 4800, FLAIR_ONLY: 3900},
         "channels": {ALL_CHANNELS: ["flair", "flair", "t1ce"], FLAIR_ONLY: ["flair"] * 3}, "seconds": 12.0},
        {"name": "brats_b", "truth_voxels": 900, "dice": {ALL_CHANNELS: 0.4, FLAIR_ONLY: 0.4},
         "predicted_voxels": {ALL_CHANNELS: 700, FLAIR_ONLY: 700},
         "channels": {ALL_CHANNELS: ["flair"] * 3, FLAIR_ONLY: ["flair"] * 3}, "seconds": 9.0},
    ]
    return {"folder": "/work/shared/data/external-brats2013/", "truth_glob": "OTMultiClass*.nii*",
            "forms": [ALL_CHANNELS, FLAIR_ONLY], "crop": "head", "threshold": 0.5, "model": "/tmp/run/best",
            "n_subjects": 2, "mean_dice": {ALL_CHANNELS: 0.6062, FLAIR_ONLY: 0.5501}, "subjects": subjects}


def test_forms_and_external_sections_show_every_number():
    full = evaluation(**forms_result(), external=external_result())
    card = build_card("org/robust", ModelConfig(), full, read_training_info(None, ModelConfig()), 10)
    titles = [line for line in card.splitlines() if line.startswith("## ")]
    assert titles == ["## Intended use", "## How to use", "## Evaluation", "## Robustness: other input forms",
                      "## External check", "## Training", "## Dataset credit and licence"]
    forms = card.split("## Robustness: other input forms", 1)[1].split("\n## ", 1)[0]
    assert "(4 slices of 2 patients)" in forms
    # as is: slice Dice (60/80 + 1 + 40/80 + 0) / 4 = 0.5625; volume Dice mean(60/80, 40/90) = 0.5972
    assert "| as is | the Kaggle slice: pre-contrast T1, FLAIR, post-contrast T1, skull included | 0.5625 | 0.5972 |" \
        in forms
    # half frame: no overlap at all: slice Dice (0 + 1 + 0 + 0) / 4, volume Dice 0
    assert "| half frame | the slice shrunk to half its size in a black frame | 0.2500 | 0.0000 |" in forms
    assert "| rotated 90° | the slice turned by a quarter | 0.3125 | 0.1111 |" in forms
    rows = [line for line in forms.splitlines() if line.startswith("| ") and not line.startswith("| Input")]
    assert len(rows) == 7
    score = full["forms_score"]
    assert f"over as is, skull-stripped, FLAIR only, FLAIR + T1c, half frame: **{score:.4f}**" in forms
    external = card.split("## External check", 1)[1].split("\n## ", 1)[0]
    assert "on 2 external NIfTI subjects (folder `external-brats2013`)" in external
    assert "never used for training, tuning or\nchoosing the model" in external
    assert "| Subject | Sequences | Dice, all channels | Dice, flair only |" in external
    assert "| brats_a | FLAIR, T1c | 0.812 | 0.700 |" in external
    assert "| brats_b | FLAIR | 0.400 | 0.400 |" in external
    assert "| **mean of 2** | | **0.606** | **0.550** |" in external
    assert "/work/" not in card and "/tmp/" not in card


def test_no_forms_or_external_no_sections():
    card = build_card("org/x", ModelConfig(), evaluation(), read_training_info(None, ModelConfig()), 10)
    assert "## Robustness" not in card and "## External check" not in card


def test_published_metrics_and_evaluation_carry_forms_and_external_without_paths():
    full = evaluation(**forms_result(), external=external_result())
    summary = metrics_summary(full)
    assert summary["forms"]["as_is"] == {"slice_dice": 0.5625, "volume_dice": pytest.approx(0.5972, abs=1e-4)}
    assert set(summary["forms"]) == set(full["forms"]) and summary["forms_score"] == full["forms_score"]
    assert summary["external"] == {"folder": "external-brats2013", "n_subjects": 2,
                                   "mean_dice": {ALL_CHANNELS: 0.6062, FLAIR_ONLY: 0.5501}}
    public = public_evaluation(full, "org/robust")
    text = json.dumps(public, allow_nan=False)
    assert "/work/" not in text and "/tmp/" not in text
    assert public["external"]["folder"] == "external-brats2013" and public["external"]["model"] == "org/robust"
    assert public["external"]["subjects"] == full["external"]["subjects"] and public["forms"] == full["forms"]
    assert full["external"]["folder"].startswith("/work/")  # the caller's dict is left as it was


def test_external_run_with_another_threshold_is_refused():
    full = evaluation(model_config=ModelConfig().to_dict(), external={**external_result(), "threshold": 0.3})
    with pytest.raises(ValueError, match="external threshold"):
        check_evaluation(full, ModelConfig())
    check_evaluation({**full, "external": external_result()}, ModelConfig())


@pytest.mark.parametrize("arch, title, described", [
    ("unet", "U-Net for FLAIR", "A 2D U-Net (4 down/up levels, 16 base channels"),
    ("segformer_mit_b0", "SegFormer-B0 (Transformer) for FLAIR", "A 2D SegFormer-B0 (Mix-Transformer MiT-b0"),
    ("unet_mit_b0", "U-Net with a MiT-b0 Transformer encoder for FLAIR", "Mix-Transformer MiT-b0 encoder"),
])
def test_card_names_the_architecture_it_describes(arch, title, described):
    config = ModelConfig(arch=arch, base_channels=16, depth=4)
    card = build_card("org/m", config, evaluation(), read_training_info(None, config), 3_714_401)
    heading = card.split("\n# ", 1)[1].splitlines()[0]
    assert heading == f"m: {title} abnormality (lower-grade glioma) on brain MRI"
    assert described in card and "3,714,401 parameters" in card
    if arch != "unet":
        assert "A 2D U-Net (" not in card, "a Transformer is not described as a U-Net"
