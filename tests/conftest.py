"""Shared fixtures: the held-out test patients in ../shared (read-only); a bundled model evaluated as recorded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from brainseg.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
LGG_TEST_DIR = REPO.parent / "shared" / "data" / "lgg-test"
# ONNX graphs the tests export go to a throwaway cache, not the user's ~/.cache (subprocesses inherit it).
os.environ.setdefault("BRAINSEG_CACHE", tempfile.mkdtemp(prefix="brainseg-test-cache-"))


@pytest.fixture(scope="session")
def lgg_test_dir() -> Path:
    """The held-out patients; a test that needs them is skipped, with the reason, on a checkout without them
    (CI always has ``../shared``, so there every such test runs)."""
    if not LGG_TEST_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{LGG_TEST_DIR} is missing: CI must have ../shared/data/lgg-test")
        pytest.skip(f"{LGG_TEST_DIR} is missing: these tests need the held-out patients in ../shared/data/lgg-test")
    return LGG_TEST_DIR


def link_patient(source: Path, folder: Path, indices) -> None:
    """A stand-in patient ``folder`` whose slices ``indices`` (and masks) are links to ``source``'s, nothing copied."""
    folder.mkdir(parents=True)
    for n in indices:
        for suffix in ("", "_mask"):
            (folder / f"{folder.name}_{n}{suffix}.tif").symlink_to(source / f"{source.name}_{n}{suffix}.tif")


STANDIN_SOURCE = "TCGA_DU_5871_19941206"  # 36 slices, lesion on 17-31


def link_standin_patients(lgg_test_dir: Path, root: Path, slice_ranges: list[range]) -> list[str]:
    """Stand-in patients ``TCGA_XX_000i_20000101`` under ``root``, patient ``i`` linked to slices
    ``slice_ranges[i]`` of one held-out patient (:data:`STANDIN_SOURCE`); returns their names.

    The names are not held-out ones, so the patient split puts them in train / validation.
    """
    names = [f"TCGA_XX_{i:04d}_20000101" for i in range(len(slice_ranges))]
    for name, indices in zip(names, slice_ranges):
        link_patient(lgg_test_dir / STANDIN_SOURCE, root / name, indices)
    return names


class ProcessOutput:
    """Collects what a subprocess writes to one pipe (e.g. ``stdout`` with ``stderr=STDOUT``) in a background thread."""

    def __init__(self, stream) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        while chunk := stream.read1(4096):
            self.text += chunk.decode(errors="replace")

    def join(self, timeout_s: float = 10) -> None:
        """Wait until the pipe is closed (the process and its children ended) and read to its end."""
        self._thread.join(timeout=timeout_s)


RECORDED_KEYS = ["slice_dice", "slice_iou", "tumor_slice_dice", "tumor_slice_iou", "empty_fp_rate", "volume_dice"]


def evaluate_bundled(test_dir: Path, out: Path, name: str | None = None) -> dict:
    """``brainseg evaluate --json`` in a subprocess of a bundled model (the default when ``name`` is None): its
    result."""
    model = [] if name is None else ["--model", name]
    subprocess.run([sys.executable, "-m", "brainseg.cli.evaluate", "--test-dir", str(test_dir), *model,
                    "--json", str(out)], check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def assert_matches_recorded(result: dict, folder: Path) -> None:
    """``result``'s metrics within 0.005 of ``folder/metrics.json``, and its model config ``folder``'s."""
    recorded = json.loads((folder / "metrics.json").read_text())
    for key in RECORDED_KEYS:
        assert result[key] == pytest.approx(recorded[key], abs=0.005), key
    assert result["model_config"] == ModelConfig.load(folder).to_dict()
