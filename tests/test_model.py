import json

import pytest
import torch

from brainseg.config import ARCHITECTURES, ModelConfig
from brainseg.models.unet import BUILDERS, UNet, build_model, count_parameters


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_output_shape_matches_input(depth: int) -> None:
    model = UNet(base_channels=8, depth=depth).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 1, 64, 96)


def test_seed_config_is_the_articles_13_4m_parameter_unet() -> None:
    assert count_parameters(UNet(base_channels=64, depth=4)) == 13_391_361


def test_parameter_count_scales_with_width_and_depth() -> None:
    assert count_parameters(UNet(16, 4)) == 838_785
    assert count_parameters(UNet(64, 2)) < count_parameters(UNet(64, 3)) < count_parameters(UNet(64, 4))


def test_config_rejects_bad_values_and_newer_versions(tmp_path) -> None:
    with pytest.raises(ValueError, match="depth"):
        ModelConfig(depth=6)
    with pytest.raises(ValueError, match="upgrade brainseg"):
        ModelConfig.from_dict({"version": 99})
    cfg = ModelConfig(base_channels=8, depth=3, normalize=False, threshold=0.4)
    cfg.save(tmp_path)
    assert ModelConfig.load(tmp_path) == cfg


def test_build_model_makes_the_configured_unet() -> None:
    model = build_model(ModelConfig(base_channels=16, depth=4))
    assert isinstance(model, UNet) and count_parameters(model) == 838_785
    assert count_parameters(build_model(ModelConfig(base_channels=64, depth=4, in_channels=3))) == 13_391_361
    assert set(BUILDERS) == set(ARCHITECTURES), "every architecture a config may name needs a builder"


def test_arch_is_checked_and_old_configs_are_unets(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown architecture 'vit'.*upgrade brainseg"):
        ModelConfig(arch="vit")
    with pytest.raises(ValueError, match="unknown architecture 'unet2'"):
        ModelConfig.from_dict({"arch": "unet2", "base_channels": 8})
    old = ModelConfig(base_channels=8, depth=3).to_dict()
    del old["arch"]  # config.json files written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = ModelConfig.load(tmp_path)
    assert loaded.arch == "unet" and "arch" not in loaded.extra and isinstance(build_model(loaded), UNet)
    assert ModelConfig.load(tmp_path) == ModelConfig(base_channels=8, depth=3)
    changed = ModelConfig()
    changed.arch = "vit"  # set after the check: build_model still refuses it clearly
    with pytest.raises(ValueError, match="unknown architecture 'vit': choose one of unet"):
        build_model(changed)
