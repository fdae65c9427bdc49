"""Regression guard: the shipped model, evaluated on all 369 held-out slices, matches its recorded numbers."""
import json
import platform
import subprocess
import sys

import pytest
import torch

from brainseg.config import ModelConfig
from brainseg.hub import BUNDLED_MODEL_DIR
from brainseg.inference import describe_device, pick_device

pytestmark = pytest.mark.slow  # all 369 held-out slices through the bundled model, in a subprocess

RECORDED = BUNDLED_MODEL_DIR / "metrics.json"
KEYS = ["slice_dice", "slice_iou", "tumor_slice_dice", "tumor_slice_iou", "empty_fp_rate", "volume_dice"]


def test_bundled_model_reproduces_its_recorded_metrics(lgg_test_dir, tmp_path) -> None:
    recorded = json.loads(RECORDED.read_text())
    out = tmp_path / "eval.json"
    subprocess.run(
        [sys.executable, "-m", "train.evaluate", "--data-dir", str(lgg_test_dir), "--json", str(out)],
        check=True, capture_output=True, text=True,
    )
    result = json.loads(out.read_text())
    assert (result["n_slices"], result["n_tumor_slices"], result["n_patients"]) == (369, 106, 11)
    for key in KEYS:
        assert result[key] == pytest.approx(recorded[key], abs=0.005), key
    assert result["model_config"] == ModelConfig.load(BUNDLED_MODEL_DIR).to_dict()
    assert result["hardware"] == f"{describe_device(pick_device())}, bf16=False"


def test_cpu_is_described_by_architecture_and_threads() -> None:
    assert describe_device(torch.device("cpu")) == f"{platform.machine()} CPU x{torch.get_num_threads()} threads"


def test_bundled_model_is_small_and_pickle_free() -> None:
    weights = BUNDLED_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size < 15 * 1024 * 1024
    assert not list(BUNDLED_MODEL_DIR.glob("*.pt")) and not list(BUNDLED_MODEL_DIR.glob("*.bin"))
