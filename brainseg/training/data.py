"""The slices a run trains and validates on (:class:`TrainingData`, loaded once) and each epoch's batches:
the seeded shuffle, this rank's shard of it, and the augmented model inputs of a batch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from brainseg.inference.brainmask import brain_masks
from brainseg.inference.preprocess import (
    flip_dataset_offline,
    normalize_per_image,
    random_affine_gamma,
    random_hflip,
    uint8_batch_to_input,
)
from brainseg.io.dataset import SliceRecord, load_slices
from brainseg.training.augment import random_acquisition, random_missing_channels, random_skull_strip
from brainseg.training.config import TrainConfig
from brainseg.training.distributed import SINGLE_PROCESS, RankInfo, epoch_shard


@dataclass
class TrainingData:
    """The slices a run trains and validates on, loaded once."""

    images: torch.Tensor  # (N, 3, H, W) uint8 training slices (flipped copies appended with flip=offline)
    masks: torch.Tensor  # (N, H, W) bool
    has_tumor: np.ndarray  # (N,) bool: the training slices with a lesion (empty_fraction draws from the others)
    val_images: np.ndarray  # (M, H, W, 3) uint8
    val_masks: np.ndarray  # (M, H, W) bool
    val_patients: list[str]  # (M,) the patient of each validation slice
    train_slices: list[str] = field(default_factory=list)  # (N,) names of the training slices, e.g. PATIENT_12
    brains: torch.Tensor | None = None  # (N, H, W) bool heuristic brain masks, when the run skull-strips


def _subset(records: tuple[SliceRecord, ...], limit: int, seed: int) -> list[SliceRecord]:
    records = list(records)
    if limit and limit < len(records):
        rng = np.random.default_rng(seed)
        records = [records[i] for i in sorted(rng.choice(len(records), limit, replace=False))]
    return records


def load_data(cfg: TrainConfig, device: torch.device, verbose: bool = True) -> TrainingData:
    """Read this run's training and validation slices (``max_*_slices`` seeded subsets when set)."""
    split = cfg.data_split()
    train_records = _subset(split.train, cfg.max_train_slices, cfg.seed)
    val_records = _subset(split.val, cfg.max_val_slices, cfg.seed + 1)
    if verbose:
        print(f"split {split.protocol}: {len(train_records)} train slices ({len(split.patients('train'))} "
              f"patients), {len(val_records)} val slices; device {device}", flush=True)
    train_images, train_masks = load_slices(train_records)
    train_slices = [f"{r.patient}_{r.index}" for r in train_records]
    if cfg.flip == "offline":
        train_images, train_masks = flip_dataset_offline(train_images, train_masks)
        train_slices += [f"{name}_flipped" for name in train_slices]
    val_images, val_masks = load_slices(val_records)
    brains = torch.from_numpy(brain_masks(train_images)) if cfg.strip_prob > 0 else None
    return TrainingData(
        images=torch.from_numpy(train_images).permute(0, 3, 1, 2),  # uint8, channels-last in memory
        masks=torch.from_numpy(train_masks),
        has_tumor=train_masks.reshape(len(train_masks), -1).any(axis=1),
        val_images=val_images, val_masks=val_masks, val_patients=[r.patient for r in val_records],
        train_slices=train_slices, brains=brains,
    )


def _epoch_indices(labels: np.ndarray, cfg: TrainConfig, epoch: int) -> np.ndarray:
    """Shuffled training indices for one epoch, seeded by (seed, epoch) so resume is exact."""
    rng = np.random.default_rng([cfg.seed, epoch])
    tumor = np.flatnonzero(labels)
    empty = np.flatnonzero(~labels)
    if cfg.empty_fraction < 1.0:
        empty = rng.choice(empty, size=round(cfg.empty_fraction * len(empty)), replace=False)
    order = np.concatenate([tumor, empty])
    rng.shuffle(order)
    return order


def channels_last_on_cpu(inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The memory layout the CPU convolutions are fastest with (the model is converted to match)."""
    return inputs.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else inputs


def make_batch(
    cfg: TrainConfig, data: TrainingData, idx: torch.Tensor, generator: torch.Generator, device: torch.device,
    clean_teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Model inputs, (N, 1, H, W) float masks and soft targets (or None) for the training slices ``idx``,
    augmented as ``cfg`` says.

    ``clean_teacher`` (``TrainConfig.distill_view == "clean"``) maps model inputs to (N, 1, H, W)
    probabilities; it sees the slices only flipped, and its probabilities are stripped and warped with the
    masks (nearest sampling keeps their values), so the student learns from degraded inputs what the teacher
    says about the undegraded slice.
    """
    images, masks = data.images[idx], data.masks[idx].unsqueeze(1).float()
    brains = None if data.brains is None else data.brains[idx].unsqueeze(1).float()
    if cfg.flip == "random":
        if brains is None:
            images, masks = random_hflip(images, masks, generator)
        else:  # the brain masks flip with their slices
            images, both = random_hflip(images, torch.cat([masks, brains], dim=1), generator)
            masks, brains = both[:, :1], both[:, 1:]
    if clean_teacher is not None:  # the soft targets ride along with the masks from here on
        clean = uint8_batch_to_input(images, normalize=cfg.normalize)
        soft = clean_teacher(channels_last_on_cpu(clean.to(device), device)).float().cpu()
        masks = torch.cat([masks, soft], dim=1)
    if brains is not None:
        images, masks = random_skull_strip(images, masks, brains[:, 0] > 0, cfg.strip_prob, generator)
    inputs = uint8_batch_to_input(images, normalize=False)
    if cfg.augment == "affine_gamma":
        inputs, masks = random_affine_gamma(inputs, masks, generator, scale_range=(cfg.scale_min, cfg.scale_max))
    if cfg.acquisition:
        inputs = random_acquisition(inputs, generator)
    if cfg.missing_channel_prob > 0:
        inputs = random_missing_channels(inputs, cfg.missing_channel_prob, generator)
    if cfg.normalize:
        inputs = normalize_per_image(inputs)
    soft = masks[:, 1:].to(device) if clean_teacher is not None else None
    return channels_last_on_cpu(inputs.to(device), device), masks[:, :1].to(device), soft


def rank_order(cfg: TrainConfig, data: TrainingData, epoch: int, info: RankInfo = SINGLE_PROCESS
               ) -> tuple[np.ndarray, int]:
    """This rank's training indices for ``epoch`` in order (the epoch's ``(seed, epoch)`` shuffle, sharded
    by :func:`brainseg.training.distributed.epoch_shard`) and how many of them are padding repeats."""
    return epoch_shard(_epoch_indices(data.has_tumor, cfg, epoch), info)


def augment_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of an epoch's flips and warps on one rank (rank 0 keeps the single-process seed)."""
    return seed * 1000 + epoch + rank * 2**48
