"""Transformer segmenters: a Mix-Transformer (MiT-b0, the SegFormer encoder) from segmentation-models-pytorch.

Both networks are randomly initialised (``encoder_weights=None``): nothing is downloaded, at construction or
ever. They map ``(N, 3, H, W)`` to logits ``(N, 1, H, W)`` for H and W divisible by 32 (``segformer_mit_b0``
refuses other sizes; :class:`brainseg.inference.segmenter.Segmenter` always feeds ``input_size``, 256).

- ``segformer_mit_b0``: SegFormer-B0 (MiT-b0 encoder, all-MLP decoder of width 256). The decoder works at 1/4 of
  the input resolution and its logits are upsampled 4x bilinearly, so lesion borders are drawn at 4-px steps.
- ``unet_mit_b0``: the same MiT-b0 encoder under a U-Net decoder (channels 128, 64, 32, 16, 16) that upsamples
  back to full resolution with a 3x3-convolution block at each scale.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

MIT_B0 = "mit_b0"
STRIDE = 32  # the MiT encoder downsamples by 32: input sides must be multiples of it
UNET_DECODER_CHANNELS = (128, 64, 32, 16, 16)
SEGFORMER_DECODER_CHANNELS = 256  # SegFormer-B0's decoder width


def _smp():
    """segmentation_models_pytorch, imported on first use (it imports timm: a few seconds)."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:  # a user can meet this with a partial install
        raise ImportError(
            "Transformer models need segmentation-models-pytorch: pip install segmentation-models-pytorch"
        ) from exc
    return smp


def segformer_mit_b0(in_channels: int = 3) -> nn.Module:
    """SegFormer-B0, random init; logits at full input size (upsampled from 1/4)."""
    return _smp().Segformer(encoder_name=MIT_B0, encoder_weights=None, in_channels=in_channels, classes=1,
                            decoder_segmentation_channels=SEGFORMER_DECODER_CHANNELS)


def unet_mit_b0(in_channels: int = 3) -> nn.Module:
    """MiT-b0 encoder + U-Net decoder at full resolution, random init."""
    return _smp().Unet(encoder_name=MIT_B0, encoder_weights=None, in_channels=in_channels, classes=1,
                       decoder_channels=UNET_DECODER_CHANNELS)


# one constructor per name in brainseg.config.TRANSFORMER_ARCHITECTURES
TRANSFORMERS: dict[str, Callable[[int], nn.Module]] = {
    "segformer_mit_b0": segformer_mit_b0,
    "unet_mit_b0": unet_mit_b0,
}
