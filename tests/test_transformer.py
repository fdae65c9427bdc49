"""The Transformer segmenters: shapes, no download at construction, save/load by folder and by bundled name."""
import json
import socket

import numpy as np
import pytest
import torch
from conftest import assert_matches_recorded, evaluate_bundled

from brainseg import Segmenter, bundled_models
from brainseg.config import TRANSFORMER_ARCHITECTURES, ModelConfig
from brainseg.io.hub import BUNDLED_LABEL, BUNDLED_MODEL_DIR, BUNDLED_MODELS_DIR, ModelLoadError, resolve_model
from brainseg.models.transformer import STRIDE
from brainseg.models.unet import build_model, count_parameters
from brainseg.training.config import TrainConfig

TRANSFORMER_NAME = "segformer-b0"  # the bundled Transformer's name (assets/models/segformer-b0)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("arch", TRANSFORMER_ARCHITECTURES)
def test_forward_gives_one_logit_map_at_input_size(arch: str, no_network) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch)).eval()
    assert 3_000_000 < count_parameters(model) < 5_000_000  # <= 20 MB of fp32 safetensors
    with torch.no_grad():
        assert model(torch.randn(2, 3, 256, 256)).shape == (2, 1, 256, 256)
        assert model(torch.randn(1, 3, 4 * STRIDE, 10 * STRIDE)).shape == (1, 1, 128, 320)
        if arch == "segformer_mit_b0":  # its decoder needs whole 32-px cells; the U-Net decoder resizes its skips
            with pytest.raises(RuntimeError, match="divisible by 32"):
                model(torch.randn(1, 3, 250, 256))
        else:
            assert model(torch.randn(1, 3, 250, 256)).shape == (1, 1, 250, 256)


def test_transformer_configs_are_shaped_by_arch_alone() -> None:
    a = ModelConfig(arch="segformer_mit_b0", base_channels=16, depth=4)
    b = ModelConfig(arch="segformer_mit_b0", base_channels=32, depth=5)
    assert a.architecture() == b.architecture() == {"arch": "segformer_mit_b0", "in_channels": 3}
    assert ModelConfig(base_channels=16).architecture() != ModelConfig(base_channels=32).architecture()
    assert TrainConfig(data_dir="d", out_dir="o", arch="unet_mit_b0").model_config().arch == "unet_mit_b0"
    with pytest.raises(ValueError, match="unknown arch 'vit'"):
        TrainConfig(data_dir="d", out_dir="o", arch="vit")


@pytest.mark.slow  # ~10 s of CPU per architecture
@pytest.mark.parametrize("arch", TRANSFORMER_ARCHITECTURES)
def test_save_and_load_round_trip_gives_the_same_probabilities(arch: str, tmp_path, no_network) -> None:
    torch.manual_seed(1)
    config = ModelConfig(arch=arch, threshold=0.3, min_component_px=10)
    original = Segmenter(build_model(config), config, device="cpu")
    folder = original.save_pretrained(tmp_path / "model")
    assert json.loads((folder / "config.json").read_text())["arch"] == arch
    loaded = Segmenter.from_pretrained(folder, device="cpu")
    assert loaded.config == config and type(loaded.model) is type(original.model)
    saved, restored = original.model.state_dict(), loaded.model.state_dict()
    assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    image = np.random.default_rng(0).integers(0, 256, (200, 180, 3), dtype=np.uint8)  # not the input size
    expected, got = original.predict_proba(image), loaded.predict_proba(image)
    assert got.shape == (200, 180)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # same weights; CPU kernels may reorder float sums
    assert 0.0 < got.min() < got.max() < 1.0


def test_bundled_models_are_listed_by_name_and_each_loads(no_network) -> None:
    models = bundled_models()
    assert list(models)[:2] == ["unet-generalist", "unet"], "the default first, then the U-Net"
    assert models["unet-generalist"] == BUNDLED_MODEL_DIR and models["unet"] == BUNDLED_MODELS_DIR / "unet"
    assert TRANSFORMER_NAME in models, f"the bundled Transformer is missing: {models}"
    image = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    archs = {}
    for name, folder in models.items():
        segmenter = Segmenter.from_pretrained(name, device="cpu")
        assert segmenter.config == ModelConfig.load(folder)
        assert (folder / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
        assert segmenter.predict_proba(image).shape == (256, 256)
        archs[name] = segmenter.config.arch
    assert archs["unet"] == "unet" and archs[TRANSFORMER_NAME] in TRANSFORMER_ARCHITECTURES
    assert archs["unet-generalist"] == "unet"
    assert resolve_model("unet-generalist").source == BUNDLED_LABEL == resolve_model(None).source
    assert resolve_model("unet").source == "bundled unet"
    assert resolve_model(TRANSFORMER_NAME).source == f"bundled {TRANSFORMER_NAME}"
    assert [resolve_model(name).name for name in (None, "unet", TRANSFORMER_NAME)] == [
        "unet-generalist", "unet", TRANSFORMER_NAME]


def test_a_local_folder_wins_over_a_bundled_name(tmp_path, monkeypatch) -> None:
    torch.manual_seed(3)
    config = ModelConfig(base_channels=4, depth=2)
    Segmenter(build_model(config), config, device="cpu").save_pretrained(tmp_path / "unet")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("unet").folder.resolve() == (tmp_path / "unet").resolve()
    assert Segmenter.from_pretrained("unet", device="cpu").config.base_channels == 4
    with pytest.raises(ModelLoadError, match=r"nor the name of a bundled model \(unet-generalist, unet"):
        resolve_model("no-such-model")


@pytest.mark.slow  # all 369 held-out slices through the bundled Transformer, in a subprocess
def test_bundled_transformer_reproduces_its_recorded_metrics(lgg_test_dir, tmp_path) -> None:
    result = evaluate_bundled(lgg_test_dir, tmp_path / "eval.json", TRANSFORMER_NAME)
    assert (result["n_slices"], result["n_tumor_slices"], result["n_patients"]) == (369, 106, 11)
    assert_matches_recorded(result, bundled_models()[TRANSFORMER_NAME])
