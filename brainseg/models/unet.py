"""Network architectures and :func:`build_model`, the one factory that turns a config into a module.

The article's U-Net: DoubleConv blocks, max-pool down, bilinear up with skip concatenation. The Transformer
architectures are in :mod:`brainseg.models.transformer`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from brainseg.config import ARCHITECTURES, ModelConfig
from brainseg.models.transformer import TRANSFORMERS


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Bilinear 2x upsample, concatenate the skip connection, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net returning logits of shape (N, 1, H, W); H and W must be divisible by 2**depth.

    ``base_channels=64, depth=4`` is the article's model. Channels double at every
    down block; the bottleneck keeps the deepest encoder width, as with bilinear
    upsampling in the article's implementation.
    """

    def __init__(self, base_channels: int = 32, depth: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        widths = [base_channels * 2**level for level in range(depth)]
        self.inc = DoubleConv(in_channels, widths[0])
        down_out = widths[1:] + [widths[-1]]
        self.downs = nn.ModuleList(Down(widths[i], down_out[i]) for i in range(depth))
        ups = []
        below = widths[-1]
        for level in reversed(range(depth)):
            out = widths[level - 1] if level > 0 else widths[0]
            ups.append(Up(below + widths[level], out))
            below = out
        self.ups = nn.ModuleList(ups)
        self.outc = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


def _build_unet(config: ModelConfig) -> UNet:
    return UNet(base_channels=config.base_channels, depth=config.depth, in_channels=config.in_channels)


def _transformer_builder(name: str) -> Callable[[ModelConfig], nn.Module]:
    return lambda config: TRANSFORMERS[name](config.in_channels)


# one builder per name in brainseg.config.ARCHITECTURES (tests/test_model.py checks they match)
BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "unet": _build_unet, **{name: _transformer_builder(name) for name in TRANSFORMERS},
}


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised network of the architecture and size ``config`` names."""
    builder = BUILDERS.get(config.arch)
    if builder is None:
        raise ValueError(f"unknown architecture {config.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    return builder(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable and frozen parameters."""
    return sum(p.numel() for p in model.parameters())
