"""Whole-volume prediction: present each axial slice the way the LGG slices look, run the model, map back.

The steps, for a FLAIR volume (and optional T1 / post-contrast T1 on the same grid):

1. **Orientation.** The voxel array is permuted/flipped (no resampling, so it is exactly reversible) to
   the *presented* layout (Z, R, C): axial slices from inferior to superior, each with anterior at the
   top and the patient's right on the image's left (the radiological view of the Kaggle LGG slices).
   Oblique scans use their closest axes (nibabel's ``io_orientation``, as ``as_closest_canonical``).
2. **Head.** :func:`head_mask`: voxels above Otsu's threshold of the volume (minimum .. 99.5th percentile
   on 256 levels). On the held-out LGG stacks it finds the head (skull and scalp included), on
   skull-stripped BraTS volumes the brain (bounding box within 3 voxels of the provided brain mask).
3. **Intensity** (:mod:`brainseg.inference.intensity`, per volume and channel, the rule named by ``intensity``):
   ``percentile`` maps the volume's 0.1th percentile -> 0 and the 99th percentile inside the head -> 160,
   clipped to 0..255 (in the LGG slices the FLAIR channel's 99th percentile inside the head sits at 95-183,
   median 157); ``nyul``, ``whitestripe`` and ``zscore`` map tissue landmarks inside the head onto those
   of the LGG training slices. The model's per-image normalization removes any remaining scale.
4. **Framing** (:func:`crop_box`): one square box (in mm) per volume around the head's in-plane bounding
   box (largest blob of the head's projection), sized so the head spans :data:`HEAD_FRAME_FILL` of its
   side, as in the LGG slices; each slice's box is resized to the model's input size.
5. The model runs on the slices that hold head; the probabilities are resized back into the box, and
   the mask is thresholded on the presented grid (small components removed, the minimum size scaled
   from model pixels to voxels) and permuted back to the input's exact voxel grid.

With ``crop=False`` the box is the whole slice (padded to a square in mm). A Kaggle patient folder is
already presented, windowed and framed: its slices go to the model as they are.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import cv2
import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from brainseg.inference.intensity import DEFAULT_RULE, Landmarks, Standardizer, head_mask
from brainseg.inference.postprocess import binarize
from brainseg.io.volumes import (
    PatientSlices,
    SubjectInputs,
    Volume,
    VolumeError,
    check_same_grid,
    is_patient_folder,
    load_label_volume,
    load_patient_folder,
    load_volume,
    save_nifti_mask,
    save_png_masks,
)

PRESENTED_AXES = ("S", "P", "L")  # presented array axes: slice (inferior -> superior), row (-> posterior), column
PRESENTED_ORNT = axcodes2ornt(PRESENTED_AXES)
# The head's longest in-plane side over the box's side: on the 11 held-out LGG patients, head_mask() of the
# FLAIR channel spans 0.83-0.96 of the 256-px frame (median 0.887).
HEAD_FRAME_FILL = 0.89
MIN_HEAD_FRACTION = 0.005  # slices whose head covers less than this share of the box are not run (probability 0)
BATCH_SIZE = 8

Progress = Callable[[int, int], None]  # (slices done, slices to run)


@dataclass(frozen=True)
class Geometry:
    """How an input voxel grid maps to the presented (Z, R, C) slices and back (None affine: already presented)."""

    input_shape: tuple[int, ...]
    affine: np.ndarray | None = None
    header: nib.Nifti1Header | None = None

    @property
    def _ornt(self) -> np.ndarray:
        return io_orientation(self.affine)

    def to_presented(self, array: np.ndarray) -> np.ndarray:
        """Input-grid array (extra trailing axes allowed) -> presented layout, a pure axis permutation/flip."""
        if self.affine is None:
            return np.asarray(array)
        return np.ascontiguousarray(apply_orientation(array, ornt_transform(self._ornt, PRESENTED_ORNT)))

    def from_presented(self, array: np.ndarray) -> np.ndarray:
        """The exact inverse of :meth:`to_presented`."""
        if self.affine is None:
            return np.asarray(array)
        return np.ascontiguousarray(apply_orientation(array, ornt_transform(PRESENTED_ORNT, self._ornt)))

    @property
    def presented_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the presented axes (1 mm when unknown)."""
        if self.affine is None:
            return (1.0, 1.0, 1.0)
        sizes = np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0))
        spacing = [1.0, 1.0, 1.0]
        for input_axis, (world_axis, _) in enumerate(self._ornt):
            spacing[2 - int(world_axis)] = float(sizes[input_axis])  # presented axis j holds world axis 2 - j
        return tuple(spacing)  # type: ignore[return-value]

    @property
    def slice_axis(self) -> int:
        """The input axis along which the presented slices are stacked (the one closest to inferior-superior)."""
        if self.affine is None:
            return 0
        return int(np.flatnonzero(self._ornt[:, 0] == 2)[0])

    def input_slice_index(self, presented_index: int) -> int:
        """The index along :attr:`slice_axis` of presented slice ``presented_index``."""
        if self.affine is None:
            return presented_index
        flip = self._ornt[self.slice_axis, 1]
        return presented_index if flip > 0 else self.input_shape[self.slice_axis] - 1 - presented_index


@dataclass(frozen=True)
class CropBox:
    """A box on the presented slices (may reach outside them: zero padding) resized to ``size`` x ``size``."""

    top: int
    left: int
    height: int
    width: int
    size: int

    def extract(self, images: np.ndarray) -> np.ndarray:
        """(N, R, C, 3) uint8 -> (N, size, size, 3) uint8: the box of every slice, resized."""
        n, rows, cols = images.shape[:3]
        box = np.zeros((n, self.height, self.width, images.shape[3]), images.dtype)
        r0, r1 = max(self.top, 0), min(self.top + self.height, rows)
        c0, c1 = max(self.left, 0), min(self.left + self.width, cols)
        if r1 > r0 and c1 > c0:
            box[:, r0 - self.top : r1 - self.top, c0 - self.left : c1 - self.left] = images[:, r0:r1, c0:c1]
        if (self.height, self.width) == (self.size, self.size):
            return box
        shrink = self.height * self.width > self.size * self.size
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return np.stack([cv2.resize(b, (self.size, self.size), interpolation=interpolation) for b in box])

    def put_back(self, proba: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """(size, size) probabilities -> (rows, cols) on the slice, zero outside the box."""
        if (self.height, self.width) != (self.size, self.size):
            proba = cv2.resize(proba, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        out = np.zeros((rows, cols), np.float32)
        r0, r1 = max(self.top, 0), min(self.top + self.height, rows)
        c0, c1 = max(self.left, 0), min(self.left + self.width, cols)
        if r1 > r0 and c1 > c0:
            out[r0:r1, c0:c1] = proba[r0 - self.top : r1 - self.top, c0 - self.left : c1 - self.left]
        return out

    @property
    def model_px_per_voxel(self) -> float:
        """Model-input pixels per slice pixel (area ratio)."""
        return (self.size * self.size) / (self.height * self.width)


@dataclass
class VolumePrediction:
    """Probabilities for every presented slice, enough to re-threshold without running the model again.

    ``images`` (Z, R, C, 3) uint8 are the presented slices after the intensity rule (what a viewer
    shows), ``proba`` (Z, R, C) float32 the model's probabilities on the same grid.
    """

    name: str
    images: np.ndarray
    proba: np.ndarray
    geometry: Geometry
    threshold: float
    min_component_px: int  # the model's, in model-input pixels
    box: CropBox
    channels: tuple[str, str, str]
    model: str
    revision: str | None
    seconds: float
    slices_run: int
    voxel_volume_ml: float | None = None
    slice_names: tuple[str, ...] | None = None  # Kaggle patient folders: the slice files' names
    notes: tuple[str, ...] = ()
    intensity: str = "none"  # the intensity rule that made ``images`` ("none": 8-bit slices used as they are)
    run: np.ndarray | None = None  # (Z,) bool: the presented slices that went through the model, in this order

    @property
    def n_slices(self) -> int:
        return int(self.proba.shape[0])

    def _min_component_voxels(self) -> int:
        if self.min_component_px <= 1:
            return self.min_component_px
        return max(1, round(self.min_component_px / self.box.model_px_per_voxel))

    def presented_mask(self, threshold: float | None = None) -> np.ndarray:
        """(Z, R, C) bool: each slice thresholded, components below the model's minimum size removed."""
        return np.stack([self.slice_mask(k, threshold) for k in range(self.n_slices)])

    def slice_mask(self, index: int, threshold: float | None = None) -> np.ndarray:
        """(R, C) bool mask of presented slice ``index``: the same rule as :meth:`presented_mask`, one slice."""
        return binarize(self.proba[index], self.threshold if threshold is None else threshold,
                        self._min_component_voxels())

    def mask(self, threshold: float | None = None) -> np.ndarray:
        """uint8 0/1 mask on the input's exact voxel grid (Kaggle folders: (N, H, W) in slice order)."""
        return self.geometry.from_presented(self.presented_mask(threshold).astype(np.uint8))

    def slice_areas(self, threshold: float | None = None) -> np.ndarray:
        """Tumor voxels per presented slice (inferior -> superior)."""
        return self.presented_mask(threshold).sum(axis=(1, 2))

    def summary(self, threshold: float | None = None) -> dict:
        """The numbers a report needs: volume in mL, slices with tumor, the largest slice, channels, model."""
        threshold = self.threshold if threshold is None else threshold
        areas = self.slice_areas(threshold)
        voxels = int(areas.sum())
        largest = int(np.argmax(areas)) if voxels else None
        largest_slice = None if largest is None else self.geometry.input_slice_index(largest)
        return {
            "name": self.name,
            "volume_ml": None if self.voxel_volume_ml is None else round(voxels * self.voxel_volume_ml, 4),
            "voxel_volume_ml": self.voxel_volume_ml,
            "tumor_voxels": voxels,
            "n_slices": self.n_slices,
            "slices_run": self.slices_run,
            "slices_with_tumor": int((areas > 0).sum()),
            "largest_slice": largest_slice,
            "largest_slice_name": None if largest is None or self.slice_names is None else self.slice_names[largest],
            "slice_axis": self.geometry.slice_axis,
            "input_shape": list(self.geometry.input_shape),
            "threshold": threshold,
            "channels": list(self.channels),
            "intensity": self.intensity,
            "crop_box": asdict(self.box),
            "model": self.model,
            "revision": self.revision,
            "predict_seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------------------------------------ framing
def head_bounding_box(head: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) inclusive of the largest blob of the head's in-plane projection, or None."""
    projection = head.any(axis=0).astype(np.uint8)
    if not projection.any():
        return None
    opened = cv2.morphologyEx(projection, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if opened.any():
        projection = opened
    n, _, stats, _ = cv2.connectedComponentsWithStats(projection, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, width, height = (int(v) for v in stats[largest, :4])
    return top, left, top + height - 1, left + width - 1


def crop_box(shape: tuple[int, int], spacing: tuple[float, float], size: int,
             bbox: tuple[int, int, int, int] | None = None) -> CropBox:
    """A box square in mm: around ``bbox`` with the head filling :data:`HEAD_FRAME_FILL`, or the whole slice."""
    rows, cols = shape
    row_mm, col_mm = spacing
    if bbox is None:
        top, left, bottom, right = 0, 0, rows - 1, cols - 1
        side_mm = max(rows * row_mm, cols * col_mm)
    else:
        top, left, bottom, right = bbox
        side_mm = max((bottom - top + 1) * row_mm, (right - left + 1) * col_mm) / HEAD_FRAME_FILL
    height, width = max(1, round(side_mm / row_mm)), max(1, round(side_mm / col_mm))
    centre_r, centre_c = (top + bottom + 1) / 2, (left + right + 1) / 2
    return CropBox(round(centre_r - height / 2), round(centre_c - width / 2), height, width, size)


# ------------------------------------------------------------------------------------------------ running
def _run_model(segmenter, images: np.ndarray, box: CropBox, run: np.ndarray,
               progress: Progress | None) -> np.ndarray:
    """Probabilities (Z, R, C) for presented uint8 slices; slices not in ``run`` stay 0."""
    n, rows, cols = images.shape[:3]
    proba = np.zeros((n, rows, cols), np.float32)
    todo = np.flatnonzero(run)
    if progress:
        progress(0, len(todo))
    for start in range(0, len(todo), BATCH_SIZE):
        chunk = todo[start : start + BATCH_SIZE]
        model_proba = segmenter.predict_proba_batch(box.extract(images[chunk]))
        for z, p in zip(chunk, model_proba):
            proba[z] = box.put_back(p, rows, cols)
        if progress:
            progress(min(start + BATCH_SIZE, len(todo)), len(todo))
    return proba


def _model_name(segmenter) -> tuple[str, str | None]:
    return str(getattr(segmenter, "source", "") or "model"), getattr(segmenter, "revision", None)


def predict_volume(segmenter, flair: Volume, t1: Volume | None = None, t1ce: Volume | None = None, *,
                   crop: bool = True, progress: Progress | None = None, intensity: str = DEFAULT_RULE,
                   landmarks: Landmarks | None = None) -> VolumePrediction:
    """Run ``segmenter`` over every axial slice of ``flair`` (+ optional channels on the same grid).

    Missing channels get the FLAIR (the model's channels are pre-contrast T1, FLAIR, post-contrast T1;
    the Kaggle dataset fills a missing sequence the same way). ``intensity`` names the rule of
    :mod:`brainseg.inference.intensity` (``landmarks``: its targets, default the bundled ones). ``progress(done,
    total)`` is called after each batch of slices. Raises :class:`VolumeError` for channels on another grid.
    """
    started = time.perf_counter()
    try:
        standardizer = Standardizer.named(intensity, landmarks)
    except ValueError as exc:
        raise VolumeError(str(exc)) from None
    for other, what in ((t1, "the T1"), (t1ce, "the post-contrast T1")):
        if other is not None:
            check_same_grid(flair, other, what)
    geometry = Geometry(flair.shape, flair.affine, flair.header)
    presented_flair = geometry.to_presented(flair.data)
    head = head_mask(presented_flair)
    notes = list(flair.notes)
    if not head.any():
        notes.append(f"{flair.name} is constant: nothing to segment")
    flair_u8 = standardizer.to_uint8(presented_flair, head, "flair")
    del presented_flair
    channel_u8 = []
    for other, channel in ((t1, "t1"), (t1ce, "t1ce")):
        channel_u8.append(flair_u8 if other is None
                          else standardizer.to_uint8(geometry.to_presented(other.data), head, channel))
    images = np.stack([channel_u8[0], flair_u8, channel_u8[1]], axis=-1)
    del channel_u8
    channels = ("t1" if t1 is not None else "flair", "flair", "t1ce" if t1ce is not None else "flair")
    spacing = geometry.presented_spacing[1:]
    size = segmenter.config.input_size
    bbox = head_bounding_box(head) if crop else None
    box = crop_box(images.shape[1:3], spacing, size, bbox)
    in_box = head[:, max(box.top, 0) : box.top + box.height, max(box.left, 0) : box.left + box.width]
    run = in_box.sum(axis=(1, 2)) >= MIN_HEAD_FRACTION * box.height * box.width
    del head, in_box
    proba = _run_model(segmenter, images, box, run, progress)
    model, revision = _model_name(segmenter)
    return VolumePrediction(
        name=flair.name, images=images, proba=proba, geometry=geometry, threshold=segmenter.config.threshold,
        min_component_px=segmenter.config.min_component_px, box=box, channels=channels, model=model,
        revision=revision, seconds=time.perf_counter() - started, slices_run=int(run.sum()),
        voxel_volume_ml=flair.voxel_volume_ml, notes=tuple(notes), intensity=standardizer.rule, run=run)


def predict_patient_folder(segmenter, patient: PatientSlices, *, flair_only: bool = False,
                           progress: Progress | None = None) -> VolumePrediction:
    """Run ``segmenter`` over a Kaggle patient folder's slices as they are (already presented and windowed).

    ``flair_only`` replaces the pre- and post-contrast channels by the FLAIR (for comparisons).
    """
    started = time.perf_counter()
    images = patient.images
    if flair_only:
        images = np.repeat(images[..., 1:2], 3, axis=-1)
    n, rows, cols = images.shape[:3]
    box = crop_box((rows, cols), (1.0, 1.0), segmenter.config.input_size)
    run = images.reshape(n, -1).max(axis=1) > images.reshape(n, -1).min(axis=1)
    proba = _run_model(segmenter, images, box, run, progress)
    model, revision = _model_name(segmenter)
    return VolumePrediction(
        name=patient.name, images=images, proba=proba, geometry=Geometry((n, rows, cols)),
        threshold=segmenter.config.threshold, min_component_px=segmenter.config.min_component_px, box=box,
        channels=("flair",) * 3 if flair_only else ("t1", "flair", "t1ce"), model=model, revision=revision,
        seconds=time.perf_counter() - started, slices_run=int(run.sum()), slice_names=patient.slice_names, run=run)


@dataclass(frozen=True)
class SubjectRun:
    """One subject through the model: the prediction, its ground truth on the input grid (None without one) and,
    for a scan, its FLAIR volume (None for a Kaggle patient folder)."""

    prediction: VolumePrediction
    truth: np.ndarray | None
    flair: Volume | None


def is_patient_folder_input(subject: SubjectInputs) -> bool:
    """A Kaggle patient folder (3-channel slices with masks) rather than a scan (NIfTI, DICOM)."""
    return subject.flair.is_dir() and is_patient_folder(subject.flair)


def predict_subject(segmenter, subject: SubjectInputs, *, flair_only: bool = False, crop: bool = True,
                    intensity: str = DEFAULT_RULE, progress: Progress | None = None) -> SubjectRun:
    """Read one subject (a Kaggle patient folder, or a FLAIR scan with its optional T1 / T1c / truth files) and run
    ``segmenter`` over it: the one path for ``brainseg predict``, cohorts and calibration."""
    if is_patient_folder_input(subject):
        patient = load_patient_folder(subject.flair)
        prediction = predict_patient_folder(segmenter, patient, flair_only=flair_only, progress=progress)
        return SubjectRun(prediction, patient.truth, None)
    flair = load_volume(subject.flair)
    t1 = None if flair_only or subject.t1 is None else load_volume(subject.t1)
    t1ce = None if flair_only or subject.t1ce is None else load_volume(subject.t1ce)
    truth = None if subject.truth is None else load_label_volume(subject.truth, flair)
    prediction = predict_volume(segmenter, flair, t1, t1ce, crop=crop, progress=progress, intensity=intensity)
    return SubjectRun(prediction, truth, flair)


def save_mask(prediction: VolumePrediction, path: str, threshold: float | None = None) -> list:
    """Write the mask: a NIfTI (input shape and affine) for volumes, a folder of per-slice PNGs for patient folders.

    Returns the written paths. Every file is written atomically.
    """
    mask = prediction.mask(threshold)
    if prediction.slice_names is not None:
        return save_png_masks(mask.astype(bool), prediction.slice_names, path)
    if prediction.geometry.affine is None:
        raise ValueError("this prediction has no affine: it cannot be written as NIfTI")
    return [save_nifti_mask(mask, prediction.geometry.affine, path, prediction.geometry.header)]
