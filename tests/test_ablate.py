"""brainseg.cli.ablate end to end on a tiny budget: every variant trained, then scored on the held-out patients only."""
import json
import subprocess
import sys

import pytest
from conftest import link_patient

from brainseg.io.dataset import scan_dataset

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # trains and scores two variants through the CLI

TEST_PATIENTS = ["TCGA_CS_4944_20010208", "TCGA_DU_6407_19860514"]


def make_dataset(lgg_test_dir, root) -> None:
    """Two held-out patients under their own names, plus 9 "training" patients linked to another one's slices."""
    for name in TEST_PATIENTS:
        (root / name).symlink_to(lgg_test_dir / name, target_is_directory=True)
    source = lgg_test_dir / "TCGA_DU_5871_19941206"
    for i in range(9):  # 36 slices, all of that patient
        link_patient(source, root / f"TCGA_XX_{i:04d}_20000101", range(4 * i + 1, 4 * i + 5))


def test_normalization_study_scores_each_variant_on_the_test_patients(lgg_test_dir, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_dataset(lgg_test_dir, data)
    out = tmp_path / "ablate"
    done = subprocess.run(
        [sys.executable, "-m", "brainseg.cli.ablate", "--study", "normalization", "--data-dir", str(data),
         "--out-dir", str(out), "--base-channels", "4", "--epochs", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "normalization.json").read_text())["rows"]
    assert [r["normalize"] for r in rows] == [True, False]
    test_slices = sum(len(p.slices) for p in scan_dataset(data) if p.folder in TEST_PATIENTS)
    for row in rows:
        assert (row["n_patients"], row["n_slices"]) == (2, test_slices)
        assert 0.0 <= row["slice_dice"] <= 1.0 and 0.0 <= row["volume_dice"] <= 1.0
    table = (out / "normalization.md").read_text()
    assert "width 4, 1 epochs" in table and table in done.stdout
    assert ("| variant | slice Dice | slice IoU | tumor-slice Dice | empty FP rate | volume Dice | train min |\n"
            "|---|---|---|---|---|---|---|\n") in table
    first = rows[0]
    assert (f"| {first['variant']} | {first['slice_dice']:.3f} | {first['slice_iou']:.3f} | "
            f"{first['tumor_slice_dice']:.3f} | {first['empty_fp_rate']:.3f} | {first['volume_dice']:.3f} | "
            f"{first['minutes']} |") in table
    assert table.count("\n| ") == 1 + len(rows)  # the header line, then one line per variant
    assert (out / "normalization" / "normalize=True" / "best").is_dir()
    assert (out / "normalization" / "normalize=False" / "best").is_dir()
