"""Reading NIfTI / DICOM series / subject folders and writing masks (brainseg.io.volumes, brainseg.io.subjects),
no model runs."""
from __future__ import annotations

import gzip
import shutil
import zipfile

import nibabel as nib
import numpy as np
import pytest
from volume_synth import affine_of, rotation, save_nifti, write_dicom_series

from brainseg.io.subjects import find_subjects
from brainseg.io.volumes import VolumeError, check_same_grid, load_volume, save_nifti_mask, voxel_volume_ml


@pytest.fixture(scope="module")
def volume_data() -> np.ndarray:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 4000, (24, 20, 9)).astype(np.int16)
    data[:3] = 0
    return data


RIGHT_HANDED = affine_of(rotation(12, -25) @ np.diag([0.9, 0.9, 2.5]))
LEFT_HANDED = affine_of(np.diag([-0.9, 0.9, 2.5]), origin=(100.0, -110.0, -40.0))  # LAS, as dcm2niix writes


def test_nifti_load_and_mask_save_keep_shape_affine_and_header(tmp_path, volume_data):
    path = save_nifti(volume_data, RIGHT_HANDED, tmp_path / "flair.nii.gz")
    volume = load_volume(path)
    assert volume.kind == "nifti" and volume.shape == volume_data.shape and volume.data.dtype == np.float32
    assert np.array_equal(volume.data, volume_data)
    assert np.array_equal(volume.affine, nib.load(str(path)).affine)
    assert volume.voxel_volume_ml == pytest.approx(0.9 * 0.9 * 2.5 / 1000)
    mask = (volume_data > 3000).astype(np.uint8)
    out = save_nifti_mask(mask, volume.affine, tmp_path / "out" / "mask.nii.gz", volume.header)
    written = nib.load(str(out))
    assert written.shape == volume_data.shape and written.get_data_dtype() == np.uint8
    assert np.array_equal(written.affine, volume.affine)
    assert np.array_equal(np.asarray(written.dataobj), mask)
    for field in ("qform_code", "sform_code", "xyzt_units"):
        assert written.header[field] == nib.load(str(path)).header[field]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mask.nii.gz"]  # no temporary file left


def test_4d_with_one_volume_is_accepted_other_4d_2d_empty_and_corrupt_files_are_refused(tmp_path, volume_data):
    one = save_nifti(volume_data[..., None], RIGHT_HANDED, tmp_path / "one.nii")
    assert load_volume(one).shape == volume_data.shape
    four = save_nifti(np.stack([volume_data] * 3, axis=-1), RIGHT_HANDED, tmp_path / "four.nii.gz")
    with pytest.raises(VolumeError, match=r"4D .*3 volumes.*one 3D volume"):
        load_volume(four)
    flat = save_nifti(volume_data[:, :, 0], np.eye(4), tmp_path / "flat.nii")
    with pytest.raises(VolumeError, match="2 dimensions"):
        load_volume(flat)
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(VolumeError, match="not a readable NIfTI"):
        load_volume(tmp_path / "empty.nii.gz")
    good = save_nifti(volume_data, RIGHT_HANDED, tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(VolumeError, match="truncated or corrupt|not a readable"):
        load_volume(tmp_path / "cut.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeError, match="not a volume"):
        load_volume(tmp_path / "notes.txt")


def test_absurd_sizes_are_refused_from_the_header_before_reading_voxels(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.uint8)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 1000  # a header claiming 8 G voxels, almost no data
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(VolumeError, match="too large"):
        load_volume(tmp_path / "huge.nii.gz")


def test_dicom_folder_and_zip_give_the_niftis_voxels_and_affine(tmp_path, volume_data):
    nifti = load_volume(save_nifti(volume_data, RIGHT_HANDED, tmp_path / "flair.nii.gz"))
    write_dicom_series(volume_data.astype(np.uint16), RIGHT_HANDED, tmp_path / "series")
    from_folder = load_volume(tmp_path / "series")
    assert from_folder.kind == "dicom"
    assert np.array_equal(from_folder.data, nifti.data)
    assert np.allclose(from_folder.affine, nifti.affine, atol=1e-4)
    shutil.make_archive(str(tmp_path / "series"), "zip", tmp_path / "series")
    from_zip = load_volume(tmp_path / "series.zip")
    assert np.array_equal(from_zip.data, nifti.data) and np.allclose(from_zip.affine, nifti.affine, atol=1e-4)


def test_dicom_slices_are_sorted_along_their_normal_whatever_the_nifti_handedness(tmp_path, volume_data):
    write_dicom_series(volume_data.astype(np.uint16), LEFT_HANDED, tmp_path / "series", shuffle_seed=3)
    volume = load_volume(tmp_path / "series")
    # the normal (row x column direction) points down this series' slice axis: the reader stacks them reversed
    assert np.array_equal(volume.data, volume_data[:, :, ::-1])
    expected = LEFT_HANDED.copy()
    expected[:3, 2] *= -1
    expected[:3, 3] = (LEFT_HANDED @ [0, 0, volume_data.shape[2] - 1, 1])[:3]
    assert np.allclose(volume.affine, expected, atol=1e-4)
    assert voxel_volume_ml(volume.affine) == pytest.approx(voxel_volume_ml(LEFT_HANDED))


def test_bad_dicom_inputs_get_a_clear_message(tmp_path, volume_data):
    data = volume_data.astype(np.uint16)
    write_dicom_series(data, RIGHT_HANDED, tmp_path / "gap", skip=(4,))
    with pytest.raises(VolumeError, match="slices are missing"):
        load_volume(tmp_path / "gap")
    write_dicom_series(data, RIGHT_HANDED, tmp_path / "mixed", description="FLAIR")
    write_dicom_series(data, RIGHT_HANDED, tmp_path / "mixed" / "t2", description="T2")
    with pytest.raises(VolumeError, match=r"mixes 2 DICOM series \(FLAIR.*T2"):
        load_volume(tmp_path / "mixed")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    with pytest.raises(VolumeError, match="empty .zip"):
        load_volume(tmp_path / "empty.zip")
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(VolumeError, match="not a readable .zip"):
        load_volume(tmp_path / "broken.zip")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    with pytest.raises(VolumeError, match="no readable DICOM image"):
        load_volume(tmp_path / "junk")


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IM0001.dcm", b"\0" * (64 << 20))
    assert (tmp_path / "bomb.zip").stat().st_size < 1 << 20
    with pytest.raises(VolumeError, match="zip bomb"):
        load_volume(tmp_path / "bomb.zip")


def test_channels_on_another_grid_are_refused(tmp_path, volume_data):
    flair = load_volume(save_nifti(volume_data, RIGHT_HANDED, tmp_path / "flair.nii.gz"))
    smaller = load_volume(save_nifti(volume_data[:-1], RIGHT_HANDED, tmp_path / "t1c.nii.gz"))
    with pytest.raises(VolumeError, match=r"not on the FLAIR's grid .*resample"):
        check_same_grid(flair, smaller, "the post-contrast T1")
    moved = load_volume(save_nifti(volume_data, affine_of(RIGHT_HANDED[:3, :3], (0, 0, 0)), tmp_path / "t1.nii.gz"))
    with pytest.raises(VolumeError, match="another position/orientation"):
        check_same_grid(flair, moved, "the T1")


def test_subject_folders_find_flair_t1c_and_the_truth(lgg_test_dir, external_dir):
    subjects = find_subjects([external_dir], truth_glob="OTMultiClass*")
    assert [s.name for s in subjects] == [f"brats_2013_pat000{i}_1" for i in range(1, 6)]
    for subject in subjects:
        assert subject.flair.name == "Flair_subtrMeanDivStd.nii.gz"
        assert subject.t1ce.name == "T1c_subtrMeanDivStd.nii.gz" and subject.t1 is None
        assert subject.truth.name == "OTMultiClass.nii.gz"
    patients = find_subjects([lgg_test_dir])
    assert len(patients) == 11 and all(p.flair.is_dir() for p in patients)
    with pytest.raises(VolumeError, match="no such file"):
        find_subjects([lgg_test_dir / "nope.nii.gz"])
