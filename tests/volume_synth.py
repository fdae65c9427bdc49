"""Test volumes built at run time from the held-out LGG slices (nothing is committed): NIfTI and DICOM; and a
synthetic FLAIR-like slice for the tests that need a valid slice but not real numbers."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from brainseg.io.dataset import load_slices, scan_patient

# (N, R, C) presented stack <-> data[i, j, k] of an RAS affine with positive diagonal: i runs to the patient's
# right (the presented columns reversed), j to anterior (the presented rows reversed), k = the slice.


def lgg_patient(lgg_test_dir: Path, folder: str) -> tuple[np.ndarray, np.ndarray]:
    """A held-out patient's slices (N, 256, 256, 3) uint8 and masks (N, 256, 256) bool, in slice order."""
    return load_slices(list(scan_patient(lgg_test_dir / folder).slices))


def synthetic_slice(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A FLAIR-like 256 x 256 RGB uint8 slice (black background, a noisy oval head, a bright oval lesion) and its
    lesion mask (bool), the size and type of a Kaggle slice; made from ``seed``, no real data."""
    rows, cols = np.mgrid[:256, :256]
    head = ((rows - 128) / 100) ** 2 + ((cols - 128) / 80) ** 2 < 1
    lesion = ((rows - 100) / 20) ** 2 + ((cols - 150) / 15) ** 2 < 1
    image = np.zeros((256, 256, 3), np.uint8)
    image[head] = np.random.default_rng(seed).integers(60, 120, (int(head.sum()), 3))
    image[lesion] = 220
    return image, lesion


def ras_from_presented(stack: np.ndarray) -> np.ndarray:
    """A presented (N, R, C[, ...]) stack as the voxel array of an RAS+ affine (written out by hand)."""
    return np.ascontiguousarray(np.swapaxes(stack[:, ::-1, ::-1], 0, 2))


def rotation(degrees_x: float, degrees_z: float) -> np.ndarray:
    ax, az = np.deg2rad(degrees_x), np.deg2rad(degrees_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def affine_of(linear: np.ndarray, origin=(-110.0, -120.0, -30.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    return affine


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, dtype=None) -> Path:
    image = nib.Nifti1Image(data if dtype is None else data.astype(dtype), affine)
    image.set_qform(affine, code="scanner")
    nib.save(image, str(path))
    return path


def write_dicom_series(data: np.ndarray, affine: np.ndarray, folder: Path, *, series_uid: str | None = None,
                       description: str = "FLAIR", skip: tuple[int, ...] = (), shuffle_seed: int = 0) -> list[Path]:
    """One DICOM file per slice k of ``data`` (X, Y, Z), uint16, placed by ``affine`` (RAS; written as LPS).

    Pixel (row j, column i) of slice k is ``data[i, j, k]``. Files are named in a shuffled order so the
    reader must sort by position. ``skip`` leaves slices out (a series with gaps).
    """
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    sizes = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    row_dir, col_dir = lps[:3, 0] / sizes[0], lps[:3, 1] / sizes[1]
    study, series = generate_uid(), series_uid or generate_uid()
    order = np.random.default_rng(shuffle_seed).permutation(data.shape[2])
    paths = []
    for k in range(data.shape[2]):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "Test^Volume", "TEST"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription = study, series, description
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [f"{sizes[1]:.10g}", f"{sizes[0]:.10g}"]  # row spacing (along j), column spacing (along i)
        ds.SliceThickness = f"{sizes[2]:.10g}"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T.astype("<u2")).tobytes()
        path = folder / f"IM{order[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
