from pathlib import Path

import pytest

from brainseg.data import (
    Patient,
    SliceRecord,
    article_split,
    bundled_test_patients,
    find_dataset_root,
    load_slices,
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
