"""Issue 19: training under torchrun with DistributedDataParallel (2 CPU processes, gloo).

The slow tests run ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m brainseg.cli.train`` on stand-in
patients linked to held-out slices; the fast ones check the pieces (ranks, shards, refusals) in-process.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ProcessOutput, link_standin_patients
from torch import nn

from brainseg import Segmenter
from brainseg.io.dataset import make_split
from brainseg.training.checkpoints import CHECKPOINT_FILE, LOG_FILE, SHARDS_FILE, TRAIN_CONFIG_FILE, TrainingState
from brainseg.training.config import TrainConfig
from brainseg.training.data import load_data
from brainseg.training.distributed import RankInfo, check_sync_bn, epoch_shard, rank_device
from brainseg.training.validation import validate

REPO = Path(__file__).resolve().parents[1]
# 6 stand-in patients of 5 slices; the patient split (seed 2026) validates on the first one, which has lesion
# slices, and trains on the other 25 (odd: 2 ranks get 13 each, one of them a repeat)
SLICE_RANGES = [range(27, 32), range(4, 9), range(9, 14), range(14, 19), range(19, 24), range(32, 37)]
WORLD_SIZE = 2
RUN_TIMEOUT_S = 180
EXIT_AFTER_KILL_S = 60


# --- the pieces, in-process -------------------------------------------------------------------------------------

def test_rank_info_reads_torchrun_variables_and_defaults_to_one_process() -> None:
    assert RankInfo.from_env({}) == RankInfo(rank=0, local_rank=0, world_size=1)
    assert not RankInfo.from_env({}).distributed and RankInfo.from_env({}).is_main
    info = RankInfo.from_env({"WORLD_SIZE": "16", "RANK": "9", "LOCAL_RANK": "1"})
    assert (info.rank, info.local_rank, info.world_size) == (9, 1, 16)
    assert info.distributed and not info.is_main
    with pytest.raises(ValueError, match="torchrun"):
        RankInfo.from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="integers"):
        RankInfo.from_env({"WORLD_SIZE": "two"})


@pytest.mark.parametrize("length", [0, 1, 7, 24, 25, 101])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_epoch_shards_are_equal_disjoint_and_cover_the_epoch(length: int, world_size: int) -> None:
    order = np.random.default_rng(length).permutation(1000)[:length]
    shards = [epoch_shard(order, RankInfo(rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(shard) for shard, _ in shards}) == 1  # same step count on every rank
    own = [shard[: len(shard) - repeats] for shard, repeats in shards]
    seen = np.concatenate(own)
    assert sorted(seen.tolist()) == sorted(order.tolist())  # disjoint and covering
    assert sum(repeats for _, repeats in shards) == -length % world_size
    assert all(r <= 1 for _, r in shards)
    if world_size == 1:
        assert shards[0][0] is order  # a world of one trains on the epoch order itself
    batch = 2  # global step k = order[k*B*W : (k+1)*B*W]
    for k in range(len(order) // (batch * world_size)):
        step = np.concatenate([shard[k * batch : (k + 1) * batch] for shard, _ in shards])
        assert sorted(step.tolist()) == sorted(order[k * batch * world_size : (k + 1) * batch * world_size].tolist())


def test_devices_per_rank_and_sync_bn_needs_cuda() -> None:
    two = RankInfo(rank=1, local_rank=1, world_size=2)
    assert rank_device(torch.device("cpu"), two) == torch.device("cpu")
    assert rank_device(torch.device("cuda"), RankInfo()) == torch.device("cuda")  # one process: as picked
    assert rank_device(torch.device("cuda", 0), two) == torch.device("cuda", 0)  # explicit index kept
    if torch.cuda.device_count() > 1:
        assert rank_device(torch.device("cuda"), two) == torch.device("cuda", 1)
    else:
        with pytest.raises(ValueError, match="--nproc_per_node"):
            rank_device(torch.device("cuda"), two)
    with pytest.raises(ValueError, match="--sync-bn"):
        check_sync_bn(torch.device("cpu"))


def test_a_checkpoint_resumes_only_with_the_world_size_that_wrote_it() -> None:
    def state(world_size: int) -> TrainingState:
        model = nn.Conv2d(1, 1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10 * 3 // world_size)
        return TrainingState(model, optimizer, scheduler, None, epoch=2, world_size=world_size)

    saved = state(2).state_dict()
    assert saved["world_size"] == 2
    with pytest.raises(ValueError, match="2 training process"):
        state(1).load_state_dict(saved)
    resumed = state(2)
    resumed.load_state_dict(saved)
    assert resumed.epoch == 2
    old = {k: v for k, v in state(1).state_dict().items() if k != "world_size"}  # written before issue 19
    state(1).load_state_dict(old)


# --- torchrun, 2 processes on the CPU -----------------------------------------------------------------------------

def torchrun_command(data_dir: Path, out_dir: Path, epochs: int, batch_size: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
        "-m", "brainseg.cli.train", "--data-dir", str(data_dir), "--out-dir", str(out_dir), "--base-channels", "4",
        "--depth", "2", "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", "0.01",
        "--no-tune-postprocessing", "--precision", "fp32", "--seed", "3", "--dist-timeout-s", "120",
    ]


def read_log(out_dir: Path) -> list[dict]:
    with open(out_dir / LOG_FILE, newline="") as fh:
        return list(csv.DictReader(fh))


def read_shards(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / SHARDS_FILE).read_text().splitlines()]


@pytest.fixture
def standin_data(lgg_test_dir, tmp_path) -> Path:
    data = tmp_path / "data"
    link_standin_patients(lgg_test_dir, data, SLICE_RANGES)
    return data


def training_slice_names(data_dir: Path) -> list[str]:
    return [f"{r.patient}_{r.index}" for r in make_split(data_dir, "patient").train]


def start_job(command: list[str]) -> tuple[subprocess.Popen, ProcessOutput]:
    """A torchrun job in the background, its output (stdout and stderr together) read as it comes."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return process, ProcessOutput(process.stdout)


def signal_rank_one(process: subprocess.Popen, output: ProcessOutput, ready: Callable[[str], bool],
                    signal_number: int) -> tuple[int, float] | None:
    """Send ``signal_number`` to rank 1 once ``ready(output so far)``; its pid and when, or None when the job ended
    (or :data:`RUN_TIMEOUT_S` passed) first."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        pid = re.search(r"rank 1/2: pid (\d+)", output.text)
        if pid and ready(output.text):
            os.kill(int(pid.group(1)), signal_number)
            return int(pid.group(1)), time.monotonic()
        time.sleep(0.02)
    return None


def check_shards(out_dir: Path, data_dir: Path, epochs: list[int]) -> None:
    """Per epoch: one row per rank, equal lengths, disjoint own slices that together are the training set."""
    expected = sorted(training_slice_names(data_dir))
    rows = read_shards(out_dir)
    assert [(r["epoch"], r["rank"]) for r in rows] == [(e, rank) for e in epochs for rank in range(WORLD_SIZE)]
    for epoch in epochs:
        shards = [r for r in rows if r["epoch"] == epoch]
        assert len({len(r["slices"]) for r in shards}) == 1
        own = [r["slices"][: len(r["slices"]) - r["repeats"]] for r in shards]
        assert not set(own[0]) & set(own[1])
        assert sorted(own[0] + own[1]) == expected
        assert sum(r["repeats"] for r in shards) == len(expected) % WORLD_SIZE


@pytest.mark.slow
@pytest.mark.e2e
def test_torchrun_two_processes_train_shard_and_save_like_one(standin_data, tmp_path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(torchrun_command(standin_data, out, epochs=2, batch_size=4), cwd=REPO,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("best model:") == 1  # printed by rank 0 only

    rows = read_log(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    settings = json.loads((out / TRAIN_CONFIG_FILE).read_text())
    assert settings["world_size"] == WORLD_SIZE and settings["batch_size"] == 4
    checkpoint = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["world_size"] == WORLD_SIZE
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # the plain network, not the DDP wrapper
    check_shards(out, standin_data, [1, 2])

    last = Segmenter.from_pretrained(out / "last")
    assert last.config.extra == {"epoch": 2} and last.config.base_channels == 4
    Segmenter.from_pretrained(out / "best")
    # the logged validation of epoch 2 is a single-process evaluation of the final weights
    cfg = TrainConfig(**{k: v for k, v in settings.items() if k != "world_size"})
    report = validate(cfg, last.model, load_data(cfg, torch.device("cpu"), verbose=False), torch.device("cpu")).report
    assert float(rows[-1]["val_slice_dice"]) == pytest.approx(report.slice_dice, abs=1e-4)
    assert float(rows[-1]["val_volume_dice"]) == pytest.approx(report.volume_dice, abs=1e-4)
    assert report.tumor_slice_dice == report.tumor_slice_dice  # the validation patient has lesion slices


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_rank_fails_the_job_promptly_and_a_relaunch_resumes(standin_data, tmp_path) -> None:
    out, epochs = tmp_path / "run", 3
    command = torchrun_command(standin_data, out, epochs=epochs, batch_size=1)  # 13 steps per epoch per rank
    process, output = start_job(command)
    done_epoch = None

    def mid_next_epoch(text: str) -> bool:
        """A checkpoint is saved and rank 0's bar shows at least one step of the next epoch, and not its last."""
        nonlocal done_epoch
        if not (out / CHECKPOINT_FILE).exists():
            return False
        done_epoch = torch.load(out / CHECKPOINT_FILE, weights_only=True)["epoch"]
        return bool(re.search(rf"epoch {done_epoch + 1}/{epochs}:\s+\d+%[^\r\n]*\| *([1-9]|1[0-2])/13", text))

    try:
        killed = signal_rank_one(process, output, mid_next_epoch, signal.SIGKILL)
        assert killed is not None, f"training ended or stalled before a mid-epoch kill:\n{output.text[-3000:]}"
        process.wait(timeout=EXIT_AFTER_KILL_S)  # no hang: the surviving rank and torchrun give up
        exit_seconds = time.monotonic() - killed[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output.join()
    assert process.returncode != 0, output.text[-3000:]
    print(f"job exited {process.returncode} {exit_seconds:.1f} s after rank 1 was killed in epoch {done_epoch + 1}")
    checkpoint = torch.load(out / CHECKPOINT_FILE, weights_only=True)  # whole, and from before the kill
    assert checkpoint["epoch"] == done_epoch < epochs

    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / CHECKPOINT_FILE} after epoch {done_epoch}" in resumed.stdout
    assert [int(r["epoch"]) for r in read_log(out)] == list(range(1, epochs + 1))  # each epoch exactly once
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["epoch"] == epochs
    check_shards(out, standin_data, list(range(1, epochs + 1)))
    assert Segmenter.from_pretrained(out / "last").config.extra == {"epoch": epochs}


@pytest.mark.slow
@pytest.mark.e2e
def test_a_stalled_rank_times_out_instead_of_hanging(standin_data, tmp_path) -> None:
    """Rank 1 frozen (SIGSTOP) mid-epoch: rank 0 gives up after --dist-timeout-s and torchrun starts ending the job
    (SIGTERM to the frozen rank; torchrun then waits its fixed 30 s grace before SIGKILL, which the test does not
    wait for: it kills the job itself once the SIGTERM is sent)."""
    timeout_s = 5
    command = torchrun_command(standin_data, tmp_path / "run", epochs=3, batch_size=1)
    command[command.index("--dist-timeout-s") + 1] = str(timeout_s)
    process, output = start_job(command)
    stalled_pid = None
    try:
        stopped = signal_rank_one(
            process, output, lambda text: bool(re.search(r"epoch 1/3:\s+\d+%[^\r\n]*\| *([1-9]|1[0-2])/13", text)),
            signal.SIGSTOP)
        assert stopped is not None, f"training ended or stalled before rank 1 was stopped:\n{output.text[-3000:]}"
        stalled_pid, stopped_at = stopped
        ending = re.compile(rf"Sending process {stalled_pid} closing signal SIGTERM")
        deadline = stopped_at + timeout_s + 60
        while time.monotonic() < deadline and process.poll() is None and not ending.search(output.text):
            time.sleep(0.05)
        ending_seconds = time.monotonic() - stopped_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if stalled_pid is not None and Path(f"/proc/{stalled_pid}").exists():
            os.kill(stalled_pid, signal.SIGKILL)
    output.join()
    print(f"torchrun began ending the job {ending_seconds:.1f} s after rank 1 froze")
    assert ending.search(output.text), output.text[-3000:]  # torchrun ends the job instead of waiting forever
    assert f"Timed out waiting {timeout_s * 1000}ms" in output.text  # rank 0's collective gave up, as configured
