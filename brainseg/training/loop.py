"""Training loop: seeded, resumable, best model chosen on validation.

:func:`train` runs these steps: ``start_run_folder`` (``train_config.json``), :func:`starting_model`,
``load_data``, ``new_state`` (optimizer, LR schedule, SWA average), ``resume`` (from ``checkpoint.pt``), then per
epoch :func:`run_epoch` (train, validate, keep ``best/``) with ``log.csv`` and ``save_checkpoint``, and at the end
:func:`save_final_models` (``last/``, ``swa/``) and :func:`tune_best_model`. The run's settings live in
:mod:`brainseg.training.config`, its slices and batches in :mod:`brainseg.training.data`, the run-folder files in
:mod:`brainseg.training.checkpoints`, validation and the log row in :mod:`brainseg.training.validation`.

Under ``torchrun`` with several processes (:mod:`brainseg.training.distributed`) every rank trains on its shard of each
epoch through ``DistributedDataParallel``; rank 0 alone validates and writes the run folder, and the others
wait for it at the end of each epoch. A world of one runs exactly the single-process path.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as TF
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm import tqdm

from brainseg.config import ModelConfig
from brainseg.evaluation.scoring import evaluate_arrays, tune_postprocessing
from brainseg.inference.preprocess import uint8_batch_to_input
from brainseg.inference.segmenter import Segmenter, autocast, load_model, pick_device
from brainseg.io.hub import resolve_model
from brainseg.io.weights import save_model
from brainseg.models.unet import build_model
from brainseg.training.augment import random_quarter_turns
from brainseg.training.checkpoints import (
    CHECKPOINT_FILE,
    LOG_FILE,
    SHARDS_FILE,
    TrainingState,
    new_state,
    read_log,
    read_shards,
    resume,
    save_checkpoint,
    start_run_folder,
    write_log,
    write_shards,
)
from brainseg.training.config import TrainConfig
from brainseg.training.data import TrainingData, augment_seed, channels_last_on_cpu, load_data, make_batch, rank_order
from brainseg.training.distributed import (
    SINGLE_PROCESS,
    RankInfo,
    check_sync_bn,
    gather_to_main,
    mean_over_ranks,
    process_group,
    rank_device,
    wait_for_all,
    wrap_model,
)
from brainseg.training.teacher import Teacher, place_model
from brainseg.training.validation import log_fields, log_row, validate


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, use_dice: bool) -> torch.Tensor:
    """BCE, plus (1 - soft Dice) pooled over the whole batch when ``use_dice``."""
    bce = TF.binary_cross_entropy_with_logits(logits, target)
    if not use_dice:
        return bce
    proba = torch.sigmoid(logits)
    dice = (2 * (proba * target).sum() + 1.0) / (proba.sum() + target.sum() + 1.0)
    return bce + (1 - dice)


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


def train_epoch(cfg: TrainConfig, state: TrainingState, data: TrainingData, epoch: int, device: torch.device,
                info: RankInfo = SINGLE_PROCESS, order: np.ndarray | None = None) -> float:
    """One pass over this rank's share of the epoch's shuffled slices (``order``, by default
    :func:`brainseg.training.data.rank_order`), an optimizer and schedule step per batch; this rank's mean loss."""
    network = state.training_module()
    network.train()
    generator = torch.Generator().manual_seed(augment_seed(cfg.seed, epoch, info.rank))
    order = torch.from_numpy(rank_order(cfg, data, epoch, info)[0] if order is None else order)
    total_loss, batches = 0.0, 0
    bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
               disable=not info.is_main)
    clean_teacher = None
    if state.teacher is not None and cfg.distill_view == "clean":
        clean_teacher = partial(state.teacher.probability, device=device, bf16=cfg.bf16)
    for start in bar:
        inputs, masks, soft = make_batch(cfg, data, order[start : start + cfg.batch_size], generator, device,
                                         clean_teacher)
        # the teacher sees the slice before any quarter turn (it may not know turned slices); its targets turn along
        if state.teacher is not None and cfg.distill_view == "augmented":
            soft = state.teacher.probability(inputs, device, cfg.bf16)
        if cfg.quarter_turn_prob > 0:
            batch = [inputs, masks] if soft is None else [inputs, masks, soft]
            batch = random_quarter_turns(batch, cfg.quarter_turn_prob, generator)
            inputs, masks, soft = channels_last_on_cpu(batch[0], device), batch[1], (batch[2:] or [None])[0]
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
class EpochRecord:
    """What rank 0 writes after an epoch: the ``log.csv`` row and, under torchrun, a ``shards.jsonl`` row per rank."""

    log_row: dict
    shard_rows: list[dict]


def run_epoch(
    cfg: TrainConfig, state: TrainingState, data: TrainingData, epoch: int, device: torch.device, out: Path,
    info: RankInfo = SINGLE_PROCESS,
) -> EpochRecord | None:
    """Train one epoch, validate, save ``best/`` when the validation score
    (:class:`brainseg.training.validation.Validation`) improved, add the weights to the SWA average from
    ``swa_start`` on; returns the epoch's record (its log row is also printed as JSON).

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
            yield channels_last_on_cpu(inputs, device)

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

    ``best/`` holds the epoch with the best validation score
    (:attr:`brainseg.training.validation.Validation.score`), ``last/`` the final
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
