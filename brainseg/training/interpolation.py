"""Weight-space interpolation of two trained networks of one lineage (WiSE-FT, Wortsman et al., CVPR 2022).

A network fine-tuned from another (``unet-robust`` from the default U-Net) stays linearly connected to it: the
weights ``(1 - alpha) * start + alpha * end`` form one network that trades the start's home accuracy against the
end's robustness as ``alpha`` moves from 0 to 1, at the cost of one network (not an ensemble's two). Made by
``brainseg interpolate``, which picks nothing itself: ``alpha`` is chosen on validation patients
(``brainseg choose``) and the post-processing is tuned there too.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from brainseg.config import ModelConfig

SHARED_INPUT_FIELDS = ("in_channels", "input_size", "normalize")  # what both ends must share: the same input


def interpolate_states(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                       alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * end`` for every floating-point tensor (computed in float32, stored in
    ``end``'s dtype); integer tensors (batch-norm step counters) are ``end``'s."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 (the start network) and 1 (the end network), got {alpha}")
    if start.keys() != end.keys():
        differing = sorted(start.keys() ^ end.keys())
        raise ValueError(f"the two networks have different tensors ({', '.join(differing[:3])}, ...): "
                         "interpolate only a network and one fine-tuned from it")
    mixed = {}
    for name, end_tensor in end.items():
        start_tensor = start[name]
        if start_tensor.shape != end_tensor.shape:
            raise ValueError(f"tensor {name} has shape {tuple(start_tensor.shape)} in the start network and "
                             f"{tuple(end_tensor.shape)} in the end network: they are not the same architecture")
        if end_tensor.is_floating_point():
            value = (1.0 - alpha) * start_tensor.float() + alpha * end_tensor.float()
            mixed[name] = value.to(end_tensor.dtype)
        else:
            mixed[name] = end_tensor.clone()
    return mixed


def interpolate(start: tuple[ModelConfig, nn.Module], end: tuple[ModelConfig, nn.Module], alpha: float,
                extra: dict | None = None) -> tuple[ModelConfig, nn.Module]:
    """A new network (and config) with weights ``(1 - alpha) * start + alpha * end``; the inputs are unchanged.

    Both must have the same architecture and input; the config is ``end``'s (post-processing included: tune it
    on validation patients, the ends' thresholds need not suit the mixture) with ``extra`` recorded.
    """
    (start_config, start_network), (end_config, end_network) = start, end
    if start_config.architecture() != end_config.architecture():
        raise ValueError(f"the start network is {start_config.architecture()} but the end network "
                         f"{end_config.architecture()}: interpolate two networks of the same architecture")
    for name in SHARED_INPUT_FIELDS:
        if getattr(start_config, name) != getattr(end_config, name):
            raise ValueError(f"the start network has {name}={getattr(start_config, name)!r} but the end network "
                             f"{getattr(end_config, name)!r}: both must see the same input")
    network = copy.deepcopy(end_network)
    network.load_state_dict(interpolate_states(start_network.state_dict(), end_network.state_dict(), alpha))
    config = ModelConfig.from_dict(end_config.to_dict())
    config.extra = {**config.extra, **(extra or {}), "interpolation_alpha": alpha}
    return config, network
