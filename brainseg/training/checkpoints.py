"""What a run folder holds to resume: ``checkpoint.pt`` (:class:`TrainingState`: weights, optimizer, LR
schedule, SWA average, best epoch), ``log.csv``, ``shards.jsonl`` and ``train_config.json``; each written
atomically, so a crash leaves the previous file whole."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from brainseg.fileio import atomic_write, atomic_write_text
from brainseg.training.config import OPTIMIZERS, SCHEDULES, TrainConfig
from brainseg.training.data import TrainingData, rank_order
from brainseg.training.distributed import SINGLE_PROCESS, RankInfo, broadcast_from_main
from brainseg.training.teacher import Teacher

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.csv"
TRAIN_CONFIG_FILE = "train_config.json"
SHARDS_FILE = "shards.jsonl"  # multi-process runs: the slices each rank trained on, one line per rank and epoch


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


def read_log(path: Path, up_to_epoch: int) -> list[dict]:
    """The rows of ``log.csv`` up to ``up_to_epoch`` (later ones belong to an epoch the checkpoint lacks)."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["epoch"]) <= up_to_epoch]


def write_log(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Rewrite ``log.csv`` atomically with ``rows`` (columns ``fields``)."""
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


def start_run_folder(cfg: TrainConfig, world_size: int = 1) -> Path:
    """Create ``cfg.out_dir`` and record the run's settings and number of processes in ``train_config.json``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**dataclasses.asdict(cfg), "world_size": world_size}
    atomic_write_text(out / TRAIN_CONFIG_FILE, json.dumps(settings, indent=2) + "\n")
    return out


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
