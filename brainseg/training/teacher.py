"""The distillation teacher (``TrainConfig.distill_from``) and :func:`place_model`, which puts a network on
a run's device."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from brainseg.inference.segmenter import autocast, load_model
from brainseg.io.hub import resolve_model


@dataclass
class Teacher:
    """A trained model whose probabilities are soft targets (``TrainConfig.distill_from``).

    Its logits are shifted by the logit of its tuned threshold, so a teacher probability of 0.5 is exactly its
    decision boundary. It runs one forward pass (no flip TTA, whatever its config says: that would double its cost
    for a small change in the targets). The bundled default was distilled from the routed pair of commit f58f376,
    whose router carried threshold 0.5 and shifted each member by its own threshold inside.
    """

    network: nn.Module
    offset: float  # logit of the teacher's threshold

    @classmethod
    def load(cls, source: str, device: torch.device) -> "Teacher":
        config, network = load_model(resolve_model(source))
        network = place_model(network, device).eval()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        print(f"distilling from {source} ({config.arch}, threshold {config.threshold})", flush=True)
        return cls(network, math.log(config.threshold / (1 - config.threshold)))

    @torch.no_grad()
    def probability(self, inputs: torch.Tensor, device: torch.device, bf16: bool) -> torch.Tensor:
        """float32 (N, 1, H, W) soft targets for model inputs ``inputs``."""
        with autocast(device, bf16):
            logits = self.network(inputs)
        return torch.sigmoid(logits.float() - self.offset)


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` (channels-last on the CPU)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model
