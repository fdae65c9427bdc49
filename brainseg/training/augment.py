"""Training augmentations for scans from other hospitals: skull-stripping, missing channels, acquisition.

Each works on a training batch and draws its randomness from the batch's ``torch.Generator`` (so a seeded run,
and a resumed one, sees the same augmented batches):

- :func:`random_skull_strip`: with probability ``p`` a slice keeps only its brain (the heuristic mask of
  :mod:`brainseg.inference.brainmask`, computed once per training slice); the tumor mask is cut to the same brain, so
  no label sits on a blanked pixel.
- :func:`random_missing_channels`: with probability ``p`` a slice loses its pre-contrast T1 (FLAIR + T1c) or
  both T1s (FLAIR only), replaced by the FLAIR channel, exactly as the volume pipeline and the app fill a
  missing sequence.
- :func:`random_acquisition`: MONAI intensity transforms, each with its own probability: bias field, lower
  resolution (thick slices, blur), histogram shift (other contrast curves), noise inside the head. (MONAI's
  Gaussian smoothing was left out: 120 ms a slice on this CPU, where the low-resolution one takes 2 ms.)

The wide scale range (brain at half the frame up to larger than in the LGG slices) is
:func:`brainseg.inference.preprocess.random_affine_gamma`'s ``scale_range``.
"""
from __future__ import annotations

import torch

from brainseg.io.pixels import FLAIR

FLAIR_ONLY_SHARE = 0.6  # of the slices that lose channels, the share that keeps FLAIR alone (else FLAIR + T1c)


def _chosen(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """(n,) bool: which slices of a batch an augmentation applied with probability ``p`` touches."""
    return torch.rand(n, generator=generator) < p


def random_skull_strip(
    images: torch.Tensor, masks: torch.Tensor, brains: torch.Tensor, p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blank everything outside the brain of a random share ``p`` of the slices.

    ``images`` (N, C, H, W) (any dtype), ``masks`` (N, K, H, W) floats (the tumor mask, and soft targets that
    ride along), ``brains`` (N, H, W) bool. The chosen slices' masks are cut to their brain as well.
    """
    chosen = _chosen(images.shape[0], p, generator)
    if not chosen.any():
        return images, masks
    keep = torch.ones_like(masks[:, :1], dtype=torch.bool)
    keep[chosen] = brains[chosen].unsqueeze(1)
    return images * keep.to(images.dtype), masks * keep.to(masks.dtype)


def random_missing_channels(inputs: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace the T1 (and for :data:`FLAIR_ONLY_SHARE` of them also the T1c) of a share ``p`` by the FLAIR.

    ``inputs`` (N, 3, H, W); the FLAIR channel itself is never changed.
    """
    n = inputs.shape[0]
    chosen = _chosen(n, p, generator)
    flair_only = chosen & (torch.rand(n, generator=generator) < FLAIR_ONLY_SHARE)
    if not chosen.any():
        return inputs
    inputs = inputs.clone()
    inputs[chosen, 0] = inputs[chosen, FLAIR]
    inputs[flair_only, 2] = inputs[flair_only, FLAIR]
    return inputs


def acquisition_transforms(seed: int):
    """The MONAI intensity transforms of :func:`random_acquisition`, seeded (a ``monai.transforms.Compose``)."""
    from monai.transforms import (  # imported here: only training needs MONAI
        Compose,
        RandBiasField,
        RandGaussianNoise,
        RandHistogramShift,
        RandSimulateLowResolution,
    )

    compose = Compose([
        RandBiasField(degree=3, coeff_range=(0.0, 0.25), prob=0.3),
        RandSimulateLowResolution(zoom_range=(0.4, 0.9), upsample_mode="bilinear", prob=0.25),
        RandHistogramShift(num_control_points=(5, 10), prob=0.15),
        RandGaussianNoise(mean=0.0, std=0.04, prob=0.15),
    ])
    compose.set_random_state(seed=seed)
    return compose


def _plain(array) -> torch.Tensor:
    """A MONAI result (``MetaTensor``, tensor or array) as a plain float tensor."""
    return (array.as_tensor() if hasattr(array, "as_tensor") else torch.as_tensor(array)).float()


def random_acquisition(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scanner and protocol variation on (N, C, H, W) floats in [0, 1]; returns the same shape, in [0, 1].

    Each slice gets its own draw of :func:`acquisition_transforms` (seeded from ``generator``); the background
    (pixels that were 0 in every channel) stays 0, as in real (and skull-stripped) scans.
    """
    transforms = acquisition_transforms(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    background = (inputs == 0).all(dim=1, keepdim=True)
    out = torch.stack([_plain(transforms(slice_)) for slice_ in inputs])
    return out.clamp_(0.0, 1.0).masked_fill_(background, 0.0)


def random_quarter_turns(
    tensors: list[torch.Tensor], p: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """Turn a random share ``p`` of the slices by 90°, 180° or 270°, then flip half of those upside down.

    ``tensors`` are (N, C, H, W) batches that belong together (inputs, masks, soft targets): each chosen slice
    gets the same turn and flip in all of them, so masks stay aligned. Square slices only (H == W). Uploads
    arrive turned or mirrored (a slice exported in another orientation); the horizontal flip is
    :func:`brainseg.inference.preprocess.random_hflip`'s.
    """
    n = tensors[0].shape[0]
    chosen = _chosen(n, p, generator)
    turns = torch.randint(1, 4, (n,), generator=generator)
    upside_down = torch.rand(n, generator=generator) < 0.5
    if not chosen.any():
        return tensors
    out = [t.clone() for t in tensors]
    for i in torch.nonzero(chosen).flatten().tolist():
        for t_out, t_in in zip(out, tensors):
            turned = torch.rot90(t_in[i], int(turns[i]), dims=(-2, -1))
            t_out[i] = turned.flip(-2) if bool(upside_down[i]) else turned
    return out
