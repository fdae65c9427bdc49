"""The ensemble model: mean of member probabilities (each with its own flip TTA), one folder, one ONNX graph."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import brainseg
from brainseg import Segmenter
from brainseg.config import ModelConfig
from brainseg.ensemble import MeanProbabilityEnsemble, combine
from brainseg.model import build_model, count_parameters
from brainseg.weights import save_model


def small_members() -> list[tuple[ModelConfig, torch.nn.Module]]:
    torch.manual_seed(0)
    configs = [ModelConfig(base_channels=4, depth=2, flip_tta=True), ModelConfig(base_channels=6, depth=3)]
    return [(config, build_model(config).eval()) for config in configs]


def member_probability(network: torch.nn.Module, x: torch.Tensor, flip: bool) -> torch.Tensor:
    proba = torch.sigmoid(network(x))
    return (proba + torch.sigmoid(network(x.flip(-1))).flip(-1)) / 2 if flip else proba


def test_ensemble_outputs_the_logit_of_the_members_mean_probability_with_their_own_flip_tta() -> None:
    members = small_members()
    config, network = combine(members, threshold=0.3, min_component_px=20)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = (member_probability(members[0][1], x, True) + member_probability(members[1][1], x, False)) / 2
        got = torch.sigmoid(network(x))
        # the flip matters: without it on member 0 the mean differs
        unflipped = (member_probability(members[0][1], x, False) + member_probability(members[1][1], x, False)) / 2
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, unflipped, atol=1e-3)
    assert config.arch == "ensemble" and not config.flip_tta
    assert (config.threshold, config.min_component_px) == (0.3, 20)
    assert [m["base_channels"] for m in config.members] == [4, 6]
    assert count_parameters(network) == sum(count_parameters(n) for _, n in members)


def test_an_ensemble_folder_in_float16_loads_through_the_one_load_path_and_predicts_the_same(tmp_path) -> None:
    config, network = combine(small_members(), threshold=0.4)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    in_memory = Segmenter(network, config, device="cpu", backend="torch").predict_proba(image)
    save_model(network, config, tmp_path / "fp32")
    save_model(network, config, tmp_path / "fp16", torch.float16)
    sizes = [(tmp_path / name / "model.safetensors").stat().st_size for name in ("fp32", "fp16")]
    assert sizes[1] < 0.6 * sizes[0]
    for name, tolerance in (("fp32", 1e-6), ("fp16", 2e-3)):
        loaded = Segmenter.from_pretrained(tmp_path / name, device="cpu", backend="torch")
        assert isinstance(loaded.model, MeanProbabilityEnsemble)
        assert next(loaded.model.parameters()).dtype == torch.float32  # stored half, computed in float32
        assert loaded.config == config
        assert np.abs(loaded.predict_proba(image) - in_memory).max() < tolerance
    onnx = Segmenter.from_pretrained(tmp_path / "fp16", device="cpu", backend="onnx")
    torch_fp16 = Segmenter.from_pretrained(tmp_path / "fp16", device="cpu", backend="torch")
    assert np.abs(onnx.predict_proba(image) - torch_fp16.predict_proba(image)).max() < 1e-4


def test_configs_an_ensemble_cannot_run_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="at least two members, got 0"):
        combine([])
    unet = ModelConfig(base_channels=4, depth=2).to_dict()
    with pytest.raises(ValueError, match="at least two members"):
        ModelConfig(arch="ensemble", members=[unet])
    with pytest.raises(ValueError, match="normalize"):
        ModelConfig(arch="ensemble", members=[unet, ModelConfig(normalize=False).to_dict()])
    nested = ModelConfig(arch="ensemble", members=[unet, unet]).to_dict()
    with pytest.raises(ValueError, match="itself an ensemble"):
        ModelConfig(arch="ensemble", members=[unet, nested])
    with pytest.raises(ValueError, match="only an ensemble"):
        ModelConfig(arch="unet", members=[unet, unet])
    saved = ModelConfig.from_dict(json.loads(json.dumps(nested)))
    member_architecture = ModelConfig(base_channels=4, depth=2).architecture()
    assert saved.architecture() == {"arch": "ensemble", "members": [member_architecture] * 2}


def test_ensemble_cli_combines_bundled_models_and_tunes_on_validation_only(lgg_test_dir, tmp_path, capsys) -> None:
    from conftest import link_standin_patients

    from brainseg.data import load_slices, make_split
    from train.ensemble import main

    data = tmp_path / "data"
    link_standin_patients(lgg_test_dir, data, [range(14, 20), range(20, 26), range(26, 32), range(10, 16)])
    out = tmp_path / "ens"
    args = ["--member", "unet", "--member", "unet-robust", "--out-dir", str(out), "--data-dir", str(data),
            "--val-fraction", "0.5", "--weights-dtype", "float16"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    config = ModelConfig.load(out)
    assert config.arch == "ensemble" and printed["chosen"]["threshold"] == config.threshold
    assert (config.extra["split"], config.extra["split_seed"], config.extra["val_fraction"]) == ("patient", 2026, 0.5)
    assert [m.get("arch", "unet") for m in config.members] == ["unet", "unet"]
    assert [m["flip_tta"] for m in config.members] == [False, True]  # each member's own TTA is kept
    member_bytes = (brainseg.bundled_models()["unet"] / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.55 * 2 * member_bytes  # two float32 U-Nets stored in float16

    val = make_split(data, "patient", 0.5, 2026).val
    images, _ = load_slices(list(val))
    members = [Segmenter.from_pretrained(name, device="cpu", backend="torch") for name in ("unet", "unet-robust")]
    mean = np.mean([m.predict_proba_batch(images) for m in members], axis=0)
    ensemble = Segmenter.from_pretrained(out, device="cpu", backend="torch")
    assert np.abs(ensemble.predict_proba_batch(images) - mean).max() < 5e-3
    assert printed["validation"]["slice_dice"] > 0.5

    assert main(["--member", "unet", "--out-dir", str(out), "--data-dir", str(data)]) == 2
    assert "at least two" in capsys.readouterr().err
