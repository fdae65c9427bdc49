"""Shared fixtures: the held-out test patients in ../shared (read-only)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LGG_TEST_DIR = REPO.parent / "shared" / "data" / "lgg-test"


@pytest.fixture(scope="session")
def lgg_test_dir() -> Path:
    assert LGG_TEST_DIR.is_dir(), f"{LGG_TEST_DIR} is missing: the tests need ../shared/data/lgg-test"
    return LGG_TEST_DIR


def link_patient(source: Path, folder: Path, indices) -> None:
    """A stand-in patient ``folder`` whose slices ``indices`` (and masks) are links to ``source``'s, nothing copied."""
    folder.mkdir(parents=True)
    for n in indices:
        for suffix in ("", "_mask"):
            (folder / f"{folder.name}_{n}{suffix}.tif").symlink_to(source / f"{source.name}_{n}{suffix}.tif")
