"""Cohorts (``brainseg.cli.predict --manifest/--workers/--engine``): one results table, resumable, bad scans as rows.

The scans are synthetic heads (a noisy ellipsoid with one bright blob on the patient's left or right), written at
run time; the bundled U-Net finds the blob, so volumes, laterality and Dice are real numbers read back from the
written masks.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO

from brainseg.cli.predict import build_parser, main
from brainseg.cohort.runner import (
    ResultsTable,
    discover,
    lock,
    read_manifest,
    remove_stale_temporaries,
    settings_from_args,
    unique_names,
)
from brainseg.io.subjects import SubjectInputs
from brainseg.io.volumes import VolumeError

SHAPE, SPACING = (64, 64, 8), (3.0, 3.0, 5.0)
VOXEL_ML = float(np.prod(SPACING)) / 1000
BROKEN = {  # name -> what the error row must say
    "garbage": "not a readable NIfTI file",
    "truncated": "truncated or corrupt",
    "flat": "has 2 dimensions",
    "series": "3 volumes",
    "missing": "no such file",
}


def synthetic_head(seed: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """(data, blob) on an RAS+ grid: i runs to the patient's right, so a blob at small i is on the left."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    head = ((x - 32) / 27) ** 2 + ((y - 32) / 29) ** 2 + ((z - 3.5) / 6) ** 2 < 1
    data = np.where(head, 300 + 40 * rng.standard_normal(SHAPE), 5 * rng.random(SHAPE))
    centre = 20 + seed % 3 if side == "left" else 44 - seed % 3
    blob = ((x - centre) / 6) ** 2 + ((y - 30) / 6) ** 2 + ((z - 3.5) / 2.2) ** 2 < 1
    data[blob] = 700
    return data.astype(np.int16), blob


def save(data: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([*SPACING, 1.0])), str(path))
    return path


def write_cohort(folder: Path, n_good: int = 15) -> tuple[Path, dict[str, str]]:
    """``n_good`` scans (even: blob on the left, odd: right; scan 0 with a ground truth) and the 5 broken ones,
    listed in a CSV manifest with relative paths; returns it and each good scan's side."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, sides = [], {}
    for i in range(n_good):
        side = "left" if i % 2 == 0 else "right"
        data, blob = synthetic_head(i, side)
        save(data, folder / f"scan{i:02d}.nii.gz")
        row = {"name": f"scan{i:02d}", "flair": f"scan{i:02d}.nii.gz", "truth": ""}
        if i == 0:
            save(blob.astype(np.uint8), folder / "scan00_truth.nii.gz")
            row["truth"] = "scan00_truth.nii.gz"
        rows.append(row)
        sides[row["name"]] = side
    good = (folder / "scan00.nii.gz").read_bytes()
    (folder / "garbage.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI file" * 40))
    (folder / "truncated.nii.gz").write_bytes(gzip.compress(gzip.decompress(good)[:20000]))
    save(np.ones((64, 64), np.int16), folder / "flat.nii.gz")
    save(np.ones((16, 16, 4, 3), np.int16), folder / "series.nii.gz")
    rows += [{"name": name, "flair": f"{name}.nii.gz", "truth": ""} for name in BROKEN]
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["name", "flair", "truth"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest, sides


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def mask_voxels(path: str) -> int:
    return int(np.asarray(nib.load(path).dataobj).sum())


# ------------------------------------------------------------------------------------------------ manifest
def test_manifests_in_csv_and_json_lines_resolve_relative_paths(tmp_path):
    (tmp_path / "a.csv").write_text("Name,FLAIR,t1ce\nfirst,scans/a.nii.gz,scans/a_t1c.nii.gz\n,/abs/b.nii.gz,\n")
    scans = read_manifest(tmp_path / "a.csv")
    assert scans == [SubjectInputs("first", tmp_path / "scans/a.nii.gz", None, tmp_path / "scans/a_t1c.nii.gz"),
                     SubjectInputs("b", Path("/abs/b.nii.gz"))]
    (tmp_path / "b.jsonl").write_text(json.dumps({"input": "c.nii", "id": 7}) + "\n\n")
    assert read_manifest(tmp_path / "b.jsonl") == [SubjectInputs("7", tmp_path / "c.nii")]


@pytest.mark.parametrize(("name", "text", "reason"), [
    ("c.csv", "path_to_scan\nx.nii.gz\n", "entry 1 has no 'flair'"),
    ("d.jsonl", '{"flair": "x.nii"}\n{oops\n', "line 2 is not JSON"),
])
def test_a_manifest_without_a_flair_column_or_with_a_bad_line_is_refused(tmp_path, name, text, reason):
    (tmp_path / name).write_text(text)
    with pytest.raises(VolumeError, match=reason):
        read_manifest(tmp_path / name)


def test_a_bids_tree_gives_one_scan_per_flair_with_its_t1_and_post_contrast_t1(tmp_path):
    data, _ = synthetic_head(0, "left")
    for anat in ("sub-01/anat", "sub-02/ses-1/anat", "sub-02/ses-2/anat"):
        (tmp_path / anat).mkdir(parents=True)
    stem1, stem2 = "sub-01", "sub-02_ses-1"
    for name in (f"{stem1}_FLAIR.nii.gz", f"{stem1}_T1w.nii.gz", f"{stem1}_ce-gadolinium_T1w.nii.gz"):
        save(data, tmp_path / "sub-01/anat" / name)
    save(data, tmp_path / "sub-02/ses-1/anat" / f"{stem2}_FLAIR.nii.gz")
    save(data, tmp_path / "sub-02/ses-2/anat/sub-02_ses-2_T2w.nii.gz")
    scans = discover([tmp_path])
    anat1 = tmp_path / "sub-01/anat"
    assert scans == [SubjectInputs("sub-01", anat1 / f"{stem1}_FLAIR.nii.gz", anat1 / f"{stem1}_T1w.nii.gz",
                                   anat1 / f"{stem1}_ce-gadolinium_T1w.nii.gz"),
                     SubjectInputs("sub-02_ses-1", tmp_path / "sub-02/ses-1/anat" / f"{stem2}_FLAIR.nii.gz")]
    named = unique_names([SubjectInputs(name, Path(flair)) for name, flair in (("a", "1"), ("a", "2"), ("a_2", "3"))])
    assert [(s.name, s.flair) for s in named] == [("a", Path("1")), ("a_2", Path("2")), ("a_2_2", Path("3"))]


def test_a_second_run_on_the_same_table_is_refused_and_stale_temporaries_are_removed(tmp_path):
    held = lock(tmp_path / "results.csv.lock")
    try:
        with pytest.raises(VolumeError, match="another run is writing .*results.csv"):
            lock(tmp_path / "results.csv.lock")
    finally:
        os.close(held)
    os.close(lock(tmp_path / "results.csv.lock"))  # free again once the holder is gone
    stale = [tmp_path / ".a_mask.nii.gz.x1.tmp", tmp_path / "p" / ".s_1_mask.png.x2.tmp",
             tmp_path / ".results.csv.x.tmp"]
    kept = [tmp_path / "a_mask.nii.gz", tmp_path / "notes.tmp"]
    for path in stale + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path, tmp_path / "results.csv") == 3
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_cohort_mistakes_end_in_one_error_line(tmp_path, capsys, monkeypatch):
    for argv, message in (
        (["--out-dir", str(tmp_path)], "give at least one input"),
        (["x.nii", "--out-dir", str(tmp_path), "--address", "auto"], "--address names a Ray cluster: add --engine ray"),
        (["--manifest", str(tmp_path / "none.csv"), "--out-dir", str(tmp_path)], "none.csv: cannot read it"),
        ([str(tmp_path), "--out-dir", str(tmp_path), "--workers", "0"], "--workers 0: give 1 or more"),
        ([str(tmp_path), "--out-dir", str(tmp_path), "--workers", "2", "--json", "a.json"],
         "--json goes with one scan"),
    ):
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the cluster extra were not installed
    from brainseg.cohort.ray_engine import import_ray

    with pytest.raises(VolumeError, match=r"pip install 'brainseg\[cluster\]'"):
        import_ray()


# ------------------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The 20-scan cohort (5 broken) run once with one worker; the table, the manifest, the output and stderr."""
    folder = tmp_path_factory.mktemp("cohort")
    manifest, sides = write_cohort(folder / "scans")
    out = folder / "out"
    rc = main(["--manifest", str(manifest), "--out-dir", str(out), "--model", "unet", "--workers", "1", "--quiet"])
    return {"rc": rc, "manifest": manifest, "out": out, "sides": sides, "rows": read_table(out / "results.csv")}


@pytest.mark.slow
def test_twenty_scans_with_five_broken_give_fifteen_results_and_five_clear_errors(cohort):
    assert cohort["rc"] == 2  # some scans failed
    rows = {row["name"]: row for row in cohort["rows"]}
    assert len(cohort["rows"]) == len(rows) == 20
    errors = {name: row for name, row in rows.items() if row["status"] == "error"}
    assert set(errors) == set(BROKEN)
    for name, expected in BROKEN.items():
        assert expected.lower() in errors[name]["error"].lower(), errors[name]["error"]
        assert errors[name]["mask"] == "" and "\n" not in errors[name]["error"]
    assert not list(cohort["out"].glob("garbage*")) and not list(cohort["out"].glob(".*.tmp"))
    for name, side in cohort["sides"].items():
        row = rows[name]
        assert row["status"] == "ok" and row["error"] == ""
        voxels = mask_voxels(row["mask"])
        assert voxels > 0 and int(row["tumor_voxels"]) == voxels
        assert float(row["volume_ml"]) == pytest.approx(voxels * VOXEL_ML, abs=1e-3)
        assert float(row["volume_strict_ml"]) <= float(row["volume_generous_ml"])
        assert row["laterality"] == side
        assert 0 < int(row["slices_with_tumor"]) <= int(row["n_slices"]) == SHAPE[2]
        assert row["quality"] == "missing_sequences;partial_coverage"  # FLAIR alone, 8 slices of 5 mm: 40 mm
        assert row["model"] == "bundled unet" and row["revision"].startswith("sha256:")
        assert float(row["threshold"]) > 0 and float(row["seconds"]) > 0
    truth = np.asarray(nib.load(str(cohort["manifest"].parent / "scan00_truth.nii.gz")).dataobj) > 0
    predicted = np.asarray(nib.load(rows["scan00"]["mask"]).dataobj) > 0
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert float(rows["scan00"]["dice"]) == pytest.approx(dice, abs=1e-4) and dice > 0.5
    assert rows["scan01"]["dice"] == ""


@pytest.mark.slow
def test_a_rerun_skips_the_done_scans_and_retries_the_failed_ones(cohort, capsys):
    before = {row["name"]: row for row in cohort["rows"]}
    rc = main(["--manifest", str(cohort["manifest"]), "--out-dir", str(cohort["out"]), "--model", "unet", "--quiet"])
    assert rc == 2
    assert "15 done before (skipped), 5 to run" in capsys.readouterr().err
    after = {row["name"]: row for row in read_table(cohort["out"] / "results.csv")}
    assert list(after) == list(before)
    for name, row in after.items():
        same = ("finished", "worker", "seconds") if row["status"] == "ok" else ()
        assert all(row[key] == before[name][key] for key in same)
        assert row["status"] == before[name]["status"]
    assert all(after[name]["finished"] >= before[name]["finished"] for name in BROKEN)
    # another threshold, revision or input is another result; so is a row whose mask was deleted
    args = build_parser().parse_args(["--manifest", str(cohort["manifest"]), "--out-dir", str(cohort["out"]),
                                      "--model", "unet"])
    settings = settings_from_args(args, 1)
    table, scan = ResultsTable.open(cohort["out"] / "results.csv"), read_manifest(cohort["manifest"])[3]
    assert table.is_done(scan, settings)
    assert not table.is_done(scan, replace(settings, threshold=0.9))
    assert not table.is_done(scan, replace(settings, revision="sha256:000000000000"))
    assert not table.is_done(replace(scan, flair=scan.flair.with_name(scan.flair.name + ".other.nii.gz")), settings)
    Path(after[scan.name]["mask"]).unlink()
    assert not table.is_done(scan, settings)


@pytest.mark.slow
def test_two_worker_processes_write_the_same_table(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["--manifest", str(cohort["manifest"]), "--out-dir", str(out), "--model", "unet", "--workers", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "done: 15 ok, 5 failed, 0 skipped" in err and "scans/hour" in err
    _assert_same_table(read_table(out / "results.csv"), cohort["rows"])
    assert len({row["worker"] for row in read_table(out / "results.csv")}) == 2


def _assert_same_table(rows: list[dict], reference: list[dict]) -> None:
    ours, theirs = ({row["name"]: row for row in table} for table in (rows, reference))
    assert set(ours) == set(theirs)
    for name, row in ours.items():
        for key in ("status", "error", "volume_ml", "tumor_voxels", "slices_with_tumor", "laterality", "quality",
                    "dice", "model", "revision", "threshold"):
            assert row[key] == theirs[name][key], (name, key)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_run_then_a_rerun_gives_every_scan_once_and_no_half_written_mask(cohort, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "brainseg.cli.predict", "--manifest", str(cohort["manifest"]), "--out-dir",
               str(out), "--model", "unet", "--workers", "2", "--quiet"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    kill_after = int(np.random.default_rng().integers(2, 15))
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "results.csv").exists() and len(read_table(out / "results.csv")) >= kill_after:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    os.killpg(process.pid, signal.SIGKILL)  # the command and its worker processes, at once
    process.wait(60)
    process.stderr.close()
    done = {row["name"]: row for row in read_table(out / "results.csv")}
    assert kill_after <= len(done) < 20
    for mask in out.glob("*_mask.nii.gz"):  # whatever was renamed into place is whole
        assert np.asarray(nib.load(str(mask)).dataobj).shape == SHAPE
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 2, rerun.stderr[-2000:]
    ok_before = sum(row["status"] == "ok" for row in done.values())
    assert f"{ok_before} done before (skipped), {20 - ok_before} to run" in rerun.stderr
    rows = read_table(out / "results.csv")
    assert sorted(row["name"] for row in rows) == sorted(row["name"] for row in cohort["rows"])  # each exactly once
    for row in rows:
        if row["name"] in done and done[row["name"]]["status"] == "ok":
            assert row["finished"] == done[row["name"]]["finished"]  # not run again
    assert not list(out.rglob("*.tmp"))
    _assert_same_table(rows, cohort["rows"])


@pytest.mark.slow
@pytest.mark.e2e
def test_the_ray_engine_on_two_local_workers_writes_the_same_table(cohort, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is the optional extra brainseg[cluster] (installed by requirements-test)")
    out = tmp_path / "out"
    rc = main(["--manifest", str(cohort["manifest"]), "--out-dir", str(out), "--model", "unet", "--engine", "ray",
               "--workers", "2", "--quiet"])
    assert rc == 2
    assert "done: 15 ok, 5 failed, 0 skipped" in capsys.readouterr().err
    rows = read_table(out / "results.csv")
    _assert_same_table(rows, cohort["rows"])
    assert len({row["worker"] for row in rows}) == 2  # two actors, each holding the model
    assert all(mask_voxels(row["mask"]) == int(row["tumor_voxels"]) for row in rows if row["status"] == "ok")
