"""The subjects of a command line: each one's FLAIR source and optional T1 / post-contrast T1 / ground truth
(:class:`SubjectInputs`), found in files, DICOM series, Kaggle patient folders and folders of them."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from brainseg.io.patient_folders import is_patient_folder
from brainseg.io.volumes import VolumeError, is_dicom_folder, is_nifti, load_volume, subject_name

FLAIR_NAME = re.compile(r"flair", re.I)
T1CE_NAME = re.compile(r"t1[-_ ]?(c|ce|gd|post|contrast)(?![a-z])|t1c", re.I)
T1_NAME = re.compile(r"t1(?![-_ ]?(c|ce|gd|post|contrast)(?![a-z])|c)", re.I)


@dataclass(frozen=True)
class SubjectInputs:
    """What one subject's run reads: a FLAIR source and the optional other channels and ground truth.

    Also a cohort's scan (a manifest row, a BIDS subject), handed to worker processes as it is (picklable).
    """

    name: str
    flair: Path
    t1: Path | None = None
    t1ce: Path | None = None
    truth: Path | None = None

    def absolute(self) -> SubjectInputs:
        """The same subject with absolute, normalised paths (another process or working folder reads the same files)."""
        paths = (None if p is None else Path(os.path.abspath(p)) for p in (self.flair, self.t1, self.t1ce, self.truth))
        return SubjectInputs(self.name, *paths)


def is_patient_folder_input(subject: SubjectInputs) -> bool:
    """A Kaggle patient folder (3-channel slices with masks) rather than a scan (NIfTI, DICOM)."""
    return subject.flair.is_dir() and is_patient_folder(subject.flair)


def find_subjects(paths: list[str | Path], truth_glob: str | None = None) -> list[SubjectInputs]:
    """Expand the command line's inputs into subjects.

    A NIfTI file, a DICOM folder or ``.zip``, or a Kaggle patient folder is one subject. A folder of
    such things (a folder of NIfTI files, of subject folders, or ``kaggle_3m`` itself) is one subject
    per entry. A subject folder holding several NIfTI files uses the one named ``*flair*`` as FLAIR and,
    when present, ``*t1c*``/``*t1ce*``/``*t1gd*`` as post-contrast T1 and another ``*t1*`` as T1.
    ``truth_glob`` names each subject folder's ground-truth file (e.g. ``OTMultiClass*``).
    """
    subjects: list[SubjectInputs] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise VolumeError(f"{path}: no such file or folder")
        if path.is_file() and not (is_nifti(path) or path.suffix.lower() == ".zip"):
            load_volume(path)  # refuses it with the reason (a single DICOM file, not a volume)
        if path.is_file() or is_patient_folder(path) or is_dicom_folder(path):
            subjects.append(SubjectInputs(subject_name(path), path))
            continue
        niftis = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
        if niftis and any(FLAIR_NAME.search(p.name) for p in niftis):
            subjects.append(_subject_folder(path, niftis, truth_glob))
            continue
        found = []
        for entry in sorted(path.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_file() and (is_nifti(entry) or entry.suffix.lower() == ".zip"):
                found.append(SubjectInputs(subject_name(entry), entry))
            elif entry.is_dir() and (is_patient_folder(entry) or is_dicom_folder(entry)):
                found.append(SubjectInputs(entry.name, entry))
            elif entry.is_dir():
                inner = sorted(p for p in entry.iterdir() if p.is_file() and is_nifti(p))
                if inner:
                    found.append(_subject_folder(entry, inner, truth_glob))
        if not found:
            raise VolumeError(f"{path}: no NIfTI file, DICOM series or Kaggle patient folder in it")
        subjects.extend(found)
    return subjects


def _subject_folder(folder: Path, niftis: list[Path], truth_glob: str | None) -> SubjectInputs:
    truth = None
    if truth_glob:
        matches = sorted(folder.glob(truth_glob))
        if len(matches) != 1:
            raise VolumeError(f"{folder.name}: {len(matches)} files match --truth-glob {truth_glob!r}, expected one")
        truth = matches[0]
    candidates = [p for p in niftis if p != truth]
    if len(candidates) == 1:
        return SubjectInputs(folder.name, candidates[0], truth=truth)
    flair = [p for p in candidates if FLAIR_NAME.search(p.name)]
    if len(flair) != 1:
        raise VolumeError(f"{folder.name}: {len(flair)} NIfTI files named *flair* among {len(candidates)}: "
                          "give the FLAIR file itself")
    t1ce = [p for p in candidates if p not in flair and T1CE_NAME.search(p.name)]
    t1 = [p for p in candidates if p not in flair and p not in t1ce and T1_NAME.search(p.name)]
    return SubjectInputs(folder.name, flair[0], t1=t1[0] if len(t1) == 1 else None,
                         t1ce=t1ce[0] if len(t1ce) == 1 else None, truth=truth)
