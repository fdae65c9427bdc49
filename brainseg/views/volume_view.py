"""One Volume-tab session after its model run: the prediction and what is drawn from it without running the model
again (three linked planes, the uncertainty band, the result card, the 3D scene, the report files).

Masks are cached per threshold (a plane change or a click reuses them), and so are result cards (the downloads
step after a threshold release reuses the card the view step made); the band volumes at thresholds 0.3 and
0.7, the head and the scan check are computed once per run.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from brainseg.inference import quality
from brainseg.inference.volume import VolumePrediction, head_mask
from brainseg.views import mesh, report, volume_export
from brainseg.views.planes import PLANES, Layers, PlaneGeometry, grayscale, render_planes

CACHED_MASKS = 4


@dataclass(frozen=True, eq=False)
class VolumeSession:
    """Per-session state of the Volume tab (compared by identity: Gradio fires ``change`` on a new one)."""

    prediction: VolumePrediction
    seconds: float
    truth: np.ndarray | None = None  # bool, on the input grid
    shown_truth: np.ndarray | None = None  # the same, presented (slice, row, column)
    facts: quality.ScanFacts | None = None
    head: np.ndarray | None = None  # presented bool
    band: np.ndarray | None = None  # presented bool: the uncertainty band (see :meth:`uncertain`)
    _masks: dict[float, np.ndarray] = field(default_factory=dict, repr=False)
    _cards: dict[float, report.ResultCard] = field(default_factory=dict, repr=False)  # this truth and seconds

    @classmethod
    def create(cls, prediction: VolumePrediction, seconds: float = 0.0, truth: np.ndarray | None = None,
               flair_data: np.ndarray | None = None) -> VolumeSession:
        """The session of a new run; ``flair_data`` (the raw FLAIR voxels) feeds the scan check."""
        head = head_mask(grayscale(prediction.images))
        facts = None
        if flair_data is not None:
            sequences = tuple(dict.fromkeys(prediction.channels))
            facts = quality.scan_facts(flair_data, sequences, int(head.any(axis=(1, 2)).sum()),
                                       prediction.geometry.presented_spacing[0])
        low, high = report.BAND
        band = (prediction.proba >= low) & (prediction.proba < high)
        return cls(prediction, seconds, None, None, facts, head, band).with_truth(truth)

    def with_truth(self, truth: np.ndarray | None) -> VolumeSession:
        """The same run with another ground truth (None: none); cached masks are kept."""
        shown = None if truth is None else volume_export.presented_truth(self.prediction, truth)
        return replace(self, truth=truth, shown_truth=shown, _cards={})

    def with_seconds(self, seconds: float) -> VolumeSession:
        return replace(self, seconds=seconds, _cards={})

    # ------------------------------------------------------------------------------------------- masks
    def mask(self, threshold: float) -> np.ndarray:
        """The presented mask at ``threshold`` (cached: the last few thresholds)."""
        key = round(float(threshold), 4)
        if key not in self._masks:
            if len(self._masks) >= CACHED_MASKS:
                self._masks.pop(next(k for k in self._masks if k not in report.BAND))
            self._masks[key] = self.prediction.presented_mask(key)
        return self._masks[key]

    def uncertain(self) -> np.ndarray:
        """The uncertainty band: voxels whose probability lies in [0.3, 0.7)."""
        if self.band is not None:
            return self.band
        low, high = report.BAND
        return (self.prediction.proba >= low) & (self.prediction.proba < high)

    def volume_ml(self, threshold: float) -> float:
        voxel_ml = self.prediction.voxel_volume_ml or 0.0
        return round(int(self.mask(threshold).sum()) * voxel_ml, 4)

    @property
    def geometry(self) -> PlaneGeometry:
        return PlaneGeometry.of(self.prediction.proba.shape, self.prediction.geometry.presented_spacing)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.prediction.geometry.presented_spacing

    # ------------------------------------------------------------------------------------------- views
    def start_point(self, threshold: float) -> tuple[int, int, int]:
        """The slice with the most tumor and, on it, the tumor voxel nearest its centre; without tumor the head's
        centre (the middle of the grid without head)."""
        mask = self.mask(threshold)
        if mask.any():
            z = int(np.argmax(mask.sum(axis=(1, 2))))
            points = np.argwhere(mask[z])
            centre = points.mean(axis=0)
            r, c = points[np.argmin(((points - centre) ** 2).sum(axis=1))]
            return z, int(r), int(c)
        if self.head is not None and self.head.any():
            return tuple(int(v) for v in np.argwhere(self.head).mean(axis=0).round())  # type: ignore[return-value]
        return tuple(n // 2 for n in mask.shape)  # type: ignore[return-value]

    def layers(self, threshold: float, band: bool = True) -> Layers:
        return Layers(self.mask(threshold), self.shown_truth, self.uncertain() if band else None)

    def planes(self, point: Sequence[int], threshold: float, sequence: str = "FLAIR",
               band: bool = True) -> dict[str, np.ndarray]:
        """The three planes through ``point`` on the ``sequence``'s grayscale."""
        geometry = self.geometry
        return render_planes(grayscale(self.prediction.images, sequence), geometry, geometry.clamp(point),
                             self.layers(threshold, band))

    # ------------------------------------------------------------------------------------------- numbers
    def card(self, threshold: float) -> report.ResultCard:
        """The result card at ``threshold`` (cached: the last few thresholds)."""
        key = float(threshold)
        if key not in self._cards:
            if len(self._cards) >= CACHED_MASKS:
                self._cards.pop(next(iter(self._cards)))
            self._cards[key] = self._new_card(key)
        return self._cards[key]

    def _new_card(self, threshold: float) -> report.ResultCard:
        prediction, mask = self.prediction, self.mask(threshold)
        voxel_ml = prediction.voxel_volume_ml
        low, high = (self.volume_ml(t) for t in reversed(report.BAND))
        volume_ml = None if voxel_ml is None else self.volume_ml(threshold)
        midline = float(np.argwhere(self.head)[:, 2].mean()) if self.head.any() else mask.shape[2] / 2
        flags = () if self.facts is None else quality.assess(self.facts, volume_ml or 0.0, low, high)
        agreement = (None if self.shown_truth is None
                     else report.agreement(mask, self.shown_truth, self.spacing, voxel_ml))
        return report.ResultCard(
            name=prediction.name, volume_ml=volume_ml, volume_range_ml=None if voxel_ml is None else (low, high),
            tumor_voxels=int(mask.sum()), slices_with_tumor=int(mask.any(axis=(1, 2)).sum()),
            n_slices=prediction.n_slices, laterality=report.laterality(mask, midline),
            bbox_mm=report.bbox_mm(mask, self.spacing), threshold=float(threshold), model=prediction.model,
            revision=prediction.revision, seconds=round(self.seconds, 2), agreement=agreement, flags=flags)

    # ------------------------------------------------------------------------------------------- files
    def save_scene(self, threshold: float, path: str | Path) -> Path:
        """The 3D view (prediction, ground truth, translucent head) as ``.glb``."""
        scene = mesh.build_scene(self.mask(threshold), self.spacing, self.shown_truth, self.head)
        return mesh.save_glb(scene, path)

    def save_report(self, card: report.ResultCard, numbers: dict, threshold: float,
                    stem: Path) -> tuple[Path, Path]:
        """The PDF report and its JSON beside ``stem`` (``<stem>_report.pdf``, ``<stem>_report.json``)."""
        base = grayscale(self.prediction.images)
        plot = volume_export.area_plot(self.prediction, threshold, self.shown_truth)
        pdf = report.write_pdf(card, base, self.geometry, self.layers(threshold), plot,
                               stem.with_name(stem.name + "_report.pdf"))
        return pdf, report.write_json(card, numbers, stem.with_name(stem.name + "_report.json"))


__all__ = ["PLANES", "VolumeSession"]
