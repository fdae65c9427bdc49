"""Training on several processes under ``torchrun``: who this process is, the process group, epoch shards.

A process that ``torchrun`` did not start (or started alone, ``--nproc_per_node=1``) is a world of one:
:meth:`RankInfo.current` says so, and every helper here then does nothing, so a plain ``brainseg train``
runs exactly the single-process code path.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"inconsistent process ranks (rank {self.rank}, local rank {self.local_rank}, world "
                             f"size {self.world_size}): start distributed training with torchrun")

    @property
    def distributed(self) -> bool:
        """More than one process: gradients, losses and shards are shared between them."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that validates and writes the run folder."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RankInfo:
        """The ranks ``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); a world of one without them."""
        try:
            values = {name: int(env.get(name, default)) for name, default in zip(TORCHRUN_VARIABLES, "100")}
        except ValueError as exc:
            raise ValueError(f"{', '.join(TORCHRUN_VARIABLES)} must be integers (torchrun sets them): {exc}") from exc
        return cls(rank=values["RANK"], local_rank=values["LOCAL_RANK"], world_size=values["WORLD_SIZE"])

    @classmethod
    def current(cls) -> RankInfo:
        """From the running process group when one is initialised, otherwise from the environment."""
        if dist.is_available() and dist.is_initialized():
            local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
            return cls(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size())
        return cls.from_env()


SINGLE_PROCESS = RankInfo()


def rank_device(device: torch.device, info: RankInfo) -> torch.device:
    """``device``, except that each process of a multi-process CUDA run gets its own GPU: ``cuda:LOCAL_RANK``.

    An explicit index (``--device cuda:1``) is kept as given.
    """
    if not info.distributed or device.type != "cuda" or device.index is not None:
        return device
    if info.local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {info.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                         "pass --nproc_per_node at most the number of GPUs")
    return torch.device("cuda", info.local_rank)


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(info: RankInfo, device: torch.device, timeout: timedelta) -> Iterator[None]:
    """Join ``torchrun``'s process group for the ``with`` block and leave it afterwards, also on an error.

    ``timeout`` bounds every wait in a collective (a rank that stops answering fails the job instead of
    hanging it). A world of one, or a group the caller already started, is left alone.
    """
    if not info.distributed or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed: use a standard PyTorch build for torchrun")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # env:// rendezvous: MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE come from torchrun
    dist.init_process_group(backend_for(device), timeout=timeout,
                            device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: RankInfo, device: torch.device, sync_bn: bool) -> nn.Module:
    """The module training calls: ``model`` itself in a world of one, else ``DistributedDataParallel(model)``.

    ``sync_bn`` turns the BatchNorm layers of ``model`` into ``SyncBatchNorm`` in place (same parameters and
    running statistics, so saving and evaluating ``model`` is unchanged); it needs CUDA.
    """
    if not info.distributed:
        return model
    if sync_bn:
        check_sync_bn(device)
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert converted is model, "the network's top module must not be a BatchNorm layer"
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def check_sync_bn(device: torch.device) -> None:
    """Refuse ``--sync-bn`` where PyTorch has no SyncBatchNorm (anything but CUDA)."""
    if device.type != "cuda":
        raise ValueError(f"--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on {device.type}): "
                         "drop --sync-bn")


def epoch_shard(order: np.ndarray, info: RankInfo) -> tuple[np.ndarray, int]:
    """This rank's part of one epoch's sample ``order`` and how many of its entries are repeats.

    The order is padded by wrapping around to a multiple of ``world_size`` (as PyTorch's ``DistributedSampler``
    does), then rank ``r`` takes every ``world_size``-th entry from ``r`` on. Every rank gets the same number of
    slices, so all run the same number of optimizer steps (DDP needs that); together the shards cover the whole
    epoch, and apart from the at most ``world_size - 1`` padding entries (one at most, at the end of a shard,
    counted in the second value) no slice is in two shards. Global step ``k`` sees
    ``order[k * B * world_size : (k + 1) * B * world_size]`` for a per-rank batch ``B``. A world of one gets
    ``order`` itself.
    """
    if not info.distributed:
        return order, 0
    padded_length = -(-len(order) // info.world_size) * info.world_size
    padded = np.resize(order, padded_length)  # np.resize repeats the array from its start
    shard = padded[info.rank :: info.world_size]
    repeats = int(np.count_nonzero(np.arange(info.rank, padded_length, info.world_size) >= len(order)))
    return shard, repeats


def mean_over_ranks(value: float, info: RankInfo, device: torch.device) -> float:
    """The mean of every rank's ``value``; ``value`` itself in a world of one."""
    if not info.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / info.world_size


def gather_to_main(value: Any, info: RankInfo) -> list[Any] | None:
    """Every rank's ``value`` (picklable), in rank order, on rank 0; None on the other ranks."""
    if not info.distributed:
        return [value]
    gathered: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def broadcast_from_main(value: Any, info: RankInfo) -> Any:
    """Rank 0's ``value`` (picklable) on every rank; the others' ``value`` is ignored."""
    if not info.distributed:
        return value
    holder = [value if info.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def wait_for_all(info: RankInfo) -> None:
    """Block until every rank gets here (e.g. while rank 0 validates and writes the checkpoint)."""
    if info.distributed:
        dist.barrier()
