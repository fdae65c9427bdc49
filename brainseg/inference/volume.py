"""Whole-volume prediction: present each axial slice the way the LGG slices look, run the model, map back.

The steps, for a FLAIR volume (and optional T1 / post-contrast T1 on the same grid):

1. **Orientation** (:class:`brainseg.inference.geometry.Geometry`). The voxel array is permuted/flipped (no
   resampling, so it is exactly reversible) to the *presented* layout (Z, R, C): axial slices from inferior to
   superior, each with anterior at the top and the patient's right on the image's left (the radiological view of
   the Kaggle LGG slices). Oblique scans use their closest axes (nibabel's ``io_orientation``, as
   ``as_closest_canonical``).
2. **Head.** :func:`head_mask`: voxels above Otsu's threshold of the volume (minimum .. 99.5th percentile
   on 256 levels). On the held-out LGG stacks it finds the head (skull and scalp included), on
   skull-stripped BraTS volumes the brain (bounding box within 3 voxels of the provided brain mask).
3. **Intensity** (:mod:`brainseg.inference.intensity`, per volume and channel, the rule named by ``intensity``):
   the default ``percentile80`` maps the volume's 0.1th percentile -> 0 and the 80th percentile inside the
   head -> 160, clipped to 0..255 (a lesion cannot own that landmark unless it fills a fifth of the head; the
   brightest tumor saturates); ``percentile`` (the rule until issue 33) does the same with the 99th percentile
   (in the LGG slices the FLAIR channel's 99th percentile inside the head sits at 95-183, median 157);
   ``nyul``, ``whitestripe`` and ``zscore`` map tissue landmarks inside the head onto those of the LGG
   training slices. The model's per-image normalization removes any remaining scale.
4. **Framing** (:func:`brainseg.inference.geometry.crop_box`): one square box (in mm) per volume around the
   head's in-plane bounding box (largest blob of the head's projection), sized so the head spans
   ``HEAD_FRAME_FILL`` of its side, as in the LGG slices; each slice's box is resized to the model's input size.
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

import numpy as np

from brainseg.inference.geometry import CropBox, Geometry, crop_box, head_bounding_box
from brainseg.inference.intensity import Landmarks, Standardizer, head_mask, model_rule
from brainseg.inference.postprocess import binarize
from brainseg.io.patient_folders import PatientSlices, load_patient_folder, save_png_masks
from brainseg.io.subjects import SubjectInputs, is_patient_folder_input
from brainseg.io.volumes import Volume, VolumeError, check_same_grid, load_label_volume, load_volume, save_nifti_mask

MIN_HEAD_FRACTION = 0.005  # slices whose head covers less than this share of the box are not run (probability 0)
BATCH_SIZE = 8

Progress = Callable[[int, int], None]  # (slices done, slices to run)


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
                   crop: bool = True, progress: Progress | None = None, intensity: str | None = None,
                   landmarks: Landmarks | None = None) -> VolumePrediction:
    """Run ``segmenter`` over every axial slice of ``flair`` (+ optional channels on the same grid).

    Missing channels get the FLAIR (the model's channels are pre-contrast T1, FLAIR, post-contrast T1;
    the Kaggle dataset fills a missing sequence the same way). ``intensity`` names the rule of
    :mod:`brainseg.inference.intensity` (None: :func:`~brainseg.inference.intensity.model_rule`, the rule a
    calibrated model was calibrated under, else the default; ``landmarks``: its targets, default the bundled
    ones). ``progress(done, total)`` is called after each batch of slices. Raises :class:`VolumeError` for
    channels on another grid.
    """
    started = time.perf_counter()
    try:
        standardizer = Standardizer.named(intensity or model_rule(getattr(segmenter, "config", None)), landmarks)
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


def predict_subject(segmenter, subject: SubjectInputs, *, flair_only: bool = False, crop: bool = True,
                    intensity: str | None = None, progress: Progress | None = None) -> SubjectRun:
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
