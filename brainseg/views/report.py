"""The Volume tab's result card and its downloadable report: tumor volume (with the range between thresholds 0.3 and
0.7), slices with tumor, laterality, bounding box in mm, agreement with a ground truth (3D Dice; HD95 and surface
Dice from MONAI), model, threshold and time; as Markdown, JSON and a PDF (matplotlib) of one page per section.

Everything is computed from presented (Z, R, C) masks (:mod:`brainseg.inference.volume`): columns run from the patient's
right to left, so laterality follows from the scan's affine, not from how the file stores its axes.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from brainseg.evaluation.metrics import dice_score
from brainseg.fileio import atomic_write, atomic_write_text
from brainseg.inference.quality import Flag
from brainseg.views.planes import PLANES, Layers, PlaneGeometry, render_plane

BAND = (0.3, 0.7)  # the uncertainty band: volume at 0.3 (generous) vs 0.7 (strict)
SURFACE_TOLERANCE_MM = 2.0  # surface Dice: boundary points within this distance count as agreeing
LATERAL_SHARE = 0.9  # this share of the tumor on one side of the midline: that side, else both
SECTIONS = ("Result", "Tumor slices in three planes", "Tumor area per slice")
NOT_CLINICAL = ("Research demo, not a medical device: not for diagnosis or treatment decisions "
                "(not for clinical use).")
MONTAGE_COLUMNS = 4
MONTAGE_GRID = {"left": 0.02, "right": 0.98, "bottom": 0.02, "top": 0.9, "wspace": 0.05, "hspace": 0.25}


@dataclass(frozen=True)
class Agreement:
    """A prediction against a ground truth: 3D Dice, 95th-percentile Hausdorff distance and surface Dice."""

    dice: float
    hd95_mm: float | None  # None when either mask is empty
    surface_dice: float | None
    truth_volume_ml: float | None


@dataclass(frozen=True)
class ResultCard:
    """The numbers at the top of the Volume tab, in the report and in its JSON."""

    name: str
    volume_ml: float | None  # None when the voxel size is unknown
    volume_range_ml: tuple[float, float] | None  # at thresholds 0.7 and 0.3
    tumor_voxels: int
    slices_with_tumor: int
    n_slices: int
    laterality: str  # "left", "right", "both" or "none" (the patient's side)
    bbox_mm: tuple[float, float, float] | None  # superior-inferior, anterior-posterior, right-left extent
    threshold: float
    model: str
    revision: str | None
    seconds: float
    agreement: Agreement | None = None
    flags: tuple[Flag, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        """The card: a few short lines, the numbers first."""
        if self.volume_ml is None:
            head = f"### Tumor: {self.tumor_voxels:,} voxels"
        else:
            low, high = self.volume_range_ml or (self.volume_ml, self.volume_ml)
            head = f"### Tumor volume: {self.volume_ml:.2f} mL ({low:.2f}–{high:.2f} mL at thresholds 0.7–0.3)"
        box = "—" if self.bbox_mm is None else " × ".join(f"{v:.0f}" for v in self.bbox_mm) + " mm (S-I × A-P × R-L)"
        lines = [head, f"**{self.slices_with_tumor}** of {self.n_slices} slices with tumor · side: "
                 f"**{self.laterality}** · extent {box}"]
        if self.agreement is not None:
            a = self.agreement
            hd = "—" if a.hd95_mm is None else f"{a.hd95_mm:.1f} mm"
            sd = "—" if a.surface_dice is None else f"{a.surface_dice:.3f}"
            truth = "" if a.truth_volume_ml is None else f" ({a.truth_volume_ml:.2f} mL)"
            lines.append(f"**Ground truth**{truth}: 3D Dice **{a.dice:.3f}** · HD95 {hd} · surface Dice "
                         f"({SURFACE_TOLERANCE_MM:g} mm) {sd}")
        lines.append(f"`{self.model}`{f' @ {self.revision}' if self.revision else ''} · threshold "
                     f"{self.threshold:g} · {self.seconds:.1f} s")
        return "  \n".join(lines)


def laterality(mask: np.ndarray, midline_column: float) -> str:
    """The patient's side of a presented mask: columns above ``midline_column`` are the left."""
    columns = np.nonzero(np.asarray(mask).any(axis=(0, 1)))[0]
    if not len(columns):
        return "none"
    per_column = np.asarray(mask).sum(axis=(0, 1))
    left = per_column[np.arange(len(per_column)) > midline_column].sum() / per_column.sum()
    return "left" if left >= LATERAL_SHARE else "right" if left <= 1 - LATERAL_SHARE else "both"


def bbox_mm(mask: np.ndarray, spacing: Sequence[float]) -> tuple[float, float, float] | None:
    """The mask's extent along the presented axes in mm (superior-inferior, anterior-posterior, right-left)."""
    points = np.argwhere(mask)
    if not len(points):
        return None
    extent = points.max(axis=0) - points.min(axis=0) + 1
    return tuple(round(float(n * s), 1) for n, s in zip(extent, spacing))  # type: ignore[return-value]


def agreement(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
              voxel_ml: float | None) -> Agreement:
    """3D Dice; HD95 and surface Dice by MONAI (on the two masks' bounding box, which holds every surface point)."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    truth_ml = None if voxel_ml is None else round(int(truth.sum()) * voxel_ml, 4)
    dice = round(dice_score(prediction, truth), 4)
    if not prediction.any() or not truth.any():
        return Agreement(dice, None, None, truth_ml)
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    both = np.argwhere(prediction | truth)
    lo, hi = np.maximum(both.min(axis=0) - 1, 0), both.max(axis=0) + 2
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    pred_t = torch.from_numpy(np.ascontiguousarray(prediction[crop]))[None, None]
    truth_t = torch.from_numpy(np.ascontiguousarray(truth[crop]))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(pred_t, truth_t, include_background=True, percentile=95,
                                          spacing=list(spacing))
        surface = compute_surface_dice(pred_t, truth_t, class_thresholds=[SURFACE_TOLERANCE_MM],
                                       include_background=True, spacing=list(spacing))
    return Agreement(dice, round(float(hd95), 2), round(float(surface), 4), truth_ml)


def write_json(card: ResultCard, numbers: dict, path: str | Path) -> Path:
    """The card and the run's numbers (``volume_numbers``) as one JSON file, written atomically."""
    return atomic_write_text(path, json.dumps({"card": card.to_dict(), "numbers": numbers,
                                               "disclaimer": NOT_CLINICAL}, indent=2))


def _text_page(card: ResultCard) -> Figure:
    figure = Figure(figsize=(8.27, 11.69))
    figure.text(0.08, 0.95, f"{SECTIONS[0]}: {card.name}", fontsize=16, weight="bold", va="top")
    lines = card.markdown().replace("**", "").replace("`", "").replace("### ", "").split("  \n")
    lines += ["", *("Scan check: " + flag.message for flag in card.flags)] if card.flags else []
    lines += ["", NOT_CLINICAL]
    figure.text(0.08, 0.9, "\n".join(_wrap(line) for line in lines), fontsize=10, va="top", linespacing=1.6)
    return figure


def _wrap(line: str, width: int = 95) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(line, width)) or " "


def montage_points(mask: np.ndarray, columns: int = MONTAGE_COLUMNS) -> list[tuple[int, int, int]]:
    """``columns`` points spread through the tumor (each axis evenly over its extent), at its centre otherwise."""
    points = np.argwhere(mask)
    if not len(points):
        centre = [n // 2 for n in mask.shape]
        return [tuple(centre)] * columns  # type: ignore[list-item]
    lo, hi = points.min(axis=0), points.max(axis=0)
    steps = [np.linspace(lo[a], hi[a], columns + 2)[1:-1].round().astype(int) for a in range(3)]
    return [tuple(int(steps[a][k]) for a in range(3)) for k in range(columns)]


def _montage_page(base: np.ndarray, geometry: PlaneGeometry, layers: Layers, title: str) -> Figure:
    figure = Figure(figsize=(11.69, 8.27))  # fixed margins: a layout engine would measure every title per save
    figure.suptitle(title, fontsize=14, weight="bold")
    axes = figure.subplots(len(PLANES), MONTAGE_COLUMNS, squeeze=False, gridspec_kw=MONTAGE_GRID)
    points = montage_points(layers.prediction if layers.prediction is not None else np.zeros(base.shape, bool))
    for row, plane in enumerate(PLANES):
        axis = {"axial": 0, "coronal": 1, "sagittal": 2}[plane]
        for col, point in enumerate(points):
            ax = axes[row, col]
            ax.imshow(render_plane(base, geometry, plane, point, layers, crosshair=False))
            ax.set_title(f"{plane} {point[axis] + 1}", fontsize=8)
            ax.axis("off")
    return figure


def write_pdf(card: ResultCard, base: np.ndarray, geometry: PlaneGeometry, layers: Layers, area_figure: Figure,
              path: str | Path) -> Path:
    """The report: one page per :data:`SECTIONS` entry (the card, the montage, the area plot), written atomically."""
    area_figure.suptitle(SECTIONS[2], fontsize=12, weight="bold")
    pages = (_text_page(card), _montage_page(base, geometry, layers, SECTIONS[1] + " (red: prediction, "
                                             "blue: ground truth, amber: uncertain band)"), area_figure)

    def write(tmp: Path) -> None:
        with PdfPages(tmp, metadata={"Title": f"brainseg report: {card.name}", "Subject": NOT_CLINICAL}) as pdf:
            for page in pages:
                pdf.savefig(page)

    import matplotlib

    # Type 3 fonts (matplotlib's own, with a ToUnicode map): the text stays searchable and extractable, and the
    # save skips the seconds that subsetting TrueType (Type 42) fonts with fontTools costs on every report.
    with matplotlib.rc_context({"pdf.fonttype": 3}):
        return atomic_write(path, write)
