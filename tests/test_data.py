from pathlib import Path

import pytest
from conftest import link_patient

from brainseg.io.dataset import (
    Patient,
    SliceRecord,
    article_split,
    bundled_test_patients,
    find_dataset_root,
    load_slices,
    make_split,
    patient_split,
    scan_dataset,
)


def test_scan_reads_the_eleven_held_out_patients(lgg_test_dir) -> None:
    patients = scan_dataset(lgg_test_dir)
    assert [p.folder for p in patients] == sorted(bundled_test_patients())
    assert (lgg_test_dir / "PATIENTS.txt").read_text().split() == bundled_test_patients()
    records = [r for p in patients for r in p.slices]
    assert len(records) == 369
    assert all(r.mask_path is not None for r in records)
    first = patients[0]
    assert [r.index for r in first.slices] == list(range(1, len(first.slices) + 1))
    assert first.case_id == "TCGA_CS_4944" and first.institution == "CS"
    _, masks = load_slices(records)
    assert masks.shape == (369, 256, 256)
    assert int(masks.reshape(369, -1).any(axis=1).sum()) == 106


def test_find_root_accepts_parent_and_explains_bad_dirs(tmp_path, lgg_test_dir) -> None:
    assert find_dataset_root(lgg_test_dir) == lgg_test_dir
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_dataset_root(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no TCGA_"):
        find_dataset_root(tmp_path)


def fake_patients(n: int, slices: int = 3) -> list[Patient]:
    out = []
    for i in range(n):
        folder = f"TCGA_XX_{i:04d}_20000101"
        out.append(Patient(folder, tuple(SliceRecord(folder, k, Path(f"{k}.tif"), None) for k in range(1, slices + 1))))
    return out


def test_patient_split_holds_out_test_patients_and_never_shares_a_patient() -> None:
    patients = fake_patients(50)
    test_ids = [p.folder for p in patients[:5]]
    split = patient_split(patients, test_patients=test_ids, val_fraction=0.1, seed=7)
    assert split.patients("test") == set(test_ids)
    assert len(split.patients("val")) == 4 and len(split.patients("train")) == 41
    assert not split.patients("train") & split.patients("val")
    again = patient_split(patients, test_patients=test_ids, val_fraction=0.1, seed=7)
    assert again.patients("val") == split.patients("val")
    assert patient_split(patients, test_patients=test_ids, seed=8).patients("val") != split.patients("val")


def test_default_patient_split_uses_the_committed_test_list(lgg_test_dir) -> None:
    split = patient_split(scan_dataset(lgg_test_dir))
    assert split.patients("test") == set(bundled_test_patients()) and not split.train


def test_article_split_is_random_over_slices_and_leaks_patients() -> None:
    patients = fake_patients(110, slices=36)  # 3960 slices
    split = article_split(patients, seed=1)
    assert len(split.test) == 396 and len(split.train) == 3564
    assert split.protocol == "article-leaky"
    assert split.patients("train") & split.patients("test")


def test_make_split_is_the_patient_or_the_article_split_of_the_folder(lgg_test_dir, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    held_out = "TCGA_CS_4944_20010208"
    (data / held_out).symlink_to(lgg_test_dir / held_out, target_is_directory=True)
    for i in range(20):  # 20 stand-in patients, two real slices each (links, nothing copied)
        link_patient(lgg_test_dir / "TCGA_DU_5871_19941206", data / f"TCGA_XX_{i:04d}_20000101", [2 * i % 30 + 1, 20])
    patients = scan_dataset(data)
    split = make_split(data, "patient", val_fraction=0.1, seed=7)
    assert split == patient_split(patients, val_fraction=0.1, seed=7)
    assert split.patients("test") == {held_out} and len(split.patients("val")) == 2 and len(split.train) == 36
    assert make_split(data, seed=8).patients("val") != split.patients("val")
    assert make_split(data, "article", seed=7) == article_split(patients, seed=7)
    with pytest.raises(ValueError, match="unknown split 'slices': use one of patient, article"):
        make_split(data, "slices")


def test_make_split_refuses_a_folder_without_masks(synthetic_slice, tmp_path) -> None:
    folder = tmp_path / "TCGA_XX_0000_20000101"
    folder.mkdir()
    (folder / f"{folder.name}_1.tif").symlink_to(synthetic_slice)
    with pytest.raises(ValueError, match="no ground-truth masks"):
        make_split(tmp_path)
