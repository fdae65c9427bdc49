import pytest
import torch

from brainseg.config import ModelConfig
from brainseg.model import UNet, count_parameters


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_output_shape_matches_input(depth: int) -> None:
    model = UNet(base_channels=8, depth=depth).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 1, 64, 96)
    proba = model.predict_proba(torch.randn(1, 3, 64, 64))
    assert proba.min() >= 0 and proba.max() <= 1


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
