"""Training loop: seeded, resumable, atomic checkpoints, best model chosen on validation."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as TF
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm import tqdm

from .config import ModelConfig
from .data import SliceRecord, Split, article_split, load_slices, patient_split, require_masks, scan_dataset
from .evaluation import evaluate_arrays, tune_postprocessing
from .hub import load_model, resolve_model
from .inference import Segmenter, autocast, pick_device, save_model
from .model import UNet
from .transforms import (
    flip_dataset_offline, normalize_per_image, random_affine_gamma, random_hflip, uint8_batch_to_input,
)

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.csv"
LOG_FIELDS = [
    "epoch", "train_loss", "lr", "val_slice_dice", "val_slice_iou", "val_tumor_slice_dice",
    "val_empty_fp_rate", "val_volume_dice", "seconds",
]


@dataclass
class TrainConfig:
    """A training run; saved as ``train_config.json`` in the output folder."""

    data_dir: str
    out_dir: str
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
    split: str = "patient"  # patient | article
    val_fraction: float = 0.1
    empty_fraction: float = 1.0  # share of tumor-free training slices drawn each epoch
    checkpoint_every: int = 1
    tune_postprocessing: bool = True
    seed: int = 2026  # weight init, sampling order, augmentation
    split_seed: int = 2026  # validation patients; apart from seed, so a fine-tune keeps its start's split
    device: str = "auto"
    amp: bool = True
    max_train_slices: int = 0  # 0 = all; small values for smoke tests
    max_val_slices: int = 0
    stop_after_epochs: int = 0  # stop early (still resumable), 0 = run to the end
    init_from: str = ""  # model folder whose weights start the run (fine-tuning); "" = random init
    swa_start: int = 0  # average the weights of every epoch from this one on into swa/ (0 = off)

    def model_config(self) -> ModelConfig:
        return ModelConfig(base_channels=self.base_channels, depth=self.depth, normalize=self.normalize)


# The article's recipe, exactly: width 64, BCE, Adam 1e-4, 30 epochs, a checkpoint every 2 epochs.
PRESETS: dict[str, dict] = {
    "article": dict(
        base_channels=64, depth=4, epochs=30, batch_size=16, lr=1e-4, optimizer="adam", weight_decay=0.0,
        schedule="constant", loss="bce", flip="none", checkpoint_every=2, amp=False, tune_postprocessing=False,
    ),
    "default": {},
}


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, use_dice: bool) -> torch.Tensor:
    """BCE, plus (1 - soft Dice) pooled over the whole batch when ``use_dice``."""
    bce = TF.binary_cross_entropy_with_logits(logits, target)
    if not use_dice:
        return bce
    proba = torch.sigmoid(logits)
    dice = (2 * (proba * target).sum() + 1.0) / (proba.sum() + target.sum() + 1.0)
    return bce + (1 - dice)


def make_split(cfg: TrainConfig) -> Split:
    patients = require_masks(scan_dataset(cfg.data_dir), cfg.data_dir)
    if cfg.split == "patient":
        return patient_split(patients, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    if cfg.split == "article":
        return article_split(patients, seed=cfg.split_seed)
    raise ValueError(f"unknown split {cfg.split!r}: use patient or article")


def _subset(records: tuple[SliceRecord, ...], limit: int, seed: int) -> list[SliceRecord]:
    records = list(records)
    if limit and limit < len(records):
        rng = np.random.default_rng(seed)
        records = [records[i] for i in sorted(rng.choice(len(records), limit, replace=False))]
    return records


def _atomic_torch_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def _read_log(path: Path, up_to_epoch: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["epoch"]) <= up_to_epoch]


def _write_log(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


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


def starting_model(cfg: TrainConfig, model_cfg: ModelConfig) -> UNet:
    """A freshly initialised U-Net, or the weights of ``cfg.init_from`` (model folder or Hub id) to fine-tune.

    A starting model with another architecture or preprocessing is refused.
    """
    if not cfg.init_from:
        return UNet(**model_cfg.architecture())
    start_cfg, model = load_model(resolve_model(cfg.init_from))
    if start_cfg.architecture() != model_cfg.architecture() or start_cfg.normalize != model_cfg.normalize:
        raise ValueError(
            f"--init-from {cfg.init_from} holds {start_cfg.architecture()} normalize={start_cfg.normalize}, but "
            f"this run trains {model_cfg.architecture()} normalize={model_cfg.normalize}: pass matching "
            "--base-channels/--depth/--normalize"
        )
    print(f"initialised from {cfg.init_from}", flush=True)
    return model


def _save_average(averaged: AveragedModel, images: torch.Tensor, cfg: TrainConfig, device: torch.device,
                  last_epoch: int, folder: Path) -> UNet:
    """Save the averaged U-Net to ``folder``, its BatchNorm statistics recomputed on the unaugmented training
    slices; ``extra`` names the averaged epochs (consecutive, ending at ``last_epoch``)."""
    def batches():
        for start in range(0, len(images), cfg.batch_size):
            inputs = uint8_batch_to_input(images[start : start + cfg.batch_size], normalize=cfg.normalize)
            yield inputs.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else inputs

    with torch.no_grad():
        update_bn(batches(), averaged, device=device)
    n_averaged = int(averaged.n_averaged)
    extra = {"averaged_epochs": [last_epoch - n_averaged + 1, last_epoch], "n_averaged": n_averaged}
    save_model(averaged.module, dataclasses.replace(cfg.model_config(), extra=extra), folder)
    return averaged.module.eval()


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) into ``cfg.out_dir``; returns the folder of the best model.

    ``best/`` holds the epoch with the best validation slice Dice, ``last/`` the final epoch's weights and,
    with ``swa_start``, ``swa/`` the mean of the weights after epochs ``swa_start``..last (stochastic weight
    averaging) with BatchNorm statistics recomputed on the training slices.
    """
    if cfg.augment not in ("none", "affine_gamma"):
        raise ValueError(f"unknown augment {cfg.augment!r}: use none or affine_gamma")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model_cfg = cfg.model_config()
    model = starting_model(cfg, model_cfg).to(device)  # before the data: a bad --init-from fails at once
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)

    split = make_split(cfg)
    train_records = _subset(split.train, cfg.max_train_slices, cfg.seed)
    val_records = _subset(split.val, cfg.max_val_slices, cfg.seed + 1)
    print(f"split {split.protocol}: {len(train_records)} train slices ({len(split.patients('train'))} patients), "
          f"{len(val_records)} val slices; device {device}", flush=True)
    train_images, train_masks = load_slices(train_records)
    if cfg.flip == "offline":
        train_images, train_masks = flip_dataset_offline(train_images, train_masks)
    val_images, val_masks = load_slices(val_records)
    val_patients = [r.patient for r in val_records]
    has_tumor = train_masks.reshape(len(train_masks), -1).any(axis=1)
    images_t = torch.from_numpy(train_images).permute(0, 3, 1, 2)  # uint8, channels-last in memory
    masks_t = torch.from_numpy(train_masks)

    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
    steps_per_epoch = math.ceil(len(_epoch_indices(has_tumor, cfg, 0)) / cfg.batch_size)
    scheduler = _make_scheduler(cfg, optimizer, steps_per_epoch)

    averaged = AveragedModel(model) if cfg.swa_start > 0 else None
    start_epoch, best_score, best_epoch = 1, -1.0, 0
    ckpt_path = out / CHECKPOINT_FILE
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        best_score, best_epoch = float(state["best_score"]), int(state["best_epoch"])
        if averaged is not None and "averaged" in state:
            averaged.load_state_dict(state["averaged"])
        print(f"resumed from {ckpt_path} after epoch {start_epoch - 1}", flush=True)
    log_rows = _read_log(out / LOG_FILE, start_epoch - 1)
    _write_log(out / LOG_FILE, log_rows)

    use_dice = cfg.loss == "bce_dice"
    epochs_run = 0
    for epoch in range(start_epoch, cfg.epochs + 1):
        if cfg.stop_after_epochs and epochs_run >= cfg.stop_after_epochs:
            break
        started = time.time()
        model.train()
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.from_numpy(_epoch_indices(has_tumor, cfg, epoch))
        total_loss, batches = 0.0, 0
        bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", leave=False)
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            images, masks = images_t[idx], masks_t[idx].unsqueeze(1).float()
            if cfg.flip == "random":
                images, masks = random_hflip(images, masks, generator)
            inputs = uint8_batch_to_input(images, normalize=False)
            if cfg.augment == "affine_gamma":
                inputs, masks = random_affine_gamma(inputs, masks, generator)
            if cfg.normalize:
                inputs = normalize_per_image(inputs)
            inputs = inputs.to(device)
            if device.type == "cpu":
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            masks = masks.to(device)
            with autocast(device, cfg.amp):
                logits = model(inputs)
            loss = bce_dice_loss(logits.float(), masks, use_dice)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item()
            batches += 1
            bar.set_postfix(loss=f"{total_loss / batches:.4f}")
        bar.close()

        segmenter = Segmenter(model, model_cfg, device=str(device), bf16=cfg.amp)
        report = evaluate_arrays(segmenter, val_images, val_masks, val_patients)
        model.train()
        score = report.slice_dice
        row = {
            "epoch": epoch, "train_loss": round(total_loss / max(batches, 1), 5),
            "lr": f"{scheduler.get_last_lr()[0]:.3g}",
            "val_slice_dice": round(report.slice_dice, 4), "val_slice_iou": round(report.slice_iou, 4),
            "val_tumor_slice_dice": round(report.tumor_slice_dice, 4),
            "val_empty_fp_rate": round(report.empty_fp_rate, 4), "val_volume_dice": round(report.volume_dice, 4),
            "seconds": round(time.time() - started, 1),
        }
        print(json.dumps(row), flush=True)
        if score > best_score:
            best_score, best_epoch = score, epoch
            save_model(model, model_cfg, out / "best")
        if averaged is not None and epoch >= cfg.swa_start:
            averaged.update_parameters(model)
        log_rows.append(row)
        _write_log(out / LOG_FILE, log_rows)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            state = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch,
                "best_score": best_score, "best_epoch": best_epoch,
            }
            if averaged is not None:
                state["averaged"] = averaged.state_dict()
            _atomic_torch_save(state, ckpt_path)
        epochs_run += 1

    best_dir = out / "best"
    finished = not log_rows or int(log_rows[-1]["epoch"]) >= cfg.epochs
    if finished and epochs_run:
        last_epoch = int(log_rows[-1]["epoch"])
        last_cfg = dataclasses.replace(model_cfg, extra={"epoch": last_epoch})
        save_model(model, last_cfg, out / "last")  # the final weights, an alternative to the best epoch
        if averaged is not None and int(averaged.n_averaged) > 0:
            swa_model = _save_average(averaged, images_t, cfg, device, last_epoch, out / "swa")
            swa_report = evaluate_arrays(
                Segmenter(swa_model, model_cfg, device=str(device), bf16=cfg.amp), val_images, val_masks,
                val_patients,
            )
            print(f"swa/ ({int(averaged.n_averaged)} epochs averaged) on validation: slice Dice "
                  f"{swa_report.slice_dice:.4f}, volume Dice {swa_report.volume_dice:.4f}", flush=True)
    if finished and cfg.tune_postprocessing and best_dir.exists():
        best = Segmenter.from_pretrained(best_dir, device=str(device), bf16=cfg.amp)
        best.config, _ = tune_postprocessing(best, val_images, val_masks, val_patients)
        best.config.extra.update({"best_epoch": best_epoch, "val_slice_dice": best_score})
        best.config.save(best_dir)
        print(f"post-processing tuned on validation: {best.config.to_dict()}", flush=True)
    return best_dir
