"""``brainseg predict``: masks with the input's geometry, the JSON numbers, and clear refusals."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, link_patient
from PIL import Image
from volume_synth import affine_of, lgg_patient, save_nifti

from brainseg.cli.predict import main
from brainseg.inference.geometry import Geometry

PATIENT = "TCGA_HT_8114_19981030"
AFFINE = affine_of(np.diag([-0.9, 0.9, 2.5]), origin=(115.0, -115.0, -20.0))  # LAS, as dcm2niix writes


@pytest.fixture(scope="module")
def scans(lgg_test_dir, tmp_path_factory):
    """The patient's FLAIR, post-contrast T1 and mask as NIfTI files on one LAS grid."""
    folder = tmp_path_factory.mktemp("scans")
    images, truth = lgg_patient(lgg_test_dir, PATIENT)
    geometry = Geometry((22, 256, 256), AFFINE)
    paths = {
        "flair": save_nifti(geometry.from_presented(images[..., 1]), AFFINE, folder / "flair.nii.gz", np.int16),
        "t1ce": save_nifti(geometry.from_presented(images[..., 2]), AFFINE, folder / "t1ce.nii.gz", np.int16),
        "truth": save_nifti(geometry.from_presented(truth), AFFINE, folder / "truth.nii.gz", np.uint8),
        "other_grid": save_nifti(geometry.from_presented(images[..., 2])[:, :, 1:], AFFINE, folder / "t1.nii.gz",
                                 np.int16),
    }
    return paths


def test_one_volume_with_t1ce_and_truth_writes_the_mask_on_the_input_grid_and_the_numbers(scans, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.json"
    rc = main([str(scans["flair"]), "--t1ce", str(scans["t1ce"]), "--truth", str(scans["truth"]),
               "--out-dir", str(out), "--json", str(report), "--quiet"])
    assert rc == 0
    flair, mask = nib.load(str(scans["flair"])), nib.load(str(out / "flair_mask.nii.gz"))
    assert mask.shape == flair.shape and np.array_equal(mask.affine, flair.affine)
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(mask.dataobj))) == {0, 1}
    numbers = json.loads(report.read_text())
    voxel_ml = 0.9 * 0.9 * 2.5 / 1000
    voxels = int(np.asarray(mask.dataobj).sum())
    assert numbers["voxel_volume_ml"] == pytest.approx(voxel_ml)
    assert numbers["volume_ml"] == pytest.approx(voxels * voxel_ml, abs=1e-4)
    assert numbers["n_slices"] == 22 and 0 < numbers["slices_with_tumor"] <= 22
    assert numbers["slice_axis"] == 2 and 0 <= numbers["largest_slice"] < 22
    assert numbers["channels"] == ["flair", "flair", "t1ce"]
    assert numbers["model"] == "bundled default" and "revision" in numbers
    assert numbers["ms_per_slice"] == pytest.approx(1000 * numbers["seconds"] / 22, rel=0.01)
    truth = np.asarray(nib.load(str(scans["truth"])).dataobj) > 0
    pred = np.asarray(mask.dataobj) > 0
    assert numbers["dice"] == pytest.approx(2 * (pred & truth).sum() / (pred.sum() + truth.sum()), abs=1e-4)
    assert numbers["dice"] > 0.93


def test_several_inputs_run_one_after_another(scans, lgg_test_dir, tmp_path):
    subjects = tmp_path / "subjects"
    subjects.mkdir()
    flair = nib.load(str(scans["flair"]))
    save_nifti(np.asarray(flair.dataobj)[:, :, 8:14], flair.affine, subjects / "a.nii.gz")  # 6 slices
    (subjects / "b.nii.gz").symlink_to(subjects / "a.nii.gz")
    patient = tmp_path / PATIENT
    link_patient(lgg_test_dir / PATIENT, patient, range(10, 14))
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert main([str(subjects), str(patient), "--out-dir", str(out), "--json", str(report), "--quiet",
                 "--threshold", "0.5"]) == 0
    numbers = json.loads(report.read_text())
    assert numbers["n_subjects"] == 3 and [s["name"] for s in numbers["subjects"]] == ["a", "b", PATIENT]
    assert numbers["subjects"][0]["tumor_voxels"] == numbers["subjects"][1]["tumor_voxels"] > 0
    assert numbers["subjects"][0]["threshold"] == 0.5
    assert (out / "a_mask.nii.gz").is_file() and (out / "b_mask.nii.gz").is_file()
    pngs = sorted((out / PATIENT).iterdir())
    assert [p.name for p in pngs] == sorted(f"{PATIENT}_{n}_mask.png" for n in range(10, 14))
    with Image.open(pngs[0]) as png:
        assert png.size == (256, 256)
    assert "dice" in numbers["subjects"][2] and numbers["mean_dice"] == numbers["subjects"][2]["dice"]


def test_user_mistakes_exit_2_with_one_message_and_write_nothing(synthetic_scans, tmp_path, capsys):
    scans = synthetic_scans  # valid scans, no real data needed
    (tmp_path / "notes.txt").write_text("not a scan")
    four_d = save_nifti(np.zeros((8, 8, 4, 2), np.int16), AFFINE, tmp_path / "four.nii.gz")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x01" * 40)
    cases = [
        ([str(tmp_path / "notes.txt")], "not a volume"),
        ([str(four_d)], "4D"),
        ([str(tmp_path / "empty.zip")], "empty .zip"),
        ([str(tmp_path / "junk")], "no readable DICOM"),
        ([str(scans["flair"]), "--t1", str(scans["other_grid"])], "not on the FLAIR's grid"),
        ([str(scans["flair"]), str(scans["t1ce"]), "--t1ce", str(scans["t1ce"])], "go with one input"),
        ([str(tmp_path / "missing.nii.gz")], "no such file"),
        ([str(scans["flair"]), "--threshold", "1.5"], "between 0 and 1"),
        ([str(scans["flair"]), "--model", str(tmp_path / "no_model")], "no_model"),
    ]
    for argv, message in cases:
        out = tmp_path / "out"
        rc = main(argv + ["--out-dir", str(out), "--json", str(tmp_path / "r.json"), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2, argv
        assert message in err and "Traceback" not in err, (argv, err)
        assert not (tmp_path / "r.json").exists()
        assert not out.exists() or not any(out.iterdir()), argv


@pytest.mark.slow
@pytest.mark.e2e
def test_the_module_runs_as_a_command(tmp_path):
    (tmp_path / "notes.txt").write_text("not a scan")
    result = subprocess.run([sys.executable, "-m", "brainseg.cli.predict", str(tmp_path / "notes.txt"), "--out-dir",
                             str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("error: notes.txt: not a volume") and "Traceback" not in result.stderr


@pytest.mark.slow  # ~15 s of CPU: four models run
def test_the_bundled_unet_on_scans_points_to_the_default_once(scans, lgg_test_dir, tmp_path, capsys):
    subjects = tmp_path / "subjects"
    subjects.mkdir()
    flair = nib.load(str(scans["flair"]))
    save_nifti(np.asarray(flair.dataobj)[:, :, 10:13], flair.affine, subjects / "a.nii.gz")
    (subjects / "b.nii.gz").symlink_to(subjects / "a.nii.gz")
    patient = tmp_path / PATIENT
    link_patient(lgg_test_dir / PATIENT, patient, range(10, 13))
    hint = "the default model (unet-generalist, trained for every input form) segments better"

    assert main([str(subjects), "--out-dir", str(tmp_path / "o1"), "--quiet", "--model", "unet"]) == 0
    assert capsys.readouterr().err.count(hint) == 1, "one note for two scans"
    assert main([str(patient), "--out-dir", str(tmp_path / "o2"), "--quiet", "--model", "unet"]) == 0
    assert hint not in capsys.readouterr().err, "Kaggle patient folders are what the U-Net learned"
    assert main([str(subjects), "--out-dir", str(tmp_path / "o4"), "--quiet"]) == 0
    assert hint not in capsys.readouterr().err, "the default was trained for such scans"
    assert main([str(subjects), "--out-dir", str(tmp_path / "o3"), "--quiet", "--model", "segformer-b0"]) == 0
    assert hint not in capsys.readouterr().err, "a model the user chose gets no note"
