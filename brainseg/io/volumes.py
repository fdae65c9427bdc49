"""Reading whole scans: NIfTI files and DICOM series (a folder or a ``.zip``), and writing a NIfTI mask.

Every problem a user can cause (not a volume, 4D, unreadable DICOM, a zip bomb, ...) is a
:class:`VolumeError` whose message says what to do. Nothing here knows about the model. Kaggle patient folders
are read by :mod:`brainseg.io.patient_folders`, the subjects of a command line found by :mod:`brainseg.io.subjects`.
"""
from __future__ import annotations

import gzip
import io
import warnings
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.orientations import io_orientation

from brainseg.fileio import atomic_write_bytes

MAX_VOXELS = 2**26  # 67 M voxels (e.g. 512 x 512 x 256): above it the float copies alone pass ~1 GB
MAX_SIDE = 2048
MAX_ZIP_BYTES = 1 << 30  # 1 GiB uncompressed
MAX_ZIP_MEMBERS = 10_000
MAX_ZIP_RATIO = 200  # uncompressed / compressed per member; DICOM compresses ~2-5x, a bomb ~1000x
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Slice spacing may vary this much (relative) before a series counts as having gaps.
SLICE_GAP_TOLERANCE = 0.1


class VolumeError(ValueError):
    """A scan that cannot be read or used; the message says why and what to do."""


@dataclass(frozen=True)
class Volume:
    """One 3D image on its own voxel grid.

    ``data`` is float32 (X, Y, Z) in the file's own axis order, ``affine`` maps voxel indices to
    RAS+ millimetres (NIfTI convention; DICOM's LPS is converted). ``header`` is the NIfTI header the
    volume came with (None for DICOM) so a mask can be written with the same geometry fields.
    """

    data: np.ndarray
    affine: np.ndarray
    name: str
    kind: str  # "nifti" or "dicom"
    header: nib.Nifti1Header | None = None
    notes: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """One voxel's volume in millilitres (|det| of the affine's 3 x 3 part, mm^3 / 1000)."""
        return voxel_volume_ml(self.affine)


def voxel_volume_ml(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0


def subject_name(path: str | Path) -> str:
    """A subject's name from its path: the file name without ``.nii``/``.nii.gz``/``.zip``, or the folder name."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() and _looks_like_dicom(p) for p in path.iterdir())


# ----------------------------------------------------------------------------------------------- NIfTI
def load_volume(path: str | Path) -> Volume:
    """A NIfTI file (``.nii``/``.nii.gz``), a DICOM series folder, or a ``.zip`` of one DICOM series."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    if path.is_dir():
        if is_dicom_folder(path):
            return load_dicom_series(path)
        raise VolumeError(f"{path.name}: a folder without DICOM files (*.dcm): give a NIfTI file, a DICOM series "
                          "folder or .zip, or a Kaggle patient folder of TIFF slices")
    if is_nifti(path):
        return load_nifti(path)
    if path.suffix.lower() == ".zip":
        return load_dicom_series(path)
    if _looks_like_dicom(path):
        raise VolumeError(f"{path.name} is a single DICOM file: give the folder (or a .zip) holding the whole series")
    raise VolumeError(f"{path.name}: not a volume: give a NIfTI file (.nii, .nii.gz), a DICOM series (folder or .zip) "
                      "or a Kaggle patient folder")


def _check_shape(shape: tuple[int, ...], name: str) -> None:
    if any(side < 1 for side in shape):
        raise VolumeError(f"{name} is empty (shape {shape})")
    if max(shape) > MAX_SIDE or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise VolumeError(f"{name} is too large ({' x '.join(map(str, shape))} voxels; the limit is {MAX_SIDE} "
                          f"per side and {MAX_VOXELS:,} in all): crop or downsample it first")


def _squeeze_to_3d(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """The 3D shape of a NIfTI image, refusing 2D and true 4D+ images with a message."""
    if len(shape) < 3:
        raise VolumeError(f"{name} has {len(shape)} dimensions {shape}: a volume needs 3 (for one slice use the "
                          "app's slice tab or Segmenter.predict_proba)")
    extra = shape[3:]
    if any(side > 1 for side in extra):
        raise VolumeError(f"{name} is {len(shape)}D {shape} ({int(np.prod(extra))} volumes): give one 3D volume, "
                          "e.g. the first with `fslroi in.nii.gz out.nii.gz 0 1`")
    return tuple(shape[:3])  # type: ignore[return-value]


def load_nifti(path: str | Path) -> Volume:
    """A 3D NIfTI volume (a 4D one with a single volume is accepted); non-finite voxels become the minimum."""
    path = Path(path)
    name = path.name
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for a bad header
        raise VolumeError(f"{name}: not a readable NIfTI file ({first_line(exc)})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(f"{name}: not a NIfTI image ({type(image).__name__})")
    shape = _squeeze_to_3d(tuple(int(s) for s in image.shape), name)
    _check_shape(shape, name)
    affine = np.asarray(image.affine, float)
    _check_affine(affine, name)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:  # truncated gzip, short file, ...
        raise VolumeError(f"{name}: the voxel data cannot be read, the file is truncated or corrupt "
                          f"({first_line(exc)})") from None
    data, notes = _finite(data, name)
    header = image.header.copy() if isinstance(image, nib.Nifti1Image) else None
    return Volume(data, affine, name, "nifti", header, notes)


def _check_affine(affine: np.ndarray, name: str) -> None:
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError(f"{name}: its affine (voxel -> mm) is degenerate: fix the header (qform/sform) first")
    if np.isnan(io_orientation(affine)).any():
        raise VolumeError(f"{name}: its affine has no clear axial orientation: fix the header (qform/sform) first")


def _finite(data: np.ndarray, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    finite = np.isfinite(data)
    if finite.all():
        return data, ()
    if not finite.any():
        raise VolumeError(f"{name} holds no finite voxel value (all NaN or infinite)")
    data = np.where(finite, data, data[finite].min()).astype(np.float32)
    return data, (f"{int((~finite).sum())} NaN/infinite voxels of {name} were treated as background",)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def load_label_volume(path: str | Path, like: Volume) -> np.ndarray:
    """A ground-truth label volume on ``like``'s grid as bool (every label > 0 counts, e.g. BraTS whole tumor)."""
    truth = load_nifti(path)
    check_same_grid(like, truth, "the ground truth")
    return truth.data > 0


def check_same_grid(reference: Volume, other: Volume, what: str) -> None:
    """Refuse ``other`` unless it has ``reference``'s shape and affine (within 0.01 mm)."""
    if other.shape != reference.shape:
        raise VolumeError(f"{what} ({other.name}, shape {other.shape}) is not on the FLAIR's grid (shape "
                          f"{reference.shape}): resample it onto the FLAIR first (e.g. with ANTs, FSL flirt or "
                          "3D Slicer)")
    if not np.allclose(other.affine, reference.affine, atol=1e-2):
        raise VolumeError(f"{what} ({other.name}) has the FLAIR's shape but another position/orientation (affine "
                          f"differs by up to {np.abs(other.affine - reference.affine).max():.3g} mm): register it "
                          "to the FLAIR first")


# ----------------------------------------------------------------------------------------------- DICOM
def load_dicom_series(path: str | Path) -> Volume:
    """One DICOM series from a folder (searched recursively) or a ``.zip``; slices sorted along their normal."""
    path = Path(path)
    if path.is_file():
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise VolumeError(f"{path.name}: not a readable .zip ({first_line(exc)})") from None
        with archive:
            datasets = _read_datasets(_zip_members(archive, path.name))
    else:
        datasets = _read_datasets(_folder_files(path))
    if not datasets:
        raise VolumeError(f"{path.name}: no readable DICOM image in it: give a folder or .zip of one series' "
                          ".dcm files")
    series: dict[str, list] = defaultdict(list)
    for member_name, ds in datasets:
        series[str(ds.get("SeriesInstanceUID", "unknown"))].append((member_name, ds))
    if len(series) > 1:
        described = "; ".join(f"{_series_label(items[0][1])} ({len(items)} files)" for items in series.values())
        raise VolumeError(f"{path.name} mixes {len(series)} DICOM series ({described}): give one series (the FLAIR) "
                          "per folder or .zip")
    return _stack_series(next(iter(series.values())), path.name)


def _read_datasets(files) -> list:
    """(name, dataset) for every file that parses as DICOM and holds pixels; other files are skipped."""
    datasets = []
    for member_name, read in files:
        data = read()  # a VolumeError here (a corrupt zip member) stops the run
        try:
            with warnings.catch_warnings():  # pydicom warns about what it can still read; refusals come later
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(data), force=False)
        except (pydicom.errors.InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError):
            continue  # not DICOM (a README, a DICOMDIR's friends)
        if "PixelData" in ds:
            datasets.append((member_name, ds))
    return datasets


def _series_label(ds) -> str:
    return str(ds.get("SeriesDescription", "") or ds.get("SeriesNumber", "") or ds.get("SeriesInstanceUID", "?"))


def _folder_files(folder: Path):
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if len(files) > MAX_ZIP_MEMBERS:
        raise VolumeError(f"{folder.name} holds {len(files)} files (limit {MAX_ZIP_MEMBERS}): give one series")
    return [(str(p.relative_to(folder)), p.read_bytes) for p in files]


def _zip_members(archive: zipfile.ZipFile, zip_name: str) -> list:
    """(name, reader) for each member, after checking the archive against zip bombs."""
    members = [i for i in archive.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")
               and not Path(i.filename).name.startswith(".")]
    if not members:
        raise VolumeError(f"{zip_name} is an empty .zip: put the series' .dcm files in it")
    if len(members) > MAX_ZIP_MEMBERS:
        raise VolumeError(f"{zip_name} holds {len(members)} files (limit {MAX_ZIP_MEMBERS}): give one series")
    total = sum(i.file_size for i in members)
    if total > MAX_ZIP_BYTES:
        raise VolumeError(f"{zip_name} unpacks to {total / 2**20:.0f} MiB (limit {MAX_ZIP_BYTES >> 20} MiB): "
                          "give one series")
    for info in members:
        if info.file_size > 1 << 20 and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise VolumeError(f"{zip_name}: {info.filename} expands {info.file_size // max(info.compress_size, 1)}x "
                              "(a zip bomb?): refused")
    return [(info.filename, _zip_reader(archive, info, zip_name)) for info in members]


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_name: str):
    """A function reading one member, never more than its header's size (plus one byte to notice a lie)."""
    def read() -> bytes:
        try:
            with archive.open(info) as fh:
                data = fh.read(info.file_size + 1)
        except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, zlib.error) as exc:
            raise VolumeError(f"{zip_name}: {info.filename} cannot be unpacked ({first_line(exc)}): the .zip is "
                              "corrupt or encrypted") from None
        if len(data) > info.file_size:
            raise VolumeError(f"{zip_name}: {info.filename} is larger than its header says: refused")
        return data
    return read


def _stack_series(items: list, name: str) -> Volume:
    """Sort the slices by position along the slice normal, check the spacing, build the RAS affine."""
    first = items[0][1]
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if key not in first:
            raise VolumeError(f"{name}: the DICOM files lack {key}, so the slices cannot be placed in space: "
                              "convert the series with dcm2niix and give the NIfTI")
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise VolumeError(f"{name}: an enhanced (multi-frame) DICOM: convert it with dcm2niix and give the NIfTI")
    orientation = np.asarray(first.ImageOrientationPatient, float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    rows, cols = int(first.Rows), int(first.Columns)
    placed = []
    for member_name, ds in items:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), orientation, atol=1e-4):
            raise VolumeError(f"{name}: slices with different orientations ({member_name}): give one series")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise VolumeError(f"{name}: slices of different sizes ({member_name}): give one series")
        position = np.asarray(ds.ImagePositionPatient, float)
        placed.append((float(position @ normal), position, member_name, ds))
    placed.sort(key=lambda item: item[0])
    offsets = np.array([item[0] for item in placed])
    steps = np.diff(offsets)
    if len(steps) and steps.min() < 1e-3:
        raise VolumeError(f"{name}: two slices share a position (duplicates, or two series mixed): give one series")
    if len(steps):
        step = float(np.median(steps))
        if np.abs(steps - step).max() > SLICE_GAP_TOLERANCE * step:
            gap = int(np.argmax(np.abs(steps - step)))
            raise VolumeError(f"{name}: uneven slice spacing ({steps[gap]:.3g} mm after slice {gap + 1}, typically "
                              f"{step:.3g} mm): slices are missing; give the complete series")
    else:
        step = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)
    _check_shape((cols, rows, len(placed)), name)
    data = _series_pixels([(member_name, ds) for _, _, member_name, ds in placed], name, rows, cols)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = normal * step
    lps[:3, 3] = placed[0][1]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS
    data, notes = _finite(data, name)
    return Volume(data, affine, name, "dicom", None, notes)


def _series_pixels(members: list, name: str, rows: int, cols: int) -> np.ndarray:
    """The rescaled float32 pixels of sorted (member name, dataset) slices as (X, Y, Z)."""
    slices = []
    for member_name, ds in members:
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # compressed transfer syntax without a decoder, truncated pixel data
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise VolumeError(f"{name}: the pixels of {member_name} cannot be decoded (transfer syntax {syntax}: "
                              f"{first_line(exc)}): convert the series with dcm2niix and give the NIfTI") from None
        if pixels.shape != (rows, cols):
            raise VolumeError(f"{name}: {member_name} is not a single grayscale frame (shape {pixels.shape})")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        slices.append(pixels.astype(np.float32) * slope + intercept)
    # data[i, j, k] = pixel (row j, column i) of slice k: i runs along the rows' direction, j along the columns'.
    return np.ascontiguousarray(np.stack(slices, axis=-1).transpose(1, 0, 2))


# ----------------------------------------------------------------------------------------------- output
def save_nifti_mask(mask: np.ndarray, affine: np.ndarray, path: str | Path,
                    header: nib.Nifti1Header | None = None) -> Path:
    """Write ``mask`` as a uint8 0/1 NIfTI with exactly ``mask``'s shape and ``affine``.

    ``header`` (the input's NIfTI header, when it was one) keeps its geometry fields (qform/sform codes,
    units). The file is written atomically; ``.nii.gz`` paths are gzip-compressed.
    """
    image = nib.Nifti1Image((np.asarray(mask) > 0).astype(np.uint8), np.asarray(affine, float),
                            header=header.copy() if header is not None else None)
    image.header.set_data_dtype(np.uint8)
    image.header["scl_slope"], image.header["scl_inter"] = 1.0, 0.0
    image.header["cal_min"], image.header["cal_max"] = 0.0, 1.0
    if header is None:
        image.set_qform(affine, code="scanner")
        image.set_sform(affine, code="scanner")
    data = image.to_bytes()
    path = Path(path)
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, data)
