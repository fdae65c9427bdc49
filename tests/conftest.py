"""Shared fixtures, and the real scans the data tests read.

The data live beside the checkout in ``../shared/data`` (read-only; CI always has it):

- ``lgg-test/``: the held-out LGG patients (Kaggle layout), through the ``lgg_test_dir`` fixture;
- ``external-brats2013/``: five BRATS 2013 NIfTI subjects, through ``external_dir`` / ``brats_subject``.

Where a folder is absent, every test that takes it skips and says which folder it needs; the rest (synthetic slices
and volumes, ``volume_synth.py``) still runs. ``BRAINSEG_SHARED_DIR`` points the tests at another copy of
``shared/``; a path that does not exist hides the data, which shows what a checkout without it runs::

    BRAINSEG_SHARED_DIR=/nonexistent python -m pytest -q -m "not slow" tests

With ``CI`` set and ``BRAINSEG_SHARED_DIR`` not set, a missing folder fails those tests instead of skipping them.
See docs/testing.md.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import pytest

from brainseg.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("BRAINSEG_SHARED_DIR") or REPO.parent / "shared")
LGG_TEST_DIR = SHARED_DIR / "data" / "lgg-test"
EXTERNAL_DIR = SHARED_DIR / "data" / "external-brats2013"
BRATS_SUBJECT = "brats_2013_pat0002_1"  # FLAIR, T1c, brain mask and the multi-class truth, 240 x 240 x 155
# ONNX graphs the tests export go to a throwaway cache, not the user's ~/.cache (subprocesses inherit it).
os.environ.setdefault("BRAINSEG_CACHE", tempfile.mkdtemp(prefix="brainseg-test-cache-"))


def require_data(folder: Path, what: str) -> Path:
    """``folder`` of ``shared/data``; without it the calling test skips with the reason, or fails in CI (which
    must have it) unless ``BRAINSEG_SHARED_DIR`` hid it on purpose."""
    if folder.is_dir():
        return folder
    message = f"needs {folder} ({what}); absent here, CI has it"
    if os.environ.get("CI") and not os.environ.get("BRAINSEG_SHARED_DIR"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def lgg_test_dir() -> Path:
    """The held-out LGG patients (``shared/data/lgg-test``)."""
    return require_data(LGG_TEST_DIR, "the held-out LGG patients")


@pytest.fixture(scope="session")
def external_dir() -> Path:
    """The five external BRATS 2013 subjects (``shared/data/external-brats2013``)."""
    return require_data(EXTERNAL_DIR, "the external BRATS 2013 NIfTI subjects")


@pytest.fixture(scope="session")
def brats_subject(external_dir: Path) -> Path:
    """One external BRATS subject folder (:data:`BRATS_SUBJECT`)."""
    return require_data(external_dir / BRATS_SUBJECT, "a BRATS 2013 subject")


@pytest.fixture(scope="session")
def synthetic_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TIFF of :func:`volume_synth.synthetic_slice` (256 x 256 RGB, written like a Kaggle slice): for tests of
    file handling that need a valid slice, not a real one, so they run without ``shared/data``."""
    import tifffile
    from volume_synth import synthetic_slice as make_slice

    path = tmp_path_factory.mktemp("synthetic") / "TCGA_SY_0000_20000101_1.tif"
    tifffile.imwrite(path, make_slice()[0], photometric="rgb")
    return path


@pytest.fixture(scope="session")
def synthetic_scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """NIfTI files of 6 synthetic slices on one LAS grid, as ``brainseg predict`` takes them: ``flair``, ``t1ce``
    and ``other_grid`` (one slice fewer); for refusals and I/O checks that need valid scans, not real numbers."""
    import numpy as np
    from volume_synth import affine_of, save_nifti, synthetic_slice

    folder = tmp_path_factory.mktemp("synthetic_scans")
    affine = affine_of(np.diag([-0.9, 0.9, 2.5]), origin=(115.0, -115.0, -20.0))
    stack = np.stack([synthetic_slice(seed)[0] for seed in range(6)], axis=-1)  # (256, 256, 3, 6)
    flair, t1ce = stack[:, :, 1].astype(np.int16), stack[:, :, 2].astype(np.int16)
    return {"flair": save_nifti(flair, affine, folder / "flair.nii.gz"),
            "t1ce": save_nifti(t1ce, affine, folder / "t1ce.nii.gz"),
            "other_grid": save_nifti(t1ce[:, :, 1:], affine, folder / "t1.nii.gz")}


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
    """``brainseg evaluate --json`` of a bundled model (the default when ``name`` is None), run through the
    command's ``main`` in this process (no interpreter start-up per model): its result."""
    from brainseg.cli.evaluate import main as evaluate_main

    model = [] if name is None else ["--model", name]
    assert evaluate_main(["--test-dir", str(test_dir), *model, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def assert_matches_recorded(result: dict, folder: Path) -> None:
    """``result``'s metrics within 0.005 of ``folder/metrics.json``, and its model config ``folder``'s."""
    recorded = json.loads((folder / "metrics.json").read_text())
    for key in RECORDED_KEYS:
        assert result[key] == pytest.approx(recorded[key], abs=0.005), key
    assert result["model_config"] == ModelConfig.load(folder).to_dict()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest):
    """The demo app with the test patients as its data folder, one for the session (``tests/demo_server.py``)."""
    from demo_server import demo_server

    return demo_server(request)


@pytest.fixture()
def client(server):
    """A fresh ``gradio_client`` session on ``server`` (each Client has its own session state)."""
    from gradio_client import Client

    return Client(server.url, verbose=False)
