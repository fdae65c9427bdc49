"""Preprocessing exactly as the article, and flip augmentation."""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision import transforms
from torchvision.transforms import functional as F

MIN_STD = 1e-6


def normalize_per_image(images: torch.Tensor) -> torch.Tensor:
    """``Normalize(mean, 2*std)`` with each image's own mean/std over (C, H, W).

    Accepts (C, H, W) or (N, C, H, W). A constant image (std 0) maps to zeros, not NaN.
    """
    dims = (-3, -2, -1)
    std, mean = torch.std_mean(images, dim=dims, keepdim=True)
    return (images - mean) / (2 * std.clamp_min(MIN_STD))


def image_to_tensor(image: np.ndarray, size: int = 256) -> torch.Tensor:
    """``ToTensor`` then ``Resize((size, size))``: H x W x 3 uint8 -> 3 x size x size float in [0, 1]."""
    tensor = F.to_tensor(image)
    return transforms.Resize((size, size), antialias=True)(tensor)


def preprocess(image: np.ndarray, size: int = 256, normalize: bool = True) -> torch.Tensor:
    """The model input for one H x W x 3 uint8 image, shape 3 x size x size."""
    tensor = image_to_tensor(image, size)
    return normalize_per_image(tensor) if normalize else tensor


def uint8_batch_to_input(images: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> float model input; the same numbers as :func:`preprocess` at native size."""
    floats = images.float().div_(255.0)
    return normalize_per_image(floats) if normalize else floats


def flip_dataset_offline(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The article's augmentation: append a horizontally flipped copy (``cv2.flip(x, 1)``) of every pair."""
    flipped_images = np.stack([cv2.flip(img, 1) for img in images])
    flipped_masks = np.stack([cv2.flip(m.astype(np.uint8), 1).astype(masks.dtype) for m in masks])
    return np.concatenate([images, flipped_images]), np.concatenate([masks, flipped_masks])


def random_hflip(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, p: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each (image, mask) pair of a batch left-right with probability ``p``."""
    flip = torch.rand(images.shape[0], generator=generator) < p
    if flip.any():
        images = images.clone()
        masks = masks.clone()
        images[flip] = images[flip].flip(-1)
        masks[flip] = masks[flip].flip(-1)
    return images, masks


def random_affine_gamma(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    max_degrees: float = 15.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_shift: float = 0.06,
    gamma_range: tuple[float, float] = (0.8, 1.25),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patient-to-patient variation for a training batch, applied before normalization.

    ``images`` (N, 3, H, W) floats in [0, 1], ``masks`` (N, 1, H, W) of 0/1. Each pair gets its own random
    rotation, isotropic scale and shift (bilinear for the image, nearest for the mask, zero outside: MRI
    background is black), and each image channel its own gamma (contrast differs between scanners).
    """
    n = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    angle = torch.deg2rad(uniform(-max_degrees, max_degrees, n))
    scale = uniform(*scale_range, n)
    shift = uniform(-max_shift, max_shift, n, 2) * 2  # affine_grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    images = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = torch.nn.functional.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    log_gamma = uniform(float(np.log(gamma_range[0])), float(np.log(gamma_range[1])), n, images.shape[1], 1, 1)
    images = images.clamp(0.0, 1.0).pow(log_gamma.exp())
    return images, masks
