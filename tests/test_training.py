"""A tiny real training run on a few held-out slices (article split: random over slices)."""
import csv
import dataclasses
import subprocess
import sys

import pytest
import torch
from conftest import link_patient

from brainseg import Segmenter
from brainseg.config import ModelConfig
from brainseg.evaluation.forms import SELECTION_FORMS as FORMS
from brainseg.io.weights import save_model
from brainseg.models.unet import build_model
from brainseg.training.checkpoints import CHECKPOINT_FILE, LOG_FILE, make_optimizer, make_scheduler
from brainseg.training.config import CHOICES, TrainConfig
from brainseg.training.loop import train
from brainseg.training.teacher import Teacher


def tiny_config(lgg_test_dir, out_dir, **overrides) -> TrainConfig:
    values = dict(
        data_dir=str(lgg_test_dir), out_dir=str(out_dir), base_channels=4, depth=2, epochs=4, batch_size=4,
        lr=1e-2, schedule="constant", split="article", max_train_slices=24, max_val_slices=8,
        tune_postprocessing=False, seed=3,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_log(out_dir) -> list[dict]:
    with open(out_dir / LOG_FILE, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_loss_falls_and_a_killed_run_resumes_from_its_checkpoint(lgg_test_dir, tmp_path) -> None:
    out = tmp_path / "run"
    train(tiny_config(lgg_test_dir, out, stop_after_epochs=2))
    rows = read_log(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    state = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 2
    assert not list(out.glob("*.tmp"))

    best = train(tiny_config(lgg_test_dir, out))  # resumes at epoch 3
    rows = read_log(out)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["epoch"] == 4
    segmenter = Segmenter.from_pretrained(best)
    assert segmenter.config.base_channels == 4 and segmenter.config.depth == 2
    last = Segmenter.from_pretrained(out / "last")
    assert last.config.extra == {"epoch": 4}
    final = torch.load(out / CHECKPOINT_FILE, weights_only=True)["model"]
    last_state = last.model.state_dict()
    assert all(torch.equal(last_state[k], final[k].to(last_state[k].dtype)) for k in last_state)


@pytest.mark.slow
def test_same_seed_gives_the_same_weights(lgg_test_dir, tmp_path) -> None:
    first = train(tiny_config(lgg_test_dir, tmp_path / "a", epochs=1, precision="fp32"))
    second = train(tiny_config(lgg_test_dir, tmp_path / "b", epochs=1, precision="fp32"))
    a = Segmenter.from_pretrained(first).model.state_dict()
    b = Segmenter.from_pretrained(second).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_help_documents_the_article_preset() -> None:
    result = subprocess.run([sys.executable, "-m", "brainseg.cli.train", "--help"], capture_output=True, text=True,
                            check=True)
    assert "--preset" in result.stdout and "article" in result.stdout and "--empty-fraction" in result.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_reports_a_missing_data_dir_in_one_line(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "brainseg.cli.train", "--data-dir", str(tmp_path / "missing"),
         "--out-dir", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr


@pytest.mark.slow
def test_init_from_starts_where_the_given_model_ended(lgg_test_dir, tmp_path) -> None:
    first = train(tiny_config(lgg_test_dir, tmp_path / "a"))
    tuned = train(tiny_config(lgg_test_dir, tmp_path / "b", epochs=1, lr=1e-7, init_from=str(first)))
    start, after = Segmenter.from_pretrained(first).model, Segmenter.from_pretrained(tuned).model
    for name, tensor in start.state_dict().items():
        if tensor.is_floating_point() and "running" not in name:
            assert torch.allclose(tensor, after.state_dict()[name], atol=1e-4), name
    first_loss = float(read_log(tmp_path / "a")[0]["train_loss"])
    tuned_loss = float(read_log(tmp_path / "b")[0]["train_loss"])
    assert tuned_loss < first_loss


@pytest.mark.slow
def test_init_from_refuses_a_different_architecture(lgg_test_dir, tmp_path) -> None:
    first = train(tiny_config(lgg_test_dir, tmp_path / "a", epochs=1))
    with pytest.raises(ValueError, match="--base-channels"):
        train(tiny_config(lgg_test_dir, tmp_path / "b", base_channels=8, init_from=str(first)))


@pytest.mark.slow
def test_affine_gamma_augmentation_trains_reproducibly(lgg_test_dir, tmp_path) -> None:
    first = train(tiny_config(lgg_test_dir, tmp_path / "a", epochs=1, precision="fp32", augment="affine_gamma"))
    second = train(tiny_config(lgg_test_dir, tmp_path / "b", epochs=1, precision="fp32", augment="affine_gamma"))
    plain = train(tiny_config(lgg_test_dir, tmp_path / "c", epochs=1, precision="fp32"))
    a, b, c = (Segmenter.from_pretrained(p).model.state_dict() for p in (first, second, plain))
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded: the random warps repeat
    assert not all(torch.equal(a[k], c[k]) for k in a)  # and they do change what the model saw


@pytest.mark.slow
def test_generalization_recipe_trains_reproducibly_and_chooses_on_every_input_form(lgg_test_dir, tmp_path) -> None:
    """Skull-strip, missing-channel, wide-scale and acquisition augmentation; best/ picked on the forms' mean."""
    recipe = dict(epochs=2, precision="fp32", augment="affine_gamma", scale_min=0.5, scale_max=1.4, strip_prob=0.5,
                  missing_channel_prob=0.45, acquisition=True, select_on="forms")
    first = train(tiny_config(lgg_test_dir, tmp_path / "a", **recipe))
    second = train(tiny_config(lgg_test_dir, tmp_path / "b", **recipe))
    a, b = (Segmenter.from_pretrained(p).model.state_dict() for p in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = read_log(tmp_path / "a")
    for row in rows:
        forms = [f"val_{form}_{metric}" for form in FORMS for metric in ("slice_dice", "volume_dice")]
        mean = sum(float(row[name]) for name in forms) / len(forms)
        assert float(row["val_forms_score"]) == pytest.approx(mean, abs=2e-4)
        assert row["val_as_is_slice_dice"] == row["val_slice_dice"]
    best_row = max(rows, key=lambda row: float(row["val_forms_score"]))
    state = torch.load(tmp_path / "a" / CHECKPOINT_FILE, weights_only=True)
    assert state["best_epoch"] == int(best_row["epoch"])
    assert state["best_score"] == pytest.approx(float(best_row["val_forms_score"]), abs=1e-4)


def test_unknown_augment_is_refused_before_anything_is_written(lgg_test_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="augment"):
        train(tiny_config(lgg_test_dir, tmp_path / "run", augment="elastic"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_swa_averages_the_epochs_weights_across_a_resume(lgg_test_dir, tmp_path) -> None:
    out = tmp_path / "run"
    train(tiny_config(lgg_test_dir, out, epochs=3, swa_start=2, stop_after_epochs=2, checkpoint_every=1))
    after_2 = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert int(after_2["averaged"]["n_averaged"]) == 1  # epoch 1 is before swa_start
    assert not (out / "swa").exists()
    train(tiny_config(lgg_test_dir, out, epochs=3, swa_start=2, checkpoint_every=1))  # resumes at epoch 3
    after_3 = torch.load(out / CHECKPOINT_FILE, weights_only=True)["model"]
    swa = Segmenter.from_pretrained(out / "swa")
    assert swa.config.extra == {"averaged_epochs": [2, 3], "n_averaged": 2}
    weights = dict(swa.model.named_parameters())
    assert weights
    for name, value in weights.items():
        expected = (after_2["model"][name] + after_3[name]) / 2
        assert torch.allclose(value, expected.to(value.dtype), atol=1e-6), name
    bn = next(m for m in swa.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    last_bn = next(m for m in Segmenter.from_pretrained(out / "last").model.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(bn.running_mean, last_bn.running_mean)  # statistics recomputed, not copied
    assert 0.0 <= swa.predict_proba(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()).max() <= 1.0


def test_validation_patients_follow_split_seed_not_the_training_seed(lgg_test_dir, tmp_path) -> None:
    """A fine-tune with another --seed must validate on the same patients as the run it starts from."""
    source = lgg_test_dir / "TCGA_CS_4944_20010208"
    for i in range(30):  # 30 non-test patients, one real slice each (links, nothing copied)
        link_patient(source, tmp_path / "data" / f"TCGA_XX_{i:04d}_20000101", [1])
    cfg = TrainConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), seed=1)
    val = cfg.data_split().patients("val")
    assert len(val) == 3
    assert dataclasses.replace(cfg, seed=2).data_split().patients("val") == val
    assert dataclasses.replace(cfg, split_seed=5).data_split().patients("val") != val


@pytest.mark.parametrize("option", sorted(CHOICES))
def test_a_misspelt_option_is_refused_with_the_valid_values(tmp_path, option) -> None:
    with pytest.raises(ValueError, match=f"unknown {option} 'typo': use one of {', '.join(CHOICES[option])}"):
        TrainConfig(data_dir="d", out_dir=str(tmp_path), **{option: "typo"})
    for value in CHOICES[option]:
        assert getattr(TrainConfig(data_dir="d", out_dir=str(tmp_path), **{option: value}), option) == value


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs must be at least 1"), ("batch_size", 0, "batch_size must be at least 1"),
    ("checkpoint_every", 0, "checkpoint_every must be at least 1"), ("swa_start", -1, "swa_start must not be"),
    ("lr", 0.0, "lr must be positive"), ("val_fraction", 1.0, "val_fraction must be in"),
    ("empty_fraction", 1.5, "empty_fraction must be in"),
])
def test_out_of_range_numbers_are_refused(field, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(data_dir="d", out_dir="o", **{field: value})


def test_every_optimizer_and_schedule_choice_is_implemented() -> None:
    model = torch.nn.Linear(2, 1)
    for optimizer in CHOICES["optimizer"]:
        opt = make_optimizer(TrainConfig(data_dir="d", out_dir="o", optimizer=optimizer, lr=0.5), model)
        assert type(opt).__name__.lower() == optimizer and opt.param_groups[0]["lr"] == 0.5
    for schedule in CHOICES["schedule"]:
        cfg = TrainConfig(data_dir="d", out_dir="o", schedule=schedule, epochs=2, lr=0.5)
        opt = make_optimizer(cfg, model)
        scheduler = make_scheduler(cfg, opt, steps_per_epoch=5)
        lrs = []
        for _ in range(10):
            opt.step()
            scheduler.step()
            lrs.append(scheduler.get_last_lr()[0])
        if schedule == "constant":
            assert lrs == [0.5] * 10
        else:  # cosine and one-cycle both peak at lr and anneal to near zero within the planned steps
            assert 0.45 < max(lrs) <= 0.5 + 1e-9 and min(lrs) < 0.01


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_offers_the_choices_and_refuses_a_typo_before_writing(tmp_path) -> None:
    out = tmp_path / "o"
    result = subprocess.run(
        [sys.executable, "-m", "brainseg.cli.train", "--data-dir", str(tmp_path), "--out-dir", str(out),
         "--loss", "bce_dce"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "invalid choice: 'bce_dce'" in result.stderr
    assert "'bce', 'bce_dice'" in result.stderr
    assert not out.exists()
    help_text = subprocess.run([sys.executable, "-m", "brainseg.cli.train", "--help"], capture_output=True, text=True,
                               check=True).stdout
    for option, values in CHOICES.items():
        assert f"--{option.replace('_', '-')} {{{','.join(values)}}}" in help_text, option


def tiny_teacher(folder, threshold: float = 0.3):
    config = ModelConfig(base_channels=4, depth=2, threshold=threshold)
    torch.manual_seed(11)
    save_model(build_model(config), config, folder)
    return folder


def test_teacher_probability_is_one_half_exactly_at_its_threshold(tmp_path) -> None:
    teacher = Teacher.load(str(tiny_teacher(tmp_path / "teacher", threshold=0.3)), torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    logits = teacher.network(x.contiguous(memory_format=torch.channels_last)).float()
    proba = teacher.probability(x, torch.device("cpu"), bf16=False)
    assert not any(p.requires_grad for p in teacher.network.parameters())
    assert torch.allclose(proba, torch.sigmoid(logits - torch.logit(torch.tensor(0.3))), atol=1e-6)
    assert torch.equal(proba > 0.5, torch.sigmoid(logits) > 0.3)


@pytest.mark.slow
def test_distillation_and_quarter_turns_train_reproducibly(lgg_test_dir, tmp_path) -> None:
    """Soft targets change what is learned (weight 0 leaves the run as without a teacher); seeded runs repeat."""
    teacher = str(tiny_teacher(tmp_path / "teacher"))
    recipe = dict(epochs=1, precision="fp32", quarter_turn_prob=0.5)
    runs = {
        name: train(tiny_config(lgg_test_dir, tmp_path / name, **recipe, **extra))
        for name, extra in {
            "a": dict(distill_from=teacher), "b": dict(distill_from=teacher),
            "zero": dict(distill_from=teacher, distill_weight=0.0), "none": {},
        }.items()
    }
    w = {name: Segmenter.from_pretrained(path).model.state_dict() for name, path in runs.items()}
    assert all(torch.equal(w["a"][k], w["b"][k]) for k in w["a"])
    assert all(torch.equal(w["zero"][k], w["none"][k]) for k in w["a"])
    assert not all(torch.equal(w["a"][k], w["none"][k]) for k in w["a"])
