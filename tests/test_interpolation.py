"""Weight interpolation of a network and one fine-tuned from it (WiSE-FT): exact weights, refusals, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainseg import Segmenter
from brainseg.config import ModelConfig
from brainseg.models.unet import build_model
from brainseg.training.interpolation import interpolate, interpolate_states


def two_networks(config: ModelConfig | None = None) -> list[tuple[ModelConfig, torch.nn.Module]]:
    config = config or ModelConfig(base_channels=4, depth=2)
    pairs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        network = build_model(config)
        with torch.no_grad():  # batch-norm statistics that differ between the two, as after fine-tuning
            for module in network.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-1, 1)
                    module.running_var.uniform_(0.5, 2)
                    module.num_batches_tracked.fill_(10 * (seed + 1))
        pairs.append((ModelConfig.from_dict(config.to_dict()), network.eval()))
    return pairs


def test_every_float_tensor_is_the_weighted_mean_and_the_ends_are_the_two_networks() -> None:
    (c0, start), (c1, end) = two_networks()
    for alpha in (0.0, 0.3, 1.0):
        config, mixed = interpolate((c0, start), (c1, end), alpha)
        state, a, b = mixed.state_dict(), start.state_dict(), end.state_dict()
        for name, value in state.items():
            if value.is_floating_point():
                assert torch.allclose(value, (1 - alpha) * a[name] + alpha * b[name], atol=1e-6), name
            else:
                assert torch.equal(value, b[name]), name  # step counters are the end's
        assert config.extra["interpolation_alpha"] == alpha
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(interpolate((c0, start), (c1, end), 0.0)[1](x), start(x), atol=1e-5)
        assert torch.allclose(interpolate((c0, start), (c1, end), 1.0)[1](x), end(x), atol=1e-5)
        half = interpolate((c0, start), (c1, end), 0.5)[1](x)
    assert not torch.allclose(half, start(x), atol=1e-3) and not torch.allclose(half, end(x), atol=1e-3)


def test_the_inputs_are_untouched_and_the_dtype_of_the_end_is_kept() -> None:
    (c0, start), (c1, end) = two_networks()
    before = {k: v.clone() for k, v in end.state_dict().items()}
    interpolate((c0, start), (c1, end), 0.5)
    assert all(torch.equal(before[k], v) for k, v in end.state_dict().items())
    half = {k: v.half() if v.is_floating_point() else v for k, v in end.state_dict().items()}
    mixed = interpolate_states(start.state_dict(), half, 0.25)
    assert all(mixed[k].dtype == half[k].dtype for k in half)


def test_networks_that_cannot_be_interpolated_are_refused_with_the_reason() -> None:
    (c0, start), (c1, end) = two_networks()
    with pytest.raises(ValueError, match="between 0"):
        interpolate((c0, start), (c1, end), 1.5)
    (c2, wider), _ = two_networks(ModelConfig(base_channels=6, depth=2))
    with pytest.raises(ValueError, match="same architecture"):
        interpolate((c2, wider), (c1, end), 0.5)
    other_input = ModelConfig.from_dict({**c1.to_dict(), "normalize": False})
    with pytest.raises(ValueError, match="normalize"):
        interpolate((c0, start), (other_input, end), 0.5)
    state = start.state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(ValueError, match="different tensors"):
        interpolate_states(state, end.state_dict(), 0.5)


@pytest.mark.slow  # ~13 s of CPU: interpolates and tunes
def test_cli_interpolates_the_bundled_unets_and_tunes_on_validation_only(lgg_test_dir, tmp_path, capsys) -> None:
    from conftest import link_standin_patients

    from brainseg.cli.interpolate import main
    from brainseg.io.dataset import load_slices, make_split

    data = tmp_path / "data"
    link_standin_patients(lgg_test_dir, data, [range(14, 20), range(20, 26), range(26, 32), range(10, 16)])
    out = tmp_path / "wise"
    assert main(["--start", "unet", "--end", "unet-generalist", "--alpha", "0.5", "--out-dir", str(out),
                 "--data-dir", str(data), "--val-fraction", "0.5", "--flip-tta", "off"]) == 0
    printed = json.loads(capsys.readouterr().out)
    config = ModelConfig.load(out)
    assert config.extra["interpolation_alpha"] == 0.5
    assert config.extra["interpolated_from"] == ["bundled unet", "bundled default"]  # the default resolves as such
    assert printed["chosen"] == {"threshold": config.threshold, "min_component_px": config.min_component_px,
                                 "flip_tta": False}
    assert "validation patients" in config.extra["tuned_on"]
    assert printed["validation"]["slice_dice"] > 0.5

    # the folder's weights are the mean of the two bundled U-Nets' and it segments like a model between them
    ends = [Segmenter.from_pretrained(name, device="cpu", backend="torch") for name in ("unet", "unet-generalist")]
    mixed = Segmenter.from_pretrained(out, device="cpu", backend="torch")
    a, b = (e.model.state_dict() for e in ends)
    for name, value in mixed.model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (a[name] + b[name]) / 2, atol=1e-6), name
    images, _ = load_slices(list(make_split(data, "patient", 0.5, 2026).val))
    probabilities = [s.predict_proba_batch(images) for s in (*ends, mixed)]
    assert np.abs(probabilities[2] - probabilities[0]).mean() > 1e-4
    assert np.abs(probabilities[2] - probabilities[1]).mean() > 1e-4

    assert main(["--start", "unet", "--end", "segformer-b0", "--alpha", "0.5", "--out-dir", str(tmp_path / "x"),
                 "--no-tune"]) == 2
    assert "same architecture" in capsys.readouterr().err
    assert main(["--start", "unet", "--end", "unet-generalist", "--alpha", "0.5",
                 "--out-dir", str(tmp_path / "x")]) == 2
    assert "--data-dir (the full dataset) is needed" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    # without tuning no data is read: the end network's post-processing is kept
    assert main(["--start", "unet", "--end", "unet-generalist", "--alpha", "0.25", "--out-dir", str(tmp_path / "raw"),
                 "--no-tune"]) == 0
    untuned, robust = ModelConfig.load(tmp_path / "raw"), ends[1].config
    assert json.loads(capsys.readouterr().out)["validation"] is None
    assert (untuned.threshold, untuned.min_component_px, untuned.flip_tta) == (
        robust.threshold, robust.min_component_px, robust.flip_tta)
