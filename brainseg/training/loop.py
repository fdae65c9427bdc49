"""Training loop: seeded, resumable, atomic checkpoints, best model chosen on validation.

:func:`train` runs these steps, one function each: :func:`start_run_folder` (``train_config.json``),
:func:`starting_model`, :func:`load_data`, :func:`new_state` (optimizer, LR schedule, SWA average),
:func:`resume` (from ``checkpoint.pt``), then per epoch :func:`run_epoch` (train, validate, keep ``best/``)
with ``log.csv`` and :func:`save_checkpoint`, and at the end :func:`save_final_models` (``last/``, ``swa/``)
and :func:`tune_best_model`.

Under ``torchrun`` with several processes (:mod:`brainseg.training.distributed`) every rank trains on its shard of each
epoch through ``DistributedDataParallel``; rank 0 alone validates and writes the run folder, and the others
wait for it at the end of each epoch. A world of one runs exactly the single-process path.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as TF
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm import tqdm

from brainseg.config import PRECISIONS, TRAINABLE_ARCHITECTURES, ModelConfig
from brainseg.evaluation.forms import SELECTION_FORMS
from brainseg.evaluation.metrics import Report
from brainseg.evaluation.scoring import evaluate_arrays, evaluate_forms, forms_score, tune_postprocessing
from brainseg.fileio import atomic_write, atomic_write_text
from brainseg.inference.brainmask import brain_masks
from brainseg.inference.preprocess import (
    flip_dataset_offline,
    normalize_per_image,
    random_affine_gamma,
    random_hflip,
    uint8_batch_to_input,
)
from brainseg.inference.segmenter import Segmenter, autocast, load_model, pick_device
from brainseg.io.dataset import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_VAL_FRACTION,
    SPLIT_PROTOCOLS,
    SliceRecord,
    Split,
    load_slices,
    make_split,
)
from brainseg.io.hub import resolve_model
from brainseg.io.weights import save_model
from brainseg.models.unet import build_model
from brainseg.training.augment import (
    random_acquisition,
    random_missing_channels,
    random_quarter_turns,
    random_skull_strip,
)
from brainseg.training.distributed import (
    SINGLE_PROCESS,
    RankInfo,
    broadcast_from_main,
    check_sync_bn,
    epoch_shard,
    gather_to_main,
    mean_over_ranks,
    process_group,
    rank_device,
    wait_for_all,
    wrap_model,
)

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.csv"
TRAIN_CONFIG_FILE = "train_config.json"
SHARDS_FILE = "shards.jsonl"  # multi-process runs: the slices each rank trained on, one line per rank and epoch
LOG_FIELDS = [
    "epoch", "train_loss", "lr", "val_slice_dice", "val_slice_iou", "val_tumor_slice_dice",
    "val_empty_fp_rate", "val_volume_dice", "seconds",
]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("constant", "onecycle", "cosine")
LOSSES = ("bce", "bce_dice")  # bce_dice: BCE + (1 - soft Dice)
FLIPS = ("none", "random", "offline")  # offline: the article's doubled set; random: each slice flipped 50 %
AUGMENTS = ("none", "affine_gamma")  # affine_gamma: random rotation/scale/shift + per-channel gamma
# What chooses best/ on validation: the slices as they are (slice Dice), or the mean over the input forms of
# brainseg.evaluation.forms.SELECTION_FORMS of (slice Dice + volume Dice) / 2 (brainseg.evaluation.scoring.forms_score).
SELECT_ON = ("as_is", "forms")
# The valid values of TrainConfig's string options: checked there, offered as choices by brainseg/cli/train.py.
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": tuple(OPTIMIZERS), "schedule": SCHEDULES, "loss": LOSSES, "flip": FLIPS, "augment": AUGMENTS,
    "split": SPLIT_PROTOCOLS, "arch": TRAINABLE_ARCHITECTURES, "select_on": SELECT_ON, "precision": PRECISIONS,
}
AT_LEAST_ONE = ("base_channels", "epochs", "batch_size", "checkpoint_every", "dist_timeout_s")
NOT_NEGATIVE = (
    "weight_decay", "max_train_slices", "max_val_slices", "stop_after_epochs", "swa_start", "distill_weight",
)
PROBABILITIES = ("strip_prob", "missing_channel_prob", "quarter_turn_prob")


@dataclass
class TrainConfig:
    """A training run; saved as ``train_config.json`` in the output folder.

    The string options take the values in :data:`CHOICES`; anything else is refused when the config is made.
    """

    data_dir: str
    out_dir: str
    arch: str = "unet"  # brainseg.config.TRAINABLE_ARCHITECTURES; base_channels and depth size the U-Net only
    base_channels: int = 16
    depth: int = 4
    normalize: bool = True
    epochs: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    optimizer: str = "adamw"  # adam | adamw
    weight_decay: float = 1e-4
    schedule: str = "onecycle"  # constant | onecycle | cosine
    loss: str = "bce_dice"  # bce | bce_dice
    flip: str = "random"  # none | random | offline
    augment: str = "none"  # none | affine_gamma (random rotation/scale/shift + per-channel gamma)
    scale_min: float = 0.9  # affine_gamma's zoom range: 0.5 puts the head in half the frame
    scale_max: float = 1.1
    strip_prob: float = 0.0  # share of training slices skull-stripped (brainseg.training.augment.random_skull_strip)
    missing_channel_prob: float = 0.0  # share whose T1 / both T1s are replaced by FLAIR (random_missing_channels)
    acquisition: bool = False  # MONAI bias field, low resolution, histogram shift, noise (random_acquisition)
    quarter_turn_prob: float = 0.0  # share of slices turned by 90/180/270 degrees (+ upside down half the time)
    # distillation: a trained model (folder, bundled name or Hub id) whose probabilities on each augmented batch
    # are soft targets beside the ground truth; loss += distill_weight * BCE(student, teacher probability)
    distill_from: str = ""
    distill_weight: float = 1.0
    select_on: str = "as_is"  # as_is | forms: what picks best/ on validation (SELECT_ON)
    split: str = "patient"  # patient | article
    val_fraction: float = DEFAULT_VAL_FRACTION
    empty_fraction: float = 1.0  # share of tumor-free training slices drawn each epoch
    checkpoint_every: int = 1
    tune_postprocessing: bool = True
    seed: int = 2026  # weight init, sampling order, augmentation
    split_seed: int = DEFAULT_SPLIT_SEED  # validation patients; apart from seed, so a fine-tune keeps its start's split
    device: str = "auto"
    precision: str = "bf16"  # fp32 | bf16 (autocast, where the device supports it)
    max_train_slices: int = 0  # 0 = all; small values for smoke tests
    max_val_slices: int = 0
    stop_after_epochs: int = 0  # stop early (still resumable), 0 = run to the end
    init_from: str = ""  # model folder whose weights start the run (fine-tuning); "" = random init
    swa_start: int = 0  # average the weights of every epoch from this one on into swa/ (0 = off)
    # under torchrun: batch_size is per process (effective batch = batch_size x processes), lr is used as given
    sync_bn: bool = False  # torchrun on GPUs: BatchNorm statistics over the whole effective batch (SyncBatchNorm)
    dist_timeout_s: int = 1800  # torchrun: how long a rank waits for the others (e.g. rank 0 validating) before failing

    def __post_init__(self) -> None:
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(valid)}")
        for name in AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {self.empty_fraction}")
        for name in PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min} and {self.scale_max}")

    @property
    def bf16(self) -> bool:
        """Whether the network computes in bfloat16 autocast (``precision`` bf16)."""
        return self.precision == "bf16"

    def model_config(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, base_channels=self.base_channels, depth=self.depth,
                           normalize=self.normalize)

    def data_split(self) -> Split:
        """This run's train / validation / test split (:func:`brainseg.io.dataset.make_split`)."""
        return make_split(self.data_dir, self.split, self.val_fraction, self.split_seed)


# The article's recipe, exactly: width 64, BCE, Adam 1e-4, 30 epochs, a checkpoint every 2 epochs.
PRESETS: dict[str, dict] = {
    "article": dict(
        base_channels=64, depth=4, epochs=30, batch_size=16, lr=1e-4, optimizer="adam", weight_decay=0.0,
        schedule="constant", loss="bce", flip="none", checkpoint_every=2, precision="fp32", tune_postprocessing=False,
    ),
    "default": {},
}


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


@dataclass
class TrainingState:
    """Everything ``checkpoint.pt`` holds: weights, optimizer, LR schedule, SWA average, best epoch so far."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    averaged: AveragedModel | None  # None unless swa_start
    epoch: int = 0  # the last finished epoch
    best_score: float = -1.0  # validation score of best/ (slice Dice, or forms_score with select_on=forms)
    best_epoch: int = 0
    world_size: int = 1  # processes training together: the LR schedule counts the steps of one of them
    wrapped: nn.Module | None = None  # not saved: DistributedDataParallel(model) under torchrun
    teacher: Teacher | None = None  # not saved: the distillation teacher (cfg.distill_from), loaded per run

    def training_module(self) -> nn.Module:
        """What a training step calls: the DDP wrapper under torchrun, else the model itself."""
        return self.model if self.wrapped is None else self.wrapped

    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
            "best_score": self.best_score, "best_epoch": self.best_epoch, "world_size": self.world_size,
        }
        if self.averaged is not None:
            state["averaged"] = self.averaged.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        saved_world_size = int(state.get("world_size", 1))
        if saved_world_size != self.world_size:
            raise ValueError(
                f"the checkpoint was written by {saved_world_size} training process(es), this run has "
                f"{self.world_size}: its learning-rate schedule counts the steps of {saved_world_size}. Resume "
                f"with the same number of processes (torchrun --nproc_per_node ...), or use another --out-dir"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        if self.averaged is not None and "averaged" in state:
            self.averaged.load_state_dict(state["averaged"])


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, use_dice: bool) -> torch.Tensor:
    """BCE, plus (1 - soft Dice) pooled over the whole batch when ``use_dice``."""
    bce = TF.binary_cross_entropy_with_logits(logits, target)
    if not use_dice:
        return bce
    proba = torch.sigmoid(logits)
    dice = (2 * (proba * target).sum() + 1.0) / (proba.sum() + target.sum() + 1.0)
    return bce + (1 - dice)


def _subset(records: tuple[SliceRecord, ...], limit: int, seed: int) -> list[SliceRecord]:
    records = list(records)
    if limit and limit < len(records):
        rng = np.random.default_rng(seed)
        records = [records[i] for i in sorted(rng.choice(len(records), limit, replace=False))]
    return records


def read_log(path: Path, up_to_epoch: int) -> list[dict]:
    """The rows of ``log.csv`` up to ``up_to_epoch`` (later ones belong to an epoch the checkpoint lacks)."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["epoch"]) <= up_to_epoch]


def write_log(path: Path, rows: list[dict], fields: list[str] = LOG_FIELDS) -> None:
    """Rewrite ``log.csv`` atomically with ``rows`` (columns ``fields``, see :func:`log_fields`)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_shards(path: Path, up_to_epoch: int) -> list[dict]:
    """The rows of ``shards.jsonl`` up to ``up_to_epoch`` (as :func:`read_log`)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if int(row["epoch"]) <= up_to_epoch]


def write_shards(path: Path, rows: list[dict]) -> None:
    """Rewrite ``shards.jsonl`` atomically with ``rows``, one JSON object a line."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule over all ``cfg.epochs``, stepped once per batch."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"unknown schedule {cfg.schedule!r}: use one of {', '.join(SCHEDULES)}")


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


def _channels_last_on_cpu(inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The memory layout the CPU convolutions are fastest with (the model is converted to match)."""
    return inputs.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else inputs


def start_run_folder(cfg: TrainConfig, world_size: int = 1) -> Path:
    """Create ``cfg.out_dir`` and record the run's settings and number of processes in ``train_config.json``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**dataclasses.asdict(cfg), "world_size": world_size}
    atomic_write_text(out / TRAIN_CONFIG_FILE, json.dumps(settings, indent=2) + "\n")
    return out


def starting_model(cfg: TrainConfig, model_cfg: ModelConfig) -> nn.Module:
    """A freshly initialised network, or the weights of ``cfg.init_from`` (model folder or Hub id) to fine-tune.

    A starting model with another architecture or preprocessing is refused.
    """
    if not cfg.init_from:
        return build_model(model_cfg)
    start_cfg, model = load_model(resolve_model(cfg.init_from))
    if start_cfg.architecture() != model_cfg.architecture() or start_cfg.normalize != model_cfg.normalize:
        raise ValueError(
            f"--init-from {cfg.init_from} holds {start_cfg.architecture()} normalize={start_cfg.normalize}, but "
            f"this run trains {model_cfg.architecture()} normalize={model_cfg.normalize}: pass matching "
            "--base-channels/--depth/--normalize"
        )
    print(f"initialised from {cfg.init_from}", flush=True)
    return model


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` (channels-last on the CPU)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


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


def new_state(cfg: TrainConfig, model: nn.Module, data: TrainingData, info: RankInfo = SINGLE_PROCESS
              ) -> TrainingState:
    """Optimizer, LR schedule (sized to this rank's batches per epoch) and, with ``swa_start``, the weight average."""
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(rank_order(cfg, data, 0, info)[0]) / cfg.batch_size)
    averaged = AveragedModel(model) if cfg.swa_start > 0 else None
    return TrainingState(model, optimizer, make_scheduler(cfg, optimizer, steps_per_epoch), averaged,
                         world_size=info.world_size)


def save_checkpoint(state: TrainingState, path: Path) -> None:
    """Write ``checkpoint.pt`` atomically: a crash leaves the previous one whole."""
    atomic_write(path, lambda tmp: torch.save(state.state_dict(), tmp))


def resume(state: TrainingState, path: Path, device: torch.device, info: RankInfo = SINGLE_PROCESS) -> None:
    """Continue from ``path`` when it exists (the run was stopped or killed); otherwise start at epoch 1.

    Under torchrun rank 0 reads the checkpoint and sends it to the others, so every rank loads the same one
    (and only rank 0 needs to see the run folder).
    """
    if not info.distributed:
        checkpoint = torch.load(path, map_location=device, weights_only=True) if path.exists() else None
    else:
        on_main = torch.load(path, map_location="cpu", weights_only=True) if info.is_main and path.exists() else None
        checkpoint = broadcast_from_main(on_main, info)
    if checkpoint is None:
        return
    state.load_state_dict(checkpoint)
    if info.is_main:
        print(f"resumed from {path} after epoch {state.epoch}", flush=True)


def make_batch(
    cfg: TrainConfig, data: TrainingData, idx: torch.Tensor, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs and (N, 1, H, W) float masks for the training slices ``idx``, augmented as ``cfg`` says."""
    images, masks = data.images[idx], data.masks[idx].unsqueeze(1).float()
    brains = None if data.brains is None else data.brains[idx].unsqueeze(1).float()
    if cfg.flip == "random":
        if brains is None:
            images, masks = random_hflip(images, masks, generator)
        else:  # the brain masks flip with their slices
            images, both = random_hflip(images, torch.cat([masks, brains], dim=1), generator)
            masks, brains = both[:, :1], both[:, 1:]
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
    return _channels_last_on_cpu(inputs.to(device), device), masks.to(device)


def rank_order(cfg: TrainConfig, data: TrainingData, epoch: int, info: RankInfo = SINGLE_PROCESS
               ) -> tuple[np.ndarray, int]:
    """This rank's training indices for ``epoch`` in order (the epoch's ``(seed, epoch)`` shuffle, sharded
    by :func:`brainseg.training.distributed.epoch_shard`) and how many of them are padding repeats."""
    return epoch_shard(_epoch_indices(data.has_tumor, cfg, epoch), info)


def augment_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of an epoch's flips and warps on one rank (rank 0 keeps the single-process seed)."""
    return seed * 1000 + epoch + rank * 2**48


def train_epoch(cfg: TrainConfig, state: TrainingState, data: TrainingData, epoch: int, device: torch.device,
                info: RankInfo = SINGLE_PROCESS, order: np.ndarray | None = None) -> float:
    """One pass over this rank's share of the epoch's shuffled slices (``order``, by default
    :func:`rank_order`), an optimizer and schedule step per batch; this rank's mean loss."""
    network = state.training_module()
    network.train()
    generator = torch.Generator().manual_seed(augment_seed(cfg.seed, epoch, info.rank))
    order = torch.from_numpy(rank_order(cfg, data, epoch, info)[0] if order is None else order)
    total_loss, batches = 0.0, 0
    bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
               disable=not info.is_main)
    for start in bar:
        inputs, masks = make_batch(cfg, data, order[start : start + cfg.batch_size], generator, device)
        # the teacher sees the slice before any quarter turn (it may not know turned slices); its targets turn along
        soft = None if state.teacher is None else state.teacher.probability(inputs, device, cfg.bf16)
        if cfg.quarter_turn_prob > 0:
            batch = [inputs, masks] if soft is None else [inputs, masks, soft]
            batch = random_quarter_turns(batch, cfg.quarter_turn_prob, generator)
            inputs, masks, soft = _channels_last_on_cpu(batch[0], device), batch[1], (batch[2:] or [None])[0]
        with autocast(device, cfg.bf16):
            logits = network(inputs).float()
        loss = bce_dice_loss(logits, masks, use_dice=cfg.loss == "bce_dice")
        if soft is not None:
            loss = loss + cfg.distill_weight * TF.binary_cross_entropy_with_logits(logits, soft)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        total_loss += loss.item()
        batches += 1
        bar.set_postfix(loss=f"{total_loss / batches:.4f}")
    bar.close()
    return total_loss / max(batches, 1)


@dataclass
class Validation:
    """An epoch's validation: the slices as they are and, with ``select_on=forms``, every input form."""

    report: Report
    forms: dict[str, Report] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """What chooses ``best/``: slice Dice as is, or :func:`brainseg.evaluation.scoring.forms_score`."""
        return forms_score(self.forms) if self.forms else self.report.slice_dice


def validate(cfg: TrainConfig, model: nn.Module, data: TrainingData, device: torch.device) -> Validation:
    """Metrics of ``model`` on the validation slices (threshold 0.5, no post-processing), in every input form
    of :data:`brainseg.evaluation.forms.SELECTION_FORMS` when ``cfg.select_on`` is ``forms``."""
    segmenter = Segmenter(model, cfg.model_config(), device=str(device), bf16=cfg.bf16)
    if cfg.select_on == "forms":
        forms = evaluate_forms(segmenter, data.val_images, data.val_masks, data.val_patients, SELECTION_FORMS)
        result = Validation(forms["as_is"], forms)
    else:
        result = Validation(evaluate_arrays(segmenter, data.val_images, data.val_masks, data.val_patients))
    model.train()
    return result


def log_fields(cfg: TrainConfig) -> list[str]:
    """The columns of ``log.csv``: :data:`LOG_FIELDS`, plus each form's numbers with ``select_on=forms``."""
    if cfg.select_on != "forms":
        return LOG_FIELDS
    per_form = [f"val_{form}_{metric}" for form in SELECTION_FORMS for metric in ("slice_dice", "volume_dice")]
    return [*LOG_FIELDS[:-1], *per_form, "val_forms_score", LOG_FIELDS[-1]]


def log_row(epoch: int, train_loss: float, lr: float, validation: Validation, seconds: float) -> dict:
    """One ``log.csv`` row (:func:`log_fields`)."""
    report = validation.report
    row = {
        "epoch": epoch, "train_loss": round(train_loss, 5), "lr": f"{lr:.3g}",
        "val_slice_dice": round(report.slice_dice, 4), "val_slice_iou": round(report.slice_iou, 4),
        "val_tumor_slice_dice": round(report.tumor_slice_dice, 4),
        "val_empty_fp_rate": round(report.empty_fp_rate, 4), "val_volume_dice": round(report.volume_dice, 4),
    }
    for form, form_report in validation.forms.items():
        row[f"val_{form}_slice_dice"] = round(form_report.slice_dice, 4)
        row[f"val_{form}_volume_dice"] = round(form_report.volume_dice, 4)
    if validation.forms:
        row["val_forms_score"] = round(validation.score, 4)
    row["seconds"] = round(seconds, 1)
    return row


@dataclass
class EpochRecord:
    """What rank 0 writes after an epoch: the ``log.csv`` row and, under torchrun, a ``shards.jsonl`` row per rank."""

    log_row: dict
    shard_rows: list[dict]


def run_epoch(
    cfg: TrainConfig, state: TrainingState, data: TrainingData, epoch: int, device: torch.device, out: Path,
    info: RankInfo = SINGLE_PROCESS,
) -> EpochRecord | None:
    """Train one epoch, validate, save ``best/`` when the validation score (:class:`Validation`) improved, add
    the weights to the SWA average from ``swa_start`` on; returns the epoch's record (its log row is also
    printed as JSON).

    Under torchrun every rank trains on its shard and the logged loss is the mean over ranks; rank 0 alone
    validates (the plain model, as a single process would) and gets the record, the others get None.
    """
    started = time.time()
    order, repeats = rank_order(cfg, data, epoch, info)
    train_loss = mean_over_ranks(train_epoch(cfg, state, data, epoch, device, info, order), info, device)
    shard_rows: list[dict] = []
    if info.distributed:
        shard = {"epoch": epoch, "rank": info.rank, "world_size": info.world_size,
                 "slices": [data.train_slices[i] for i in order], "repeats": repeats}
        shard_rows = gather_to_main(shard, info) or []
    record = None
    if info.is_main:
        validation = validate(cfg, state.model, data, device)
        row = log_row(epoch, train_loss, state.scheduler.get_last_lr()[0], validation, time.time() - started)
        print(json.dumps(row), flush=True)
        if validation.score > state.best_score:
            state.best_score, state.best_epoch = validation.score, epoch
            save_model(state.model, cfg.model_config(), out / "best")
        record = EpochRecord(row, shard_rows)
    if state.averaged is not None and epoch >= cfg.swa_start:
        state.averaged.update_parameters(state.model)
    state.epoch = epoch
    return record


def epochs_to_run(cfg: TrainConfig, last_done: int) -> range:
    """The epochs after ``last_done``: to ``cfg.epochs``, or ``stop_after_epochs`` of them."""
    last = cfg.epochs if not cfg.stop_after_epochs else min(cfg.epochs, last_done + cfg.stop_after_epochs)
    return range(last_done + 1, last + 1)


def _save_average(averaged: AveragedModel, images: torch.Tensor, cfg: TrainConfig, device: torch.device,
                  last_epoch: int, folder: Path) -> nn.Module:
    """Save the averaged network to ``folder``, its BatchNorm statistics recomputed on the unaugmented training
    slices; ``extra`` names the averaged epochs (consecutive, ending at ``last_epoch``)."""
    def batches():
        for start in range(0, len(images), cfg.batch_size):
            inputs = uint8_batch_to_input(images[start : start + cfg.batch_size], normalize=cfg.normalize)
            yield _channels_last_on_cpu(inputs, device)

    with torch.no_grad():
        update_bn(batches(), averaged, device=device)
    n_averaged = int(averaged.n_averaged)
    extra = {"averaged_epochs": [last_epoch - n_averaged + 1, last_epoch], "n_averaged": n_averaged}
    save_model(averaged.module, dataclasses.replace(cfg.model_config(), extra=extra), folder)
    return averaged.module.eval()


def save_final_models(
    cfg: TrainConfig, state: TrainingState, data: TrainingData, device: torch.device, out: Path
) -> None:
    """``last/`` (the final epoch's weights) and, with ``swa_start``, ``swa/`` (reported on validation)."""
    last_cfg = dataclasses.replace(cfg.model_config(), extra={"epoch": state.epoch})
    save_model(state.model, last_cfg, out / "last")  # an alternative to the best epoch
    averaged = state.averaged
    if averaged is None or int(averaged.n_averaged) == 0:
        return
    swa_model = _save_average(averaged, data.images, cfg, device, state.epoch, out / "swa")
    swa_report = evaluate_arrays(
        Segmenter(swa_model, cfg.model_config(), device=str(device), bf16=cfg.bf16), data.val_images, data.val_masks,
        data.val_patients,
    )
    print(f"swa/ ({int(averaged.n_averaged)} epochs averaged) on validation: slice Dice "
          f"{swa_report.slice_dice:.4f}, volume Dice {swa_report.volume_dice:.4f}", flush=True)


def tune_best_model(cfg: TrainConfig, state: TrainingState, data: TrainingData, device: torch.device,
                    best_dir: Path) -> None:
    """Choose ``best/``'s threshold, minimum component size and flip TTA on validation; store them in its config."""
    best = Segmenter.from_pretrained(best_dir, device=str(device), bf16=cfg.bf16)
    best.config, _ = tune_postprocessing(best, data.val_images, data.val_masks, data.val_patients)
    score_name = "val_forms_score" if cfg.select_on == "forms" else "val_slice_dice"
    best.config.extra.update({"best_epoch": state.best_epoch, score_name: state.best_score})
    best.config.save(best_dir)
    print(f"post-processing tuned on validation: {best.config.to_dict()}", flush=True)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) into ``cfg.out_dir``; returns the folder of the best model.

    ``best/`` holds the epoch with the best validation score (:attr:`Validation.score`), ``last/`` the final
    epoch's weights and, with ``swa_start``, ``swa/`` the mean of the weights after epochs ``swa_start``..last
    (stochastic weight averaging) with BatchNorm statistics recomputed on the training slices.

    Started by ``torchrun`` with several processes, each joins the process group (NCCL on CUDA, one GPU per
    process; gloo on CPU) for the run and leaves it at the end, also on an error.
    """
    info = RankInfo.current()
    device = rank_device(pick_device(cfg.device), info)
    if cfg.sync_bn and info.distributed:
        check_sync_bn(device)
    with process_group(info, device, timedelta(seconds=cfg.dist_timeout_s)):
        return train_in_group(cfg, info, device)


def train_in_group(cfg: TrainConfig, info: RankInfo, device: torch.device) -> Path:
    """:func:`train`'s run on one rank of ``info`` (all of it in a world of one), on ``device``."""
    out = start_run_folder(cfg, info.world_size) if info.is_main else Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    if info.distributed:
        print(f"rank {info.rank}/{info.world_size}: pid {os.getpid()}, device {device}", flush=True)
    # the model before the data: a bad --init-from fails at once
    model = place_model(starting_model(cfg, cfg.model_config()), device)
    data = load_data(cfg, device, verbose=info.is_main)
    state = new_state(cfg, model, data, info)
    state.teacher = Teacher.load(cfg.distill_from, device) if cfg.distill_from else None
    resume(state, out / CHECKPOINT_FILE, device, info)
    state.wrapped = wrap_model(model, info, device, cfg.sync_bn) if info.distributed else None
    log_rows: list[dict] = []
    shard_rows: list[dict] = []
    if info.is_main:
        log_rows = read_log(out / LOG_FILE, state.epoch)
        write_log(out / LOG_FILE, log_rows, log_fields(cfg))
        if info.distributed:
            shard_rows = read_shards(out / SHARDS_FILE, state.epoch)
            write_shards(out / SHARDS_FILE, shard_rows)

    epochs = epochs_to_run(cfg, state.epoch)
    for epoch in epochs:
        record = run_epoch(cfg, state, data, epoch, device, out, info)
        if record is not None:
            log_rows.append(record.log_row)
            # first the log, then the checkpoint: a resume drops later rows
            write_log(out / LOG_FILE, log_rows, log_fields(cfg))
            if info.distributed:
                shard_rows += record.shard_rows
                write_shards(out / SHARDS_FILE, shard_rows)
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                save_checkpoint(state, out / CHECKPOINT_FILE)
        wait_for_all(info)  # the other ranks wait while rank 0 validates and saves

    best_dir = out / "best"
    if not info.is_main:
        return best_dir
    finished = not log_rows or int(log_rows[-1]["epoch"]) >= cfg.epochs
    if finished and epochs:
        save_final_models(cfg, state, data, device, out)
    if finished and cfg.tune_postprocessing and best_dir.exists():
        tune_best_model(cfg, state, data, device, best_dir)
    return best_dir
