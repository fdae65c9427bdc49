"""Issue 5, training faults: SIGKILL mid-epoch, resume, and a log with every epoch exactly once.

``brainseg train`` runs as a subprocess on a few real test slices (tiny U-Net); it is killed
once ``checkpoint.pt`` exists and the next epoch's progress bar has started, then resumed.
"""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ProcessOutput

from brainseg.training.checkpoints import CHECKPOINT_FILE, LOG_FILE

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # a real training process, SIGKILLed and resumed

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
TIMEOUT_S = 240


def train_command(data_dir: Path, out_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "brainseg.cli.train", "--data-dir", str(data_dir), "--out-dir", str(out_dir),
        "--base-channels", "4", "--depth", "2", "--epochs", str(EPOCHS), "--batch-size", "2", "--lr", "0.01",
        "--schedule", "constant", "--split", "article", "--max-train-slices", "48", "--max-val-slices", "4",
        "--no-tune-postprocessing", "--precision", "fp32", "--seed", "3",
    ]


def read_epochs(out_dir: Path) -> list[int]:
    with open(out_dir / LOG_FILE, newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def kill_mid_epoch(data_dir: Path, out_dir: Path) -> int:
    """Start training, SIGKILL it inside epoch ``checkpoint + 1``; returns the checkpoint's epoch."""
    process = subprocess.Popen(train_command(data_dir, out_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    err = ProcessOutput(process.stderr)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline and process.poll() is None:
            ckpt = out_dir / CHECKPOINT_FILE
            if ckpt.exists():
                done = torch.load(ckpt, weights_only=True)["epoch"]
                # at least one step of the next epoch, and not its last one
                if re.search(rf"epoch {done + 1}/{EPOCHS}:\s+\d+%[^\r\n]*\| *[1-9]\d*/", err.text):
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
                    return done
            time.sleep(0.02)
        raise AssertionError(f"training ended or stalled before a mid-epoch kill:\n{err.text[-2000:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigkill_mid_epoch_then_resume_keeps_every_epoch_once(lgg_test_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = kill_mid_epoch(lgg_test_dir, out)
    assert 1 <= done < EPOCHS
    assert read_epochs(out) == list(range(1, done + 1)), "the killed epoch never reached the log"
    state = torch.load(out / CHECKPOINT_FILE, weights_only=True)  # whole: written by tmp + fsync + replace
    assert state["epoch"] == done and set(state) >= {"model", "optimizer", "scheduler"}

    resumed = subprocess.run(train_command(lgg_test_dir, out), cwd=REPO, capture_output=True, text=True,
                             timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {out / CHECKPOINT_FILE} after epoch {done}" in resumed.stdout
    assert read_epochs(out) == list(range(1, EPOCHS + 1)), "no duplicate or missing epochs"
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["epoch"] == EPOCHS
    assert not list(out.glob("*.tmp")), "no half-written file left behind"
    assert {p.name for p in (out / "best").iterdir()} == {"model.safetensors", "config.json"}


def test_torch_load_is_always_weights_only() -> None:
    """Every ``torch.load`` in the project passes ``weights_only=True``; weights come from safetensors."""
    calls = []
    for path in [*REPO.glob("brainseg/**/*.py"), *REPO.glob("train/*.py"), REPO / "app.py"]:
        for match in re.finditer(r"torch\.load\(([^)]*)\)", path.read_text()):
            calls.append((path.name, match.group(1)))
    assert all("weights_only=True" in args for _, args in calls), calls
