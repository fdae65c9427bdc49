"""An ensemble network: the mean probability of several trained networks, exported and run as one model.

Each member keeps its own horizontal-flip test-time augmentation (``flip_tta`` of its config, applied inside
the forward pass), so the ensemble's own config leaves ``flip_tta`` off. The forward returns the logit of the
mean probability: :class:`brainseg.inference.Segmenter` takes its sigmoid like any network's output, and the
graph exports to ONNX as one model.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .config import ENSEMBLE, ModelConfig

# probabilities are clamped this far from 0 and 1 before the logit, so the output stays finite
PROBABILITY_EPS = 1e-6


def flip_averaged_probability(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """float32 probabilities of ``forward``'s logits averaged with those of the left-right flipped input."""
    return (torch.sigmoid(forward(x).float()) + torch.sigmoid(forward(x.flip(-1)).float()).flip(-1)) / 2


class MeanProbabilityEnsemble(nn.Module):
    """Logits of the mean of the members' sigmoid probabilities; member ``i`` averages itself over a horizontal
    flip when ``flip_tta[i]``."""

    def __init__(self, members: Sequence[nn.Module], flip_tta: Sequence[bool]) -> None:
        super().__init__()
        if len(members) != len(flip_tta):
            raise ValueError(f"{len(members)} members but {len(flip_tta)} flip_tta flags")
        self.members = nn.ModuleList(members)
        self.flip_tta = tuple(bool(flag) for flag in flip_tta)

    def member_probability(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``index``'s float32 probabilities (N, 1, H, W), its flip TTA included."""
        member = self.members[index]
        if self.flip_tta[index]:
            return flip_averaged_probability(member, x)
        return torch.sigmoid(member(x).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([self.member_probability(i, x) for i in range(len(self.members))]).mean(0)
        return torch.logit(mean.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS))


def combine(members: Sequence[tuple[ModelConfig, nn.Module]], threshold: float = 0.5,
            min_component_px: int = 0, extra: dict | None = None) -> tuple[ModelConfig, MeanProbabilityEnsemble]:
    """One ensemble (config and network) from trained ``(config, network)`` pairs, weights shared, not copied.

    The members must share the input (:data:`brainseg.config.SHARED_INPUT_FIELDS`); ``ModelConfig`` refuses
    them otherwise. ``threshold`` and ``min_component_px`` are the ensemble's own post-processing (tune them on
    validation patients: the members' thresholds do not carry over to their mean).
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
    first = members[0][0]
    config = ModelConfig(
        arch=ENSEMBLE, in_channels=first.in_channels, input_size=first.input_size, normalize=first.normalize,
        threshold=threshold, min_component_px=min_component_px, flip_tta=False,
        members=[member_config.to_dict() for member_config, _ in members], extra=dict(extra or {}),
    )
    network = MeanProbabilityEnsemble([network for _, network in members], [c.flip_tta for c, _ in members])
    return config, network
