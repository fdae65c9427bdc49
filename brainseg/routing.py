"""A routed model: today's network on the slices it was built for, a robust one on every other slice.

The default U-Net learned whole-head LGG slices with three distinct sequences (pre-contrast T1, FLAIR,
post-contrast T1) filling most of the frame; the robust models (docs/generalization.md) were trained for what
other hospitals send. :class:`RoutedNetwork` looks at each input slice and sends it to the *home* member when it
has that form, and to the *away* member otherwise. The rule uses only facts that the input carries exactly
(:class:`RouteRule`):

- *missing sequences*: the app and the volume pipeline fill a missing T1 or T1c with FLAIR, so a channel equal
  to FLAIR means the study lacked it (FLAIR only, FLAIR + T1c);
- *field of view*: the tissue spans less than ``min_extent`` of the frame in both directions (a small brain in a
  large frame; LGG heads span at least half and mostly > 0.7 of it, the ``half_frame`` form exactly 0.5).

- *skull-stripping* (with ``skull_detector``): no exact cue exists, so a small CNN trained on the training
  patients' slices as they are and skull-stripped (:mod:`brainseg.skull`) decides.

Each member's logit is shifted by the logit of its own tuned threshold, so the routed output crosses 0.5
exactly where the chosen member crosses its threshold: the routed config's threshold is 0.5 and the app's
slider keeps its meaning. Each member runs only on its own slices; the rule is plain tensor operations, so
the module also exports to ONNX as one graph (then both members run on every slice).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from .config import ROUTED, ModelConfig
from .ensemble import PROBABILITY_EPS, flip_averaged_probability
from .pixels import FLAIR
from .skull import SkullDetector
from .transforms import scale_to_unit_range

HOME, AWAY = 0, 1  # member order in a routed config
TISSUE_LEVEL = 0.04  # of the slice's min..max range: above it in any channel is tissue, below is background
MIN_TISSUE_PX = 3  # a row or column with fewer tissue pixels is background (noise specks do not widen the extent)


@dataclass(frozen=True)
class RouteRule:
    """When a slice goes to the away member (saved in ``config.json`` under ``route``)."""

    # a channel is "FLAIR copied in" when its mean absolute difference to FLAIR is under this fraction of
    # FLAIR's own mean absolute deviation (exact copies give 0; the LGG slices' smallest is 0.15 on validation)
    copy_tolerance: float = 0.02
    # a slice whose tissue spans less than this fraction of the frame in both directions goes away
    min_extent: float = 0.6
    # slices the model's :class:`brainseg.skull.SkullDetector` (its weights in the routed folder) calls
    # skull-stripped go away
    skull_detector: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.copy_tolerance < 1.0:
            raise ValueError(f"copy_tolerance must be in [0, 1), got {self.copy_tolerance}")
        if not 0.0 <= self.min_extent <= 1.0:
            raise ValueError(f"min_extent must be in [0, 1], got {self.min_extent}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_route(cls, route: dict[str, Any]) -> "RouteRule":
        """The rule from a config's ``route`` (other keys, such as ``sources``, are not the rule's)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in route.items() if k in names})


def copied_flair(x: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(N,) bool: slices of (N, 3, H, W) where another channel is FLAIR copied in (a missing sequence)."""
    scaled = scale_to_unit_range(x.float())  # the rule ignores the per-image normalization
    flair = scaled[:, FLAIR]
    spread = (flair - flair.mean(dim=(1, 2), keepdim=True)).abs().mean(dim=(1, 2)).clamp_min(1e-6)
    others = [c for c in range(scaled.shape[1]) if c != FLAIR]
    differences = torch.stack([(scaled[:, c] - flair).abs().mean(dim=(1, 2)) for c in others], dim=1)
    return differences.amin(dim=1) / spread < tolerance


def tissue_extent(x: torch.Tensor) -> torch.Tensor:
    """(N,) float: the larger of the fractions of rows and of columns spanned by tissue (first to last)."""
    tissue = (scale_to_unit_range(x.float()) > TISSUE_LEVEL).any(dim=1)  # N, H, W
    spans = []
    for counts in (tissue.sum(dim=2), tissue.sum(dim=1)):  # per row, per column
        occupied = counts >= MIN_TISSUE_PX
        index = torch.arange(counts.shape[1], device=x.device).expand_as(counts)
        first = torch.where(occupied, index, counts.shape[1]).amin(dim=1)
        last = torch.where(occupied, index, -1).amax(dim=1)
        spans.append(((last - first + 1).clamp_min(0)).float() / counts.shape[1])
    return torch.maximum(*spans)


def goes_away(x: torch.Tensor, rule: RouteRule) -> torch.Tensor:
    """(N,) bool: which slices of the model input (N, 3, H, W) the rule sends to the away member."""
    return copied_flair(x, rule.copy_tolerance) | (tissue_extent(x) < rule.min_extent)


def member_logit(member: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flip_tta: bool) -> torch.Tensor:
    """A member's float32 logits (N, 1, H, W); with ``flip_tta``, the logit of its flip-averaged probability."""
    if not flip_tta:
        return member(x).float()
    return torch.logit(flip_averaged_probability(member, x).clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS))


class RoutedNetwork(nn.Module):
    """Per slice, the home member's or the away member's logit, each shifted by its own threshold's logit."""

    def __init__(self, home: nn.Module, away: nn.Module, thresholds: tuple[float, float],
                 flip_tta: tuple[bool, bool], rule: RouteRule, detector: SkullDetector | None = None) -> None:
        super().__init__()
        if rule.skull_detector != (detector is not None):
            raise ValueError("a rule with skull_detector needs a detector, and only such a rule takes one")
        self.members = nn.ModuleList([home, away])
        self.detector = detector
        # what runs each member's forward (its module unless a backend such as ONNX Runtime was chosen for it:
        # :func:`brainseg.inference.choose_member_backends`); a float32 CPU tensor goes into a runner
        self.runners: list[Callable[[torch.Tensor], torch.Tensor] | None] = [None, None]
        self.offsets = tuple(math.log(t / (1 - t)) for t in thresholds)
        self.flip_tta = tuple(bool(flag) for flag in flip_tta)
        self.rule = rule

    def member_output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``index``'s logits minus its threshold's logit (> 0 exactly where it marks tumor)."""
        runner = self.runners[index]
        if runner is None:
            return member_logit(self.members[index], x, self.flip_tta[index]) - self.offsets[index]
        logit = member_logit(lambda batch: runner(batch.float().contiguous()), x, self.flip_tta[index])
        return logit.to(x.device) - self.offsets[index]

    def goes_away(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the slices the rule (and the skull detector, if any) sends to the away member."""
        away = goes_away(x, self.rule)
        return away if self.detector is None else away | (self.detector(x) > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        away = self.goes_away(x)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():  # one graph for every input
            return torch.where(away[:, None, None, None], self.member_output(AWAY, x), self.member_output(HOME, x))
        if not bool(away.any()):
            return self.member_output(HOME, x)
        if bool(away.all()):
            return self.member_output(AWAY, x)
        home_out = self.member_output(HOME, x[~away])
        out = home_out.new_empty((x.shape[0], *home_out.shape[1:]))
        out[~away] = home_out
        out[away] = self.member_output(AWAY, x[away])
        return out


def route(home: tuple[ModelConfig, nn.Module], away: tuple[ModelConfig, nn.Module], rule: RouteRule,
          sources: tuple[str, str] | None = None, min_component_px: int | None = None,
          extra: dict | None = None, detector: SkullDetector | None = None) -> tuple[ModelConfig, RoutedNetwork]:
    """One routed model (config and network, weights shared) from trained ``(config, network)`` pairs.

    ``sources`` (bundled names, folders or Hub ids) are recorded so that a folder saved without weights loads
    them from there. The threshold is 0.5 (each member's own threshold maps to it); ``min_component_px``
    defaults to the home member's, so that home slices get exactly the home model's masks.
    """
    (home_config, home_network), (away_config, away_network) = home, away
    config = ModelConfig(
        arch=ROUTED, in_channels=home_config.in_channels, input_size=home_config.input_size,
        normalize=home_config.normalize, threshold=0.5,
        min_component_px=home_config.min_component_px if min_component_px is None else min_component_px,
        flip_tta=False, members=[home_config.to_dict(), away_config.to_dict()],
        route={**rule.to_dict(), **({"sources": list(sources)} if sources else {})}, extra=dict(extra or {}),
    )
    network = RoutedNetwork(home_network, away_network, (home_config.threshold, away_config.threshold),
                            (home_config.flip_tta, away_config.flip_tta), rule, detector)
    return config, network


def by_reference(config: ModelConfig) -> bool:
    """Whether a routed config loads its members from ``route["sources"]`` (its folder then holds only the
    router's own weights: the skull detector's, if any)."""
    return config.arch == ROUTED and bool(config.route.get("sources"))


def self_contained(config: ModelConfig) -> ModelConfig:
    """The config to save beside *all* the weights (members included): ``sources`` dropped."""
    if not by_reference(config):
        return config
    return replace(config, route={k: v for k, v in config.route.items() if k != "sources"})
