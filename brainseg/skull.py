"""A small learned detector of skull-stripped slices, for :mod:`brainseg.routing`.

No hand-made per-slice cue separates a whole-head LGG slice from a skull-stripped one reliably (docs/
generalization.md measures two), but the skull and scalp ring is plain to see. :class:`SkullDetector` is a
four-layer CNN on the model input at a quarter of its size (~13 k parameters, well under a millisecond a slice),
trained by :func:`train_skull_detector` on the *training* patients' slices as they are (label 0) and in the
``skull_stripped`` form (label 1, :mod:`brainseg.forms`), with flips and quarter turns. Slices with almost no
brain carry no answer and are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .brainmask import brain_masks
from .transforms import scale_to_unit_range, uint8_batch_to_input

DETECTOR_INPUT_SIZE = 64  # the model input is average-pooled to this size
MIN_BRAIN_FRACTION = 0.02  # of the frame: slices with less brain are not used for training or scoring


class SkullDetector(nn.Module):
    """Logit (N,) that a model-input slice (N, 3, H, W), normalized or not, is skull-stripped."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, width // 2, width, width * 2, width * 2]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(detector_input(x))

    def classify(self, small: torch.Tensor) -> torch.Tensor:
        """Logits (N,) from :func:`detector_input`'s output."""
        return self.head(self.features(small).mean(dim=(2, 3)))[:, 0]


def detector_input(x: torch.Tensor) -> torch.Tensor:
    """Each slice scaled to [0, 1] by its min and max (blind to the normalization toggle), then average-pooled
    to ``DETECTOR_INPUT_SIZE``."""
    return F.adaptive_avg_pool2d(scale_to_unit_range(x.float()), DETECTOR_INPUT_SIZE)


@dataclass(frozen=True)
class DetectorTraining:
    """How :func:`train_skull_detector` trains (recorded in the routed model's config)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


def detector_examples(images: np.ndarray, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Detector inputs (2M, 3, 64, 64: :func:`detector_input`, made chunk by chunk so a whole training set fits in
    memory) and labels (2M,) from the M of the (N, H, W, 3) uint8 LGG slices with enough brain: as they are (0)
    and skull-stripped with the heuristic brain mask (1, the ``skull_stripped`` form)."""
    brains = brain_masks(images)
    keep = np.flatnonzero(brains.mean(axis=(1, 2)) >= MIN_BRAIN_FRACTION)
    small = {}
    for label, strip in ((0, False), (1, True)):
        parts = []
        for start in range(0, len(keep), chunk):
            index = keep[start : start + chunk]
            part = images[index] * brains[index][..., None].astype(images.dtype) if strip else images[index]
            x = uint8_batch_to_input(torch.from_numpy(np.ascontiguousarray(part)).permute(0, 3, 1, 2), True)
            parts.append(detector_input(x))
        small[label] = torch.cat(parts) if parts else torch.zeros(0, 3, DETECTOR_INPUT_SIZE, DETECTOR_INPUT_SIZE)
    labels = torch.cat([torch.zeros(len(keep)), torch.ones(len(keep))])
    return torch.cat([small[0], small[1]]), labels


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal/vertical flips and one random quarter turn for the whole batch."""
    flip_h = torch.rand(x.shape[0], generator=generator) < 0.5
    flip_v = torch.rand(x.shape[0], generator=generator) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(-2), x)
    turns = int(torch.randint(0, 4, (1,), generator=generator))
    return torch.rot90(x, turns, dims=(2, 3))


def train_skull_detector(small: torch.Tensor, labels: torch.Tensor,
                         settings: DetectorTraining = DetectorTraining()) -> SkullDetector:
    """A :class:`SkullDetector` trained with BCE and Adam on :func:`detector_examples`' ``(small, labels)``."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    detector = SkullDetector()
    optimizer = torch.optim.Adam(detector.parameters(), lr=settings.lr)
    detector.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            logits = detector.classify(_augment(small[index], generator))
            loss = F.binary_cross_entropy_with_logits(logits, labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return detector.eval()


@torch.inference_mode()
def detector_accuracy(detector: SkullDetector, small: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Share of :func:`detector_examples`' slices classified right, as is (label 0) and stripped (label 1)."""
    stripped = detector.classify(small) > 0
    return {"as_is": float((~stripped[labels == 0]).float().mean()),
            "skull_stripped": float(stripped[labels == 1].float().mean())}
