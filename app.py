"""The brainseg Gradio demo: upload a brain-MRI slice, or a whole scan, and see the FLAIR abnormality the U-Net finds.

    python app.py [--host 0.0.0.0] [--port 7860] [--share] [--model FOLDER] [--data-dir PATH]

Only UI wiring lives here; decoding is in ``brainseg.io.slices``, the model in ``brainseg.inference.segmenter``,
drawing and the numbers in ``brainseg.views.overlay`` and dataset browsing in ``brainseg.app.gallery``; the browser
redraws the overlay itself while the threshold slider moves (``assets/app/threshold.js``). The Volume tab
runs ``brainseg.inference.volume`` over a whole scan; its views, plot and GIF come from ``brainseg.views.volume_export``.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import gradio as gr
import numpy as np

import brainseg
from brainseg import Segmenter
from brainseg.app.gallery import DatasetIndex, curated_examples, largest_tumor_position
from brainseg.config import UNET, ModelConfig
from brainseg.evaluation.metrics import dice_score
from brainseg.inference.backends import BACKENDS, BackendError
from brainseg.inference.quality import flags_markdown
from brainseg.inference.volume import predict_volume, save_mask
from brainseg.io.hub import BUNDLED_LABEL, DEFAULT_MODEL_NAME, ModelLoadError, model_arg_from_env
from brainseg.io.slices import decode_image, encode_png, inspect_mask, save_png, slice_notes
from brainseg.io.volumes import VolumeError, load_volume, subject_name
from brainseg.publishing.card import calibration_line
from brainseg.publishing.space import SpaceConfig
from brainseg.views import volume_export
from brainseg.views.overlay import (
    FILL_ALPHA,
    PREDICTION_COLOUR,
    contour_offsets,
    contour_thickness,
    probability_heatmap,
    render_views,
    slice_numbers,
    threshold_levels,
    tint_table,
    truth_overlay,
)
from brainseg.views.planes import SEQUENCES, gray_slice
from brainseg.views.report import ResultCard
from brainseg.views.volume_view import VolumeSession

DATA_DIR_ENV = "BRAINSEG_DATA_DIR"
# fp32: bf16 autocast does not keep the test-set masks equal to fp32 at threshold 0.5 (it flips
# a few boundary pixels in many slices; benchmarks/bf16_agreement.py, numbers in the README).
DEFAULT_PRECISION = "fp32"
# auto: ONNX Runtime on the CPU when installed and within 1e-4 of PyTorch (about 2x faster per slice,
# benchmarks/inference_speed.py), else PyTorch; always PyTorch on a GPU or with bf16.
DEFAULT_BACKEND = "auto"
THRESHOLD_MIN, THRESHOLD_MAX, THRESHOLD_STEP = 0.05, 0.95, 0.01
# Uploads: a DICOM series .zip or an uncompressed NIfTI can be large; volume_io still caps the voxels and
# refuses zip bombs whatever the file size.
MAX_FILE_SIZE = "256mb"
STATE_TTL_S = 3600
IMAGE_HEIGHT = 320
KAGGLE_URL = "https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation"

DISCLAIMER = (
    "**Research demo, not a medical device.** Do not use it for diagnosis or treatment decisions: "
    "the model was trained on one public dataset (110 lower-grade glioma patients, TCGA / Kaggle LGG) "
    "and can be wrong on other scanners, protocols or diseases. Do not upload identifiable patient data."
)
NO_DATA_HINT = (
    "No dataset folder given, so no patient browser or examples. Download the Kaggle "
    f"[lgg-mri-segmentation]({KAGGLE_URL}) set and start `python app.py --data-dir PATH` "
    f"(or set `{DATA_DIR_ENV}=PATH`) with PATH holding its `TCGA_*` folders (`kaggle_3m`)."
)
CSS = (
    "#disclaimer {border: 2px solid #d97706; border-radius: 8px; padding: 4px 12px;"
    " background: #fff7ed; color: #7c2d12}"
)


START_TEXT = "Upload a slice to start."
# The browser's redraw while the threshold slider moves: the body of the live view's js_on_load.
LIVE_JS = Path(__file__).resolve().parent / "assets" / "app" / "threshold.js"
LIVE_TEMPLATE = '<div class="brainseg-live"><small class="brainseg-live-readout" aria-live="polite"></small></div>'
# The slider's `input` only tells the live view (no server call); the server redraws on release.
ON_SLIDER_INPUT = '(t) => { document.dispatchEvent(new CustomEvent("brainseg-threshold", { detail: t })); }'


SLICE_REDRAW = "redraws in the browser while you drag, without re-running the model."
VOLUME_REDRAW = "moving it redraws without re-running the model."


def threshold_info(threshold: float, redraw: str = SLICE_REDRAW) -> str:
    """The threshold slider's help line for a model tuned at ``threshold``."""
    return f"Starts at the model's tuned value {threshold:g}; {redraw}"


def normalize_info(trained_with: bool) -> str:
    """The normalization checkbox's help line for a model trained with it on or off."""
    return (f"The loaded weights were trained with it {'ON' if trained_with else 'OFF'}; "
            "flipping it re-runs the model (off = raw [0, 1] input).")


def slider_steps(minimum: float = THRESHOLD_MIN, maximum: float = THRESHOLD_MAX,
                 step: float = THRESHOLD_STEP) -> tuple[float, ...]:
    """Every value the threshold slider can take, as the floats the browser sends (0.37, not 0.37000000000000005)."""
    return tuple(round(minimum + i * step, 10) for i in range(round((maximum - minimum) / step) + 1))


@dataclass(frozen=True, eq=False)
class SliceState:
    """Per-session state: the decoded slice, its probability map, the optional ground truth
    (and the cached PNG of its view, drawn once per ground truth).

    Compared by identity (``eq=False``): Gradio hashes it to fire ``state.change`` when a handler stores a new one.
    """

    image: np.ndarray
    proba: np.ndarray
    normalize: bool
    truth: np.ndarray | None = None
    truth_view: str | None = None
    notes: tuple[str, ...] = ()
    model: str | None = None  # the model choice that gave ``proba`` (None: the one the app was started with)


class LiveOutputs(NamedTuple):
    """What a threshold move redraws. The field order is the order of the ``/threshold`` outputs."""

    mask: Any  # binary mask PNG (white = abnormality)
    stats: Any  # the numbers (JSON)
    overlay: Any  # prediction drawn on the slice
    agreement: Any  # TP / FP / FN map (with ground truth)
    compare: Any  # (ground truth, prediction) pair for the slider (with ground truth)
    summary: Any  # Markdown


class SliceOutputs(NamedTuple):
    """What a new slice, preprocessing or ground truth redraws. The field order is the order of the
    ``/segment`` outputs (``state`` is the session's, not part of the API).

    ``build_demo`` fills one with the output components, the handlers return one with their values.
    """

    mask: Any
    stats: Any
    overlay: Any
    heatmap: Any  # probability map
    truth: Any  # ground-truth view
    agreement: Any
    compare: Any
    summary: Any
    state: Any  # SliceState

    @classmethod
    def of(cls, live: LiveOutputs, heatmap: Any, truth: Any, state: Any) -> SliceOutputs:
        return cls(heatmap=heatmap, truth=truth, state=state, **live._asdict())

    @classmethod
    def cleared(cls) -> SliceOutputs:
        """Every output emptied, the summary back to its start text."""
        return cls(*(None for _ in cls._fields))._replace(summary=START_TEXT)

    def live(self) -> LiveOutputs:
        return LiveOutputs(*(getattr(self, name) for name in LiveOutputs._fields))


class PickedSlice(NamedTuple):
    """What choosing a slice in the dataset browser fills in."""

    image_file: Any
    truth_file: Any
    caption: Any


Outputs = TypeVar("Outputs", LiveOutputs, SliceOutputs, PickedSlice)


def unchanged(kind: type[Outputs]) -> Outputs:
    """Every output of ``kind`` left as it is."""
    return kind(*(gr.skip() for _ in kind._fields))


def png_data_url(array: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(array)).decode("ascii")


def clear_all() -> tuple[Any, ...]:
    """The slice was removed: empty every output and the ground-truth file."""
    return (*SliceOutputs.cleared(), None)


def read_truth(truth_file: str | None, image: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
    """The ground-truth mask (checked against the slice's size) and notes about it."""
    return inspect_mask(truth_file, image.shape[:2]) if truth_file else (None, [])


def started_choice(segmenter: Segmenter, requested: str | None = None) -> str:
    """The selector's name for the model the app was started with: a bundled model's name when it is one
    (also after a fallback to the bundled default), else what ``--model`` named, else its description."""
    if segmenter.source == BUNDLED_LABEL:
        return DEFAULT_MODEL_NAME
    name = segmenter.source.removeprefix("bundled ")
    if segmenter.source.startswith("bundled ") and name in brainseg.bundled_models():
        return name
    return requested or segmenter.description


def bundled_label(name: str, folder: Path) -> str:
    """The selector's label of a bundled model: its name and whether it is the U-Net or a Transformer."""
    try:
        config = ModelConfig.load(folder)
        arch, calibrated = config.arch, calibration_line(config) is not None
    except (OSError, ValueError, TypeError):
        arch, calibrated = "?", False
    kind = "U-Net" if arch == UNET else f"Transformer ({arch})"
    return (f"{name}: bundled {kind}" + (", calibrated" if calibrated else "")
            + (", default" if name == DEFAULT_MODEL_NAME else ""))


def shipped_models() -> dict[str, Path]:
    """The bundled models whose folders are here: all in a checkout, the one it serves in a Space export."""
    return {name: folder for name, folder in brainseg.bundled_models().items() if (folder / "config.json").is_file()}


@dataclass
class ModelRegistry:
    """The models the app can serve, by choice name: the bundled ones plus the one it was started with. Each is
    loaded on first use and kept; one lock, so concurrent sessions never load the same model twice."""

    started: str  # the choice the app was started with (the selector's default)
    sources: dict[str, str]  # choice -> what Segmenter.from_pretrained takes
    labels: dict[str, str]  # choice -> the selector's label
    bf16: bool = False
    backend: str = DEFAULT_BACKEND
    started_note: str = ""  # load_segmenter's note about the started model (shown with it only)
    _loaded: dict[str, Segmenter] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def around(cls, segmenter: Segmenter, requested: str | None = None, backend: str = DEFAULT_BACKEND,
               note: str = "") -> ModelRegistry:
        """The bundled models plus ``segmenter`` (already loaded; ``requested``: the ``--model`` that gave it)."""
        bundled = shipped_models()
        sources = {name: name for name in bundled}
        labels = {name: bundled_label(name, folder) for name, folder in bundled.items()}
        started = started_choice(segmenter, requested)
        if started not in sources:
            sources[started] = started
            labels[started] = f"{started}: --model"
        registry = cls(started, sources, labels, segmenter.bf16, backend, note)
        registry._loaded[started] = segmenter
        return registry

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) pairs for a ``gr.Dropdown``."""
        return [(self.labels[name], name) for name in self.sources]

    def get(self, name: str | None = None) -> Segmenter:
        """The model ``name`` (None: the started one), loaded now if it is the first time."""
        name = name or self.started
        if name not in self.sources:
            raise gr.Error(f"Unknown model {name!r}: choose one of {', '.join(self.sources)}.")
        with self._lock:
            if name not in self._loaded:
                try:
                    self._loaded[name] = Segmenter.from_pretrained(self.sources[name], bf16=self.bf16,
                                                                   backend=self.backend)
                except (ModelLoadError, BackendError) as exc:
                    raise gr.Error(f"Could not load the model {name}: {exc}") from None
            return self._loaded[name]

    def description(self, name: str | None = None) -> str:
        """The model line of ``name`` for the page."""
        name = name or self.started
        return model_description(self.get(name), self.started_note if name == self.started else "")


METRIC_COLUMNS = (("slice_dice", "slice Dice"), ("volume_dice", "volume Dice"),
                  ("tumor_slice_dice", "tumor-slice Dice"), ("empty_fp_rate", "empty-slice FP"))


EXTERNAL_COLUMN = "other hospitals: 3D Dice, all sequences / FLAIR only"


def external_cell(metrics: dict) -> str:
    """A model's mean 3D Dice on the external scans it was measured on (``brainseg.cli.evaluate --external``)."""
    means = (metrics.get("external") or {}).get("mean_dice") or {}
    if not all(isinstance(means.get(key), (int, float)) for key in ("all channels", "flair only")):
        return "not measured"
    return f"{means['all channels']:.3f} / {means['flair only']:.3f}"


def read_metrics(folder: Path) -> dict:
    """A model folder's ``metrics.json``; empty when it has none or it cannot be read."""
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def bundled_metrics_table(folders: Mapping[str, Path]) -> str:
    """A Markdown table of each bundled model's held-out numbers and its external 3D Dice (its folder's
    ``metrics.json``), for choosing a model."""
    rows = [f"| model | {' | '.join(title for _, title in METRIC_COLUMNS)} | {EXTERNAL_COLUMN} |",
            "|---" * (len(METRIC_COLUMNS) + 2) + "|"]
    recorded = {name: read_metrics(Path(folder)) for name, folder in folders.items()}
    for name, metrics in recorded.items():
        cells = [f"{metrics[key]:.3f}" if isinstance(metrics.get(key), (int, float)) else "not measured"
                 for key, _ in METRIC_COLUMNS]
        rows.append(f"| `{name}` | {' | '.join(cells)} | {external_cell(metrics)} |")
    patients = {metrics.get("n_patients") for metrics in recorded.values() if metrics}
    held_out = f"{patients.pop()} held-out patients" if len(patients) == 1 else "held-out patients"
    return (f"**Bundled models on the {held_out}** (`brainseg evaluate`), and their mean 3D Dice on "
            "skull-stripped scans from other hospitals (`--external`: measured there, never trained or tuned "
            "on them):\n\n" + "\n".join(rows))


@dataclass(frozen=True)
class SliceHandlers:
    """The handlers of one demo: the model runs when the slice or its preprocessing changes, a threshold
    move only redraws from the stored probability map, with the post-processing of the model that made it."""

    models: ModelRegistry
    cache_dir: str  # Gradio's cache: PNGs are encoded straight into it, so Gradio only serves the files
    thresholds: tuple[float, ...] = slider_steps()  # what the browser can redraw by itself

    def png(self, array: np.ndarray | None, name: str) -> str | None:
        return None if array is None else save_png(array, self.cache_dir, name)

    def new_state(self, image: np.ndarray, proba: np.ndarray, normalize: bool, truth: np.ndarray | None,
                  notes: tuple[str, ...] = (), model: str | None = None) -> SliceState:
        """The session state for a slice; the ground-truth view is drawn here, once."""
        for note in notes:  # a visible toast; also in the numbers and the summary
            gr.Warning(note)
        view = None if truth is None else self.png(truth_overlay(gray_slice(image), truth), "ground_truth")
        return SliceState(image, proba, normalize, truth, view, notes, model or self.models.started)

    def live_outputs(self, state: SliceState, threshold: float) -> LiveOutputs:
        """The threshold-dependent outputs (no model run)."""
        segmenter = self.models.get(state.model)
        views = render_views(gray_slice(state.image), segmenter.to_mask(state.proba, threshold), state.truth)
        overlay = self.png(views.overlay, "prediction")
        return LiveOutputs(
            mask=self.png(views.mask, "prediction_mask"),
            stats=slice_numbers(views.summary, state.image, state.proba, threshold, state.normalize, state.notes),
            overlay=overlay,
            agreement=self.png(views.agreement, "agreement"),
            compare=None if state.truth_view is None else (state.truth_view, overlay),
            summary=views.summary.markdown() + "".join(f"\n\n**Note:** {note}" for note in state.notes),
        )

    def slice_outputs(self, state: SliceState, threshold: float) -> SliceOutputs:
        heatmap = self.png(probability_heatmap(state.proba, state.image), "probability")
        return SliceOutputs.of(self.live_outputs(state, threshold), heatmap, state.truth_view, state)

    def segment(self, image_file: str | None, threshold: float, normalize: bool,
                truth_file: str | None, model: str | None = None) -> SliceOutputs:
        """Segment one slice with ``model`` (a selector choice; None: the model the app was started with);
        returns the binary mask (white = abnormality), the numbers and the views."""
        if not image_file:
            raise gr.Error("Upload a slice first (TIFF, PNG or JPEG).")
        try:
            image = decode_image(image_file)
            truth, truth_notes = read_truth(truth_file, image)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        model = model or self.models.started
        proba = self.models.get(model).predict_proba(image, normalize=bool(normalize))
        state = self.new_state(image, proba, bool(normalize), truth, (*slice_notes(image), *truth_notes), model)
        return self.slice_outputs(state, threshold)

    def choose_model(self, model: str | None) -> tuple[Any, Any, Any]:
        """Another model was chosen: load it (once) and set its model line, its tuned threshold and the
        normalization it was trained with; ``resegment`` then re-runs the current slice."""
        segmenter = self.models.get(model)
        cfg = segmenter.config
        return (self.models.description(model), gr.Slider(value=cfg.threshold, info=threshold_info(cfg.threshold)),
                gr.Checkbox(value=cfg.normalize, info=normalize_info(cfg.normalize)))

    def resegment(self, state: SliceState | None, threshold: float, normalize: bool,
                  model: str | None) -> SliceOutputs:
        """Re-run the current slice (its ground truth kept) with ``model``; nothing to do before a first slice."""
        if state is None:
            return unchanged(SliceOutputs)
        model = model or self.models.started
        proba = self.models.get(model).predict_proba(state.image, normalize=bool(normalize))
        return self.slice_outputs(self.new_state(state.image, proba, bool(normalize), state.truth, state.notes,
                                                 model), threshold)

    def segment_new_upload(self, image_file: str | None, threshold: float, normalize: bool,
                           model: str | None = None) -> tuple[Any, ...]:
        """A new slice: segment it and empty the ground-truth file (it belonged to the previous slice)."""
        return (*self.segment(image_file, threshold, normalize, None, model), None)

    def segment_example(self, image_file: str, truth_file: str | None, model: str | None = None) -> tuple[Any, ...]:
        """An example was clicked: segment it with ``model`` at that model's tuned threshold and normalization,
        and set the slider and checkbox to them."""
        cfg = self.models.get(model).config
        return (*self.segment(image_file, cfg.threshold, cfg.normalize, truth_file, model), cfg.threshold,
                cfg.normalize)

    def change_truth(self, state: SliceState | None, truth_file: str | None, threshold: float) -> SliceOutputs:
        """A ground-truth mask was uploaded or removed: redraw without running the model."""
        if state is None:
            return unchanged(SliceOutputs)
        try:
            truth, truth_notes = read_truth(truth_file, state.image)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        notes = (*slice_notes(state.image), *truth_notes)
        return self.slice_outputs(self.new_state(state.image, state.proba, state.normalize, truth, notes, state.model),
                                  threshold)

    def rethreshold(self, state: SliceState | None, threshold: float) -> LiveOutputs:
        """Redraw for a new threshold from the stored probability map (no model run)."""
        if state is None:
            return unchanged(LiveOutputs)
        return self.live_outputs(state, threshold)

    def live_view(self, state: SliceState | None) -> dict[str, Any] | None:
        """What the browser needs to redraw the prediction itself at every slider step (``assets/app/threshold.js``):
        the slice and, per pixel, how many of the steps its probability reaches (PNG data URLs), with the
        post-processing and the colours of ``overlay.fill_and_contour``. None empties the live view."""
        if state is None:
            return None
        height, width = state.proba.shape
        return {
            "width": width,
            "height": height,
            "image": png_data_url(gray_slice(state.image)),
            "levels": png_data_url(threshold_levels(state.proba, self.thresholds)),
            "thresholds": list(self.thresholds),
            "min_component_px": self.models.get(state.model).config.min_component_px,
            "colour": list(PREDICTION_COLOUR),
            "tint": tint_table(PREDICTION_COLOUR, FILL_ALPHA).tolist(),
            "contour": contour_offsets(contour_thickness(state.image.shape)),
        }


@dataclass(frozen=True)
class DatasetBrowser:
    """The handlers of the patient browser over a Kaggle-layout folder."""

    index: DatasetIndex

    def choose_patient(self, name: str | None) -> Any:
        """The slice slider for patient ``name``, set to the slice with the largest tumor."""
        if not name:
            return gr.skip()
        patient = self.index.patient(name)
        count = len(patient.slices)
        return gr.Slider(minimum=1, maximum=max(count, 2), value=largest_tumor_position(patient) + 1, step=1,
                         label=f"Slice (1-{count})")

    def pick_slice(self, name: str | None, position: float) -> PickedSlice:
        """The slice file at ``position``, its ground truth (if any) and a caption."""
        if not name:
            return unchanged(PickedSlice)
        record = self.index.slice(name, int(position))
        has_mask = "with its ground truth" if record.mask_path else "no ground-truth file"
        return PickedSlice(image_file=str(record.image_path),
                           truth_file=str(record.mask_path) if record.mask_path else None,
                           caption=f"`{record.image_path.name}` ({has_mask})")


# ------------------------------------------------------------------------------------------------ volume tab
VOLUME_FILE_TYPES = [".nii", ".gz", ".zip"]
VOLUME_START_TEXT = ("Upload a FLAIR volume (NIfTI `.nii` / `.nii.gz`, or a `.zip` of one DICOM series), optionally "
                     "T1 and post-contrast T1 on the same grid, then press **Segment volume**. The default model "
                     f"(**{DEFAULT_MODEL_NAME}**, one network) was trained for whole-head and skull-stripped scans, "
                     "FLAIR only or with T1/T1c, from this and other hospitals.")


class SliceView(NamedTuple):
    """What moving the point (a scrubber, a click on a plane) or a threshold drag redraws: the three planes
    through the point, the axial slice's probability map and the caption."""

    position: Any  # the axial scrubber (1-based presented slice, inferior -> superior)
    overlay: Any  # the axial plane: grayscale, prediction red, ground truth blue, band amber, cross-hair green
    probability: Any  # the axial slice's probability map
    caption: Any  # Markdown: the point, its slice's tumor area and Dice
    coronal_position: Any  # 1-based presented row (anterior -> posterior)
    sagittal_position: Any  # 1-based presented column (patient's right -> left)
    coronal: Any
    sagittal: Any


class VolumeOutputs(NamedTuple):
    """Everything the Volume tab shows. The field order is the order of the ``/segment_volume`` outputs
    (``state`` is the session's, not part of the API); the fields after it were appended later."""

    mask_file: Any  # NIfTI mask, uint8 0/1, the input's shape and affine
    numbers: Any  # JSON: volume_ml, slices_with_tumor, ... and with ground truth dice, per_slice_dice
    gif_file: Any  # animated GIF of the overlays, inferior -> superior
    area_plot: Any  # tumor area per slice (matplotlib)
    position: Any  # the axial scrubber (1-based presented slice)
    overlay: Any  # the axial plane
    probability: Any
    caption: Any
    summary: Any  # Markdown
    state: Any  # VolumeSession
    card: Any  # Markdown: the result card (volume and its range, side, extent, Dice / HD95, model, scan check)
    coronal_position: Any
    sagittal_position: Any
    coronal: Any
    sagittal: Any
    mesh: Any  # .glb: tumor surface (red), ground truth (blue), translucent head
    report_pdf: Any  # the report: card, three-plane montage, area plot
    report_json: Any  # the card and the numbers

    @classmethod
    def unchanged(cls) -> VolumeOutputs:
        return cls(*(gr.skip() for _ in cls._fields))

    def view(self) -> SliceView:
        return SliceView(*(getattr(self, name) for name in SliceView._fields))

    def files(self) -> VolumeFiles:
        return VolumeFiles(*(getattr(self, name) for name in VolumeFiles._fields))


class VolumeFiles(NamedTuple):
    """The slow part of a redraw, written in a step chained after the card and the planes: the downloads and
    the 3D view."""

    mask_file: Any
    gif_file: Any
    mesh: Any
    report_pdf: Any
    report_json: Any

    @classmethod
    def cleared(cls) -> VolumeFiles:
        """Nothing to download while the files of a new threshold are written (no stale file stays)."""
        return cls(*(None for _ in cls._fields))


def _safe_stem(name: str) -> str:
    """A file-name stem from a volume's name (``Flair.nii.gz`` -> ``Flair``)."""
    return re.sub(r"[^\w.-]+", "_", subject_name(name)).strip("._") or "volume"


UPLOAD_FOLDER = re.compile(r"(?:/[^\s/'\"]+)*/gradio/[0-9a-f]{16,}/")


def user_message(exc: Exception, *files: str | None) -> str:
    """An error's message naming the user's files, never the server's upload folders."""
    text = str(exc)
    for file in filter(None, files):
        text = text.replace(str(Path(file).parent) + "/", "").replace(str(Path(file).parent), "the upload")
    return UPLOAD_FOLDER.sub("", text)


SKIPPED_SCRUBBERS = {name: gr.skip() for name in ("position", "coronal_position", "sagittal_position")}


def _slider(count: int, value: int, label: str) -> Any:
    return gr.Slider(minimum=1, maximum=max(count, 2), value=value + 1, step=1, interactive=True,
                     label=f"{label} (1-{count})")


@dataclass(frozen=True)
class VolumeHandlers:
    """The Volume tab's handlers: the model runs once per upload (``segment_volume``); the planes, the threshold,
    a ground truth, the 3D view and the report only redraw from the stored probabilities."""

    models: ModelRegistry
    cache_dir: str  # Gradio's cache: files are written straight into it

    def png(self, array: np.ndarray, name: str) -> str:
        return save_png(array, self.cache_dir, name)

    def segment_volume(self, flair_file: str | None, t1_file: str | None, t1ce_file: str | None, threshold: float,
                       truth_file: str | None = None, model: str | None = None,
                       progress: gr.Progress = gr.Progress()) -> VolumeOutputs:
        """Segment every axial slice of a FLAIR volume (+ optional T1 / post-contrast T1 on its grid) with ``model``
        (a selector choice; None: the model the app was started with); returns the
        NIfTI mask (input shape and affine), the numbers (``volume_ml``, ...; with a ground-truth NIfTI the 3D
        and per-slice Dice), the overlay GIF, the area plot and the views through the tumor's centre, then the
        result card, the coronal and sagittal planes, the 3D view and the report (PDF, JSON)."""
        if not flair_file:
            raise gr.Error("Upload a FLAIR volume first (NIfTI .nii / .nii.gz, or a .zip of one DICOM series).")
        started = time.perf_counter()

        def slices_done(done: int, total: int) -> None:
            progress((done, total), desc="Segmenting slices", unit="slices")

        try:
            progress(0, desc="Reading the volume")
            flair = load_volume(flair_file)
            t1 = load_volume(t1_file) if t1_file else None
            t1ce = load_volume(t1ce_file) if t1ce_file else None
            prediction = predict_volume(self.models.get(model), flair, t1, t1ce, progress=slices_done)
            del t1, t1ce
            truth = volume_export.read_truth(prediction, truth_file) if truth_file else None
        except VolumeError as exc:
            raise gr.Error(user_message(exc, flair_file, t1_file, t1ce_file, truth_file)) from None
        except MemoryError:
            raise gr.Error("This volume does not fit in the server's memory: crop or downsample it first.") from None
        if prediction.slices_run == 0:
            raise gr.Error(f"{prediction.name}: no slice holds any signal (the volume is constant): "
                           "nothing to segment. Check that this is the FLAIR image.")
        progress(1.0, desc="Writing the mask, the 3D view and the report")
        for note in prediction.notes:
            gr.Warning(note)
        session = VolumeSession.create(prediction, 0.0, truth, flair.data)
        return self.volume_outputs(session, threshold, started=started)

    def choose_model(self, model: str | None) -> tuple[Any, Any, Any]:
        """Another model was chosen: the threshold slider moves to its tuned value and the old numbers go."""
        cfg = self.models.get(model).config
        waiting = f"Re-running with **{model}** …"
        return gr.Slider(value=cfg.threshold, info=threshold_info(cfg.threshold, VOLUME_REDRAW)), waiting, waiting

    def rerun(self, state: VolumeSession | None, flair_file: str | None, t1_file: str | None, t1ce_file: str | None,
              threshold: float, truth_file: str | None, model: str | None,
              progress: gr.Progress = gr.Progress()) -> VolumeOutputs:
        """Re-run the shown volume with the newly chosen model (nothing to do before a first run)."""
        if state is None or not flair_file:
            return VolumeOutputs.unchanged()
        return self.segment_volume(flair_file, t1_file, t1ce_file, threshold, truth_file, model, progress)

    def numbers(self, state: VolumeSession, threshold: float) -> dict:
        score = volume_export.score_truth(state.prediction, state.truth, threshold)
        return volume_export.volume_numbers(state.prediction, threshold, state.seconds, score)

    def downloads(self, state: VolumeSession, threshold: float) -> tuple[Path, Path, Path]:
        """The NIfTI mask, the overlay GIF and the 3D view at ``threshold``, in a new folder of Gradio's cache;
        and the stem for the report files."""
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        stem = Path(tempfile.mkdtemp(prefix="volume-", dir=self.cache_dir)) / _safe_stem(state.prediction.name)
        mask_path = save_mask(state.prediction, f"{stem}_mask.nii.gz", threshold)[0]
        gif_path = volume_export.save_overlay_gif(state.prediction, f"{stem}_overlay.gif", threshold,
                                                  state.shown_truth)
        return Path(mask_path), Path(gif_path), stem

    def caption(self, state: VolumeSession, point: tuple[int, int, int], threshold: float) -> str:
        """The point: its slice, row and column, the input voxel, its slice's tumor area and Dice ("—" when empty)."""
        prediction, (z, r, c) = state.prediction, point
        geometry = prediction.geometry
        area = int(state.mask(threshold)[z].sum())
        text = (f"**Slice {z + 1} of {prediction.n_slices}** (index {geometry.input_slice_index(z)} along input "
                f"axis {geometry.slice_axis}) · row {r + 1} · column {c + 1} · probability "
                f"{prediction.proba[z, r, c]:.2f} · slice tumor {area:,} voxels "
                f"({area * volume_export.slice_area_mm2(prediction) / 100:.2f} cm²)")
        if state.shown_truth is not None:
            truth = state.shown_truth[z]
            both_empty = not truth.any() and not area
            dice = "—" if both_empty else f"{dice_score(state.mask(threshold)[z], truth):.3f}"
            text += f" · ground truth {int(truth.sum()):,} voxels · slice Dice {dice}"
        return text

    def slice_view(self, state: VolumeSession, point: tuple[int, int, int], threshold: float,
                   sequence: str = "FLAIR", band: bool = True) -> SliceView:
        """The three planes through ``point`` (presented z, r, c) at ``threshold`` (no model run)."""
        point = state.geometry.clamp(point)
        planes = state.planes(point, threshold, sequence, band)
        z, r, c = point
        return SliceView(position=z + 1, coronal_position=r + 1, sagittal_position=c + 1,
                         overlay=self.png(planes["axial"], "volume_axial"),
                         coronal=self.png(planes["coronal"], "volume_coronal"),
                         sagittal=self.png(planes["sagittal"], "volume_sagittal"),
                         probability=self.png(volume_export.probability_frame(state.prediction, z),
                                              "volume_probability"),
                         caption=self.caption(state, point, threshold))

    def summary(self, numbers: dict) -> str:
        volume = (f"**Tumor volume: {numbers['volume_ml']:.2f} mL**" if numbers["volume_ml"] is not None
                  else f"**Tumor: {numbers['tumor_voxels']:,} voxels**")
        text = (f"{volume} ({numbers['tumor_voxels']:,} voxels) in {numbers['slices_with_tumor']} of "
                f"{numbers['n_slices']} slices at threshold {numbers['threshold']:g}  \n"
                f"{numbers['slices_run']} slices with head were run in {numbers['seconds']:.1f} s; channels "
                f"(pre-contrast, FLAIR, post-contrast inputs): {', '.join(numbers['channels'])}; intensity rule: "
                f"{numbers.get('intensity', 'percentile')}")
        if "dice" in numbers:
            text += (f"  \n**Against ground truth** ({numbers.get('truth_volume_ml') or 0:.2f} mL): "
                     f"3D Dice {numbers['dice']:.3f}")
        return text + "".join(f"\n\n**Note:** {note}" for note in numbers["notes"])

    def redraw(self, state: VolumeSession, threshold: float,
               point: tuple[int, int, int] | None = None) -> tuple[VolumeOutputs, ResultCard, dict]:
        """The card, the numbers, the area plot and the planes at ``threshold``, the files cleared (see
        :meth:`files`); the planes move to ``point`` (None: the tumor's centre, sliders reset)."""
        prediction = state.prediction
        moved = point is None
        point = state.start_point(threshold) if point is None else state.geometry.clamp(point)
        numbers, card = self.numbers(state, threshold), state.card(threshold)
        view = self.slice_view(state, point, threshold)
        if moved:
            count_z, count_r, count_c = prediction.proba.shape
            view = view._replace(position=_slider(count_z, point[0], "Axial slice, inferior → superior"),
                                 coronal_position=_slider(count_r, point[1], "Coronal, anterior → posterior"),
                                 sagittal_position=_slider(count_c, point[2], "Sagittal, right → left"))
        outputs = VolumeOutputs(
            numbers=numbers, area_plot=volume_export.area_plot(prediction, threshold, state.shown_truth, point[0]),
            summary=self.summary(numbers), state=state, card=card.markdown() + "\n\n" + flags_markdown(card.flags),
            **VolumeFiles.cleared()._asdict(), **view._asdict())
        return outputs, card, numbers

    def write_files(self, state: VolumeSession, threshold: float, card: ResultCard | None = None,
                    numbers: dict | None = None, scene: bool = True) -> VolumeFiles:
        """The NIfTI mask, the overlay GIF, the report and (``scene``) the 3D view at ``threshold`` (no model run)."""
        mask_path, gif_path, stem = self.downloads(state, threshold)
        card = state.card(threshold) if card is None else card
        numbers = self.numbers(state, threshold) if numbers is None else numbers
        pdf, json_path = state.save_report(card, numbers, threshold, stem)
        mesh = str(state.save_scene(threshold, f"{stem}_3d.glb")) if scene else gr.skip()
        return VolumeFiles(mask_file=str(mask_path), gif_file=str(gif_path), report_pdf=str(pdf),
                           report_json=str(json_path), mesh=mesh)

    def scene(self, state: VolumeSession | None, threshold: float) -> Any:
        """The first step chained after a threshold release or a new ground truth: the 3D view at ``threshold``."""
        if state is None:
            return gr.skip()
        folder = Path(tempfile.mkdtemp(prefix="volume-3d-", dir=self.cache_dir))
        return str(state.save_scene(threshold, folder / f"{_safe_stem(state.prediction.name)}_3d.glb"))

    def files(self, state: VolumeSession | None, threshold: float) -> VolumeFiles:
        """The step chained after :meth:`scene`: the downloads at ``threshold`` (the 3D view is left as it is)."""
        if state is None:
            return VolumeFiles(*(gr.skip() for _ in VolumeFiles._fields))
        return self.write_files(state, threshold, scene=False)

    def volume_outputs(self, state: VolumeSession, threshold: float, point: tuple[int, int, int] | None = None,
                       started: float | None = None) -> VolumeOutputs:
        """Every output at ``threshold``, files included (the API's answer); the planes move to ``point``
        (None: the tumor's centre). With ``started`` (a new run's :func:`time.perf_counter` start) the state
        gets the seconds from the start to the redraw (reading, the model run, the mask)."""
        if started is not None:
            state = state.with_seconds(time.perf_counter() - started)
        outputs, card, numbers = self.redraw(state, threshold, point)
        return outputs._replace(**self.write_files(state, threshold, card, numbers)._asdict())

    def move(self, state: VolumeSession | None, position: float, coronal: float, sagittal: float, threshold: float,
             sequence: str = "FLAIR", band: bool = True) -> SliceView:
        """Show the planes through the scrubbers' point, or the same point at another threshold (no model run)."""
        if state is None:
            return SliceView(*(gr.skip() for _ in SliceView._fields))
        return self.slice_view(state, (int(position) - 1, int(coronal) - 1, int(sagittal) - 1), threshold,
                               sequence, band)

    def click(self, plane: str, state: VolumeSession | None, point: tuple[float, float, float], threshold: float,
              sequence: str, band: bool, event: gr.SelectData) -> SliceView:
        """A click on ``plane`` at px (x, y): the other two planes move through that voxel."""
        if state is None or not event.index:
            return SliceView(*(gr.skip() for _ in SliceView._fields))
        x, y = event.index[:2]
        current = tuple(int(v) - 1 for v in point)
        return self.slice_view(state, state.geometry.to_voxel(plane, x, y, current), threshold, sequence, band)

    def click_axial(self, state, position, coronal, sagittal, threshold, sequence, band,
                    event: gr.SelectData) -> SliceView:
        return self.click("axial", state, (position, coronal, sagittal), threshold, sequence, band, event)

    def click_coronal(self, state, position, coronal, sagittal, threshold, sequence, band,
                      event: gr.SelectData) -> SliceView:
        return self.click("coronal", state, (position, coronal, sagittal), threshold, sequence, band, event)

    def click_sagittal(self, state, position, coronal, sagittal, threshold, sequence, band,
                       event: gr.SelectData) -> SliceView:
        return self.click("sagittal", state, (position, coronal, sagittal), threshold, sequence, band, event)

    def scrubbed_point(self, state: VolumeSession, threshold: float, position: float, coronal: float,
                       sagittal: float) -> tuple[int, int, int]:
        """The scrubbers' point (0-based); a coronal or sagittal scrubber left at 0 takes the tumor centre's."""
        centre = state.start_point(threshold)
        return (int(position) - 1, int(coronal) - 1 if coronal else centre[1],
                int(sagittal) - 1 if sagittal else centre[2])

    def rethreshold(self, state: VolumeSession | None, threshold: float, position: float = 1, coronal: float = 0,
                    sagittal: float = 0) -> VolumeOutputs:
        """``/volume_threshold``: every output at a new threshold, files included (no model run); the planes stay
        at the scrubbers' point (the axial one alone through the API: the others keep the tumor centre's)."""
        if state is None:
            return VolumeOutputs.unchanged()
        point = self.scrubbed_point(state, threshold, position, coronal, sagittal)
        return self.volume_outputs(state, threshold, point)._replace(state=gr.skip(), **SKIPPED_SCRUBBERS)

    def rethreshold_view(self, state: VolumeSession | None, threshold: float, position: float = 1,
                         coronal: float = 0, sagittal: float = 0) -> VolumeOutputs:
        """The page's threshold release: the card, the numbers, the plot and the planes at once; the files are
        cleared here and written by the chained :meth:`files`."""
        if state is None:
            return VolumeOutputs.unchanged()
        point = self.scrubbed_point(state, threshold, position, coronal, sagittal)
        return self.redraw(state, threshold, point)[0]._replace(state=gr.skip(), **SKIPPED_SCRUBBERS)

    def change_truth(self, state: VolumeSession | None, truth_file: str | None, position: float,
                     threshold: float, coronal: float = 0, sagittal: float = 0) -> VolumeOutputs:
        """A ground-truth NIfTI was uploaded or removed: score and redraw without running the model."""
        if state is None:
            return VolumeOutputs.unchanged()
        try:
            truth = volume_export.read_truth(state.prediction, truth_file) if truth_file else None
        except VolumeError as exc:
            raise gr.Error(user_message(exc, truth_file)) from None
        state = state.with_truth(truth)
        point = self.scrubbed_point(state, threshold, position, coronal, sagittal)
        return self.redraw(state, threshold, point)[0]._replace(**SKIPPED_SCRUBBERS)


# After a run the card (left) and the three planes (right) start at the top of the window, below the page's header.
SCROLL_TO_RESULT = ("() => { const card = document.querySelector('#volume-card');"
                    " if (card) window.scrollTo({top: card.getBoundingClientRect().top + window.scrollY - 8}); }")
VOLUME_PLANE = {"format": "png", "interactive": False, "height": 300, "buttons": ["fullscreen"]}


def volume_controls(cfg: ModelConfig) -> dict[str, Any]:
    """The Volume tab's left column: the result card (before a run, what to do), uploads, threshold, run and the
    downloads."""
    parts: dict[str, Any] = {}
    parts["card"] = gr.Markdown(VOLUME_START_TEXT, elem_id="volume-card")  # on top: after a run, the result
    parts["flair"] = gr.File(label="FLAIR volume (NIfTI, or .zip of a DICOM series)", file_types=VOLUME_FILE_TYPES,
                             elem_id="volume-flair", height=90)
    with gr.Accordion("More channels and ground truth (optional)", open=False):
        parts["t1"] = gr.File(label="T1 (pre-contrast), on the FLAIR's grid", file_types=VOLUME_FILE_TYPES,
                              elem_id="volume-t1")
        parts["t1ce"] = gr.File(label="T1 post-contrast, on the FLAIR's grid", file_types=VOLUME_FILE_TYPES,
                                elem_id="volume-t1ce")
        parts["truth"] = gr.File(label="Ground-truth labels NIfTI (labels > 0 = tumor)", file_types=[".nii", ".gz"],
                                 elem_id="volume-truth")
    parts["threshold"] = gr.Slider(THRESHOLD_MIN, THRESHOLD_MAX, value=cfg.threshold, step=THRESHOLD_STEP,
                                   label="Threshold", elem_id="volume-threshold",
                                   info=threshold_info(cfg.threshold, VOLUME_REDRAW))
    parts["run"] = gr.Button("Segment volume", variant="primary", elem_id="volume-run")
    with gr.Accordion("Downloads: report (PDF, JSON), mask (NIfTI), 3D view, GIF", open=True):
        with gr.Row():
            parts["report_pdf"] = gr.File(label="Report (PDF)", interactive=False, elem_id="volume-report-pdf")
            parts["report_json"] = gr.File(label="Report (JSON)", interactive=False, elem_id="volume-report-json")
        with gr.Row():
            parts["mask"] = gr.File(label="Mask (NIfTI, the input's grid)", interactive=False, elem_id="volume-mask")
            parts["gif"] = gr.File(label="Overlays, animated GIF", interactive=False, elem_id="volume-gif")
    parts["summary"] = gr.Markdown("", elem_id="volume-summary")
    return parts


def volume_views() -> dict[str, Any]:
    """The Volume tab's right column (hidden until a run): three linked planes with their scrubbers, the caption,
    the 3D view, the probability map, the area plot and the numbers."""
    parts: dict[str, Any] = {}
    with gr.Row():
        parts["sequence"] = gr.Radio(list(SEQUENCES), value="FLAIR", label="Base image (grayscale)", scale=2,
                                     elem_id="volume-sequence")
        parts["band"] = gr.Checkbox(value=True, label="Uncertainty band (amber: probability 0.3–0.7)", scale=1,
                                    elem_id="volume-band")
    with gr.Row(equal_height=True):
        for name, label in (("overlay", "Axial"), ("coronal", "Coronal"), ("sagittal", "Sagittal")):
            parts[name] = gr.Image(label=f"{label} · click to move the other planes",
                                   elem_id="volume-overlay" if name == "overlay" else f"volume-{name}", **VOLUME_PLANE)
    with gr.Row():
        parts["position"] = gr.Slider(1, 2, value=1, step=1, label="Axial slice", elem_id="volume-position")
        parts["coronal_position"] = gr.Slider(1, 2, value=1, step=1, label="Coronal", elem_id="volume-coronal-position")
        parts["sagittal_position"] = gr.Slider(1, 2, value=1, step=1, label="Sagittal",
                                               elem_id="volume-sagittal-position")
    parts["caption"] = gr.Markdown("", elem_id="volume-caption")
    with gr.Row():
        parts["mesh"] = gr.Model3D(label="3D: tumor (red), ground truth (blue), head", height=320,
                                   clear_color=(0.1, 0.1, 0.12, 1.0), elem_id="volume-3d")
        parts["probability"] = gr.Image(label="Probability, axial (black 0 → yellow 1)",
                                        elem_id="volume-probability", **VOLUME_PLANE)
    parts["area_plot"] = gr.Plot(label="Tumor area per slice", format="png", elem_id="volume-plot")
    with gr.Accordion("Numbers (JSON)", open=False):
        parts["numbers"] = gr.JSON(label="Numbers", elem_id="volume-numbers")
    return parts


def build_volume_tab(models: ModelRegistry, cache_dir: str, model_choice: gr.Dropdown) -> VolumeHandlers:
    """The Volume tab's components and events (call inside a ``gr.Blocks``). ``/segment_volume`` queues in its
    own concurrency group, one volume at a time, so single-slice requests never wait behind volumes. A run uses
    the model chosen in ``model_choice``; choosing another re-runs the shown volume."""
    handlers = VolumeHandlers(models, cache_dir)
    state = gr.State(None, time_to_live=STATE_TTL_S)
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            left = volume_controls(models.get().config)
        with gr.Column(scale=3, visible=False, elem_id="volume-views") as views_column:
            right = volume_views()
    outputs = VolumeOutputs(mask_file=left["mask"], numbers=right["numbers"], gif_file=left["gif"],
                            area_plot=right["area_plot"], summary=left["summary"], state=state, card=left["card"],
                            report_pdf=left["report_pdf"], report_json=left["report_json"],
                            **{name: right[name] for name in ("position", "overlay", "probability", "caption",
                                                             "coronal_position", "sagittal_position", "coronal",
                                                             "sagittal", "mesh")})
    threshold, truth_file, flair_file = left["threshold"], left["truth"], left["flair"]
    point = [outputs.position, outputs.coronal_position, outputs.sagittal_position]
    view_inputs = [state, *point, threshold, right["sequence"], right["band"]]
    show = {"fn": lambda: gr.Column(visible=True), "outputs": views_column, "api_visibility": "private"}
    left["run"].click(
        handlers.segment_volume, [flair_file, left["t1"], left["t1ce"], threshold, truth_file, model_choice],
        list(outputs), api_name="segment_volume", concurrency_id="volume", concurrency_limit=1,
        show_progress_on=[left["card"]],
        api_description="Segment a whole FLAIR volume (NIfTI file or .zip of a DICOM series; optional T1 and "
                        "post-contrast T1 on the same grid, optional ground-truth labels NIfTI). Returns the "
                        "NIfTI mask (input shape and affine), the numbers (volume_ml, slices_with_tumor, ...; "
                        "dice and per_slice_dice with ground truth), the overlay GIF, the area plot, the "
                        "axial slice shown, its plane and probability map, caption and summary; then (appended) the "
                        "result card, the coronal and sagittal scrubbers and planes, the 3D view (.glb) and the "
                        "report (PDF, JSON). The optional last input names the model (default: the one the app "
                        "was started with).").success(**show).then(None, js=SCROLL_TO_RESULT)
    redraw = {"api_visibility": "private", "show_progress": "hidden", "trigger_mode": "always_last"}
    gr.on([*(slider.input for slider in point), threshold.input, right["sequence"].input, right["band"].input],
          handlers.move, view_inputs, list(outputs.view()), **redraw)
    for plane, image in (("axial", outputs.overlay), ("coronal", outputs.coronal), ("sagittal", outputs.sagittal)):
        image.select(getattr(handlers, f"click_{plane}"), view_inputs, list(outputs.view()), **redraw)
    chained = {"inputs": [state, threshold], "api_visibility": "private", "show_progress": "hidden"}
    threshold.release(handlers.rethreshold_view, [state, threshold, *point], list(outputs),
                      api_visibility="private", trigger_mode="always_last", show_progress="hidden").then(
        handlers.scene, outputs=outputs.mesh, **chained).then(handlers.files, outputs=list(outputs.files()), **chained)
    gr.Button(visible=False, elem_id="volume-threshold-api").click(
        handlers.rethreshold, [state, threshold, *point], list(outputs), api_name="volume_threshold",
        api_description="Redraw this session's last volume at a new threshold (no model run): the same outputs as "
                        "/segment_volume.")
    gr.on([truth_file.upload, truth_file.clear], handlers.change_truth, [state, truth_file, *point[:1], threshold,
                                                                        *point[1:]],
          list(outputs), api_visibility="private", show_progress="minimal").then(
        handlers.scene, outputs=outputs.mesh, **chained).then(handlers.files, outputs=list(outputs.files()), **chained)
    model_choice.input(handlers.choose_model, model_choice, [threshold, left["card"], left["summary"]],
                       api_visibility="private").then(
        handlers.rerun, [state, flair_file, left["t1"], left["t1ce"], threshold, truth_file, model_choice],
        list(outputs), api_visibility="private", concurrency_id="volume", concurrency_limit=1,
        show_progress_on=[left["card"]])
    return handlers


def load_segmenter(model: str | None = None, precision: str = DEFAULT_PRECISION,
                   backend: str = DEFAULT_BACKEND) -> tuple[Segmenter, str]:
    """The one place the app gets its model: a local folder or Hub repo id ``ORG/NAME[@REVISION]``
    (``--model``, else ``BRAINSEG_MODEL``), else the bundled default, run by ``backend`` (auto, onnx, torch).
    Returns the model and a note for the UI (which revision was pinned, or why it fell back to the bundled model)."""
    return brainseg.load_segmenter(model, bf16=precision == "bf16", backend=backend)


def model_description(segmenter: Segmenter, note: str = "") -> str:
    """One model line; ``note`` (from :func:`load_segmenter`) is added only when it says more than that line,
    e.g. why the bundled model replaced the one asked for."""
    cfg = segmenter.config
    trained = "per-image normalization, Normalize(mean, 2·std)" if cfg.normalize else "raw [0, 1] input"
    precision = "bf16" if segmenter.bf16 else "fp32"
    repeats_model_line = note.strip() in ("", f"Model: {segmenter.description}")
    return (
        f"**Model:** `{segmenter.description}` · trained with **{trained}** · tuned threshold {cfg.threshold:g}"
        f" · min. component {cfg.min_component_px} px · {precision} on {segmenter.device.type}"
        f" · {segmenter.backend_reason}"
        + ("" if calibration_line(cfg) is None else f"\n\n{calibration_line(cfg)}")
        + ("" if repeats_model_line else f"\n\n{note}")
    )


def build_demo(segmenter: Segmenter, data_dir: str | Path | None = None, model_note: str = "",
               models: ModelRegistry | None = None) -> gr.Blocks:
    """The demo's UI serving ``segmenter`` first; ``data_dir`` (a Kaggle-layout folder) adds the patient browser
    and examples. ``models`` (default: the bundled models around ``segmenter``) fills the model selector."""
    models = models or ModelRegistry.around(segmenter, note=model_note)
    cfg = segmenter.config
    index = DatasetIndex(data_dir) if data_dir else None
    demo = gr.Blocks(title="brainseg: FLAIR abnormality segmentation", analytics_enabled=False,
                     delete_cache=(3600, 3600))
    handlers = SliceHandlers(models, demo.GRADIO_CACHE)

    with demo:
        gr.Markdown(
            "# brainseg: FLAIR abnormality (lower-grade glioma) on brain-MRI slices and volumes\n"
            "Upload a 3-channel slice from the Kaggle LGG set (pre-contrast, FLAIR, post-contrast) or a "
            "single-channel FLAIR slice (replicated to 3 channels); any size, 8- or 16-bit. "
            "Add its ground-truth mask to see Dice and IoU. The **Volume** tab takes a whole scan "
            "(NIfTI or DICOM series) and gives the tumor volume in mL and a 3D mask."
        )
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Row():
            model_choice = gr.Dropdown(models.choices(), value=models.started, label="Model", scale=1,
                                       elem_id="model-choice", info="Switching re-runs the current slice and volume "
                                       "with that model, at its own tuned threshold.")
            model_info = gr.Markdown(model_description(segmenter, model_note), elem_id="model-info")
        with gr.Accordion("Held-out numbers of the bundled models", open=False):
            gr.Markdown(bundled_metrics_table(shipped_models()), elem_id="model-metrics")
        with gr.Tabs():
            with gr.Tab("Slice", id="slice-tab"):
                state = gr.State(None, time_to_live=STATE_TTL_S)
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        image_file = gr.File(label="Slice (TIFF / PNG / JPEG)",
                                             file_types=["image", ".tif", ".tiff"], elem_id="slice-file")
                        truth_file = gr.File(label="Ground-truth mask (optional, upload after the slice)",
                                             file_types=["image", ".tif", ".tiff"], elem_id="truth-file")
                        threshold = gr.Slider(THRESHOLD_MIN, THRESHOLD_MAX, value=cfg.threshold,
                                              step=THRESHOLD_STEP, label="Threshold", elem_id="threshold",
                                              info=threshold_info(cfg.threshold))
                        live_view = gr.HTML(None, html_template=LIVE_TEMPLATE, js_on_load=LIVE_JS.read_text(),
                                            elem_id="live-threshold", overlay_id="overlay", slider_id="threshold")
                        normalize = gr.Checkbox(
                            value=cfg.normalize, label="Per-image normalization, Normalize(mean, 2·std)",
                            info=normalize_info(cfg.normalize), elem_id="normalize")
                        run = gr.Button("Segment", variant="primary")
                        summary = gr.Markdown(START_TEXT, elem_id="summary")
                        with gr.Accordion("Dataset browser", open=index is not None):
                            if index is None:
                                gr.Markdown(NO_DATA_HINT, elem_id="no-data-hint")
                            else:
                                patient = gr.Dropdown(index.names, value=None, label="Patient", elem_id="patient")
                                position = gr.Slider(1, 2, value=1, step=1, label="Slice", elem_id="slice-position")
                                caption = gr.Markdown(f"{len(index.names)} patients in `{index.root}`.")
                    with gr.Column(scale=2):
                        shown = {"format": "png", "interactive": False, "height": IMAGE_HEIGHT}
                        with gr.Row():
                            overlay_img = gr.Image(label="Prediction (red)", elem_id="overlay", **shown)
                            heat_img = gr.Image(label="Probability (black 0 → yellow 1)", elem_id="heatmap",
                                                **shown)
                        with gr.Row():
                            truth_img = gr.Image(label="Ground truth (blue)", elem_id="truth", **shown)
                            agreement_img = gr.Image(label="Agreement: TP yellow · FP orange · FN blue",
                                                     elem_id="agreement", **shown)
                        with gr.Row():
                            compare = gr.ImageSlider(label="Ground truth ↔ prediction", format="png",
                                                     interactive=False, max_height=IMAGE_HEIGHT, elem_id="compare")
                            mask_img = gr.Image(label="Binary mask (white = abnormality), PNG", buttons=["download"],
                                                elem_id="mask", **shown)
                        with gr.Accordion("Numbers (JSON)", open=False):
                            stats = gr.JSON(label="Numbers", elem_id="stats")

                outputs = SliceOutputs(mask=mask_img, stats=stats, overlay=overlay_img, heatmap=heat_img,
                                       truth=truth_img, agreement=agreement_img, compare=compare, summary=summary,
                                       state=state)
                model_run = {"concurrency_id": "model", "concurrency_limit": 1}
                segment_inputs = [image_file, threshold, normalize, truth_file, model_choice]

                run.click(handlers.segment, segment_inputs, list(outputs), api_name="segment", **model_run,
                          api_description="Segment a slice. Returns the binary mask PNG (input size, white = "
                                          "abnormality), the numbers (area; Dice and IoU with ground truth), the "
                                          "overlay, heat map, ground-truth view, agreement map, slider pair, summary. "
                                          "The optional last input names the model (default: the one the app was "
                                          "started with).")
                model_choice.input(handlers.choose_model, model_choice, [model_info, threshold, normalize],
                                   api_visibility="private", **model_run).then(
                    handlers.resegment, [state, threshold, normalize, model_choice], list(outputs),
                    api_visibility="private", **model_run)
                image_file.upload(handlers.segment_new_upload, [image_file, threshold, normalize, model_choice],
                                  [*outputs, truth_file], api_visibility="private", **model_run)
                image_file.clear(clear_all, None, [*outputs, truth_file], api_visibility="private")
                normalize.input(handlers.segment, segment_inputs, list(outputs), api_visibility="private",
                                **model_run)
                gr.on([truth_file.upload, truth_file.clear], handlers.change_truth, [state, truth_file, threshold],
                      list(outputs), api_visibility="private")
                # Dragging redraws in the browser from the live view's data (sent once per new state); the server
                # redraws (mask PNG, numbers, agreement, slider pair) on release, or on key up for the arrow keys.
                state.change(handlers.live_view, state, live_view, api_visibility="private", show_progress="hidden")
                threshold.input(None, threshold, None, js=ON_SLIDER_INPUT, api_visibility="private",
                                show_progress="hidden")
                gr.on([threshold.release, live_view.submit], handlers.rethreshold, [state, threshold],
                      list(outputs.live()), api_name="threshold", trigger_mode="always_last", show_progress="hidden",
                      api_description="Redraw the last segmented slice of this session at a new threshold "
                                      "(no model run).")

                if index is not None:
                    browser = DatasetBrowser(index)
                    picked = list(PickedSlice(image_file=image_file, truth_file=truth_file, caption=caption))
                    then_segment = dict(fn=handlers.segment, inputs=segment_inputs, outputs=list(outputs),
                                        api_visibility="private", **model_run)
                    patient.change(browser.choose_patient, patient, position, api_visibility="private").then(
                        browser.pick_slice, [patient, position], picked, api_visibility="private"
                    ).then(**then_segment)
                    position.release(browser.pick_slice, [patient, position], picked,
                                     api_visibility="private").then(**then_segment)
                    examples = curated_examples(index.patients)
                    if examples:
                        gallery = gr.Examples(
                            examples=[[str(e.record.image_path),
                                       str(e.record.mask_path) if e.record.mask_path else None] for e in examples],
                            inputs=[image_file, truth_file],
                            cache_examples=False,
                            example_labels=[e.label for e in examples],
                            label="Examples from the dataset folder (with and without tumor)",
                            api_visibility="private",
                        )
                        # run with the model chosen at click time, at its tuned threshold and normalization
                        gallery.load_input_event.then(handlers.segment_example, [image_file, truth_file, model_choice],
                                                      [*outputs, threshold, normalize], api_visibility="private",
                                                      **model_run)
            with gr.Tab("Volume", id="volume-tab"):
                build_volume_tab(models, demo.GRADIO_CACHE, model_choice)
    return demo


def started_model_arg(arg: str | None, folder: Path = Path(__file__).resolve().parent) -> str | None:
    """``--model``; else None when ``$BRAINSEG_MODEL`` is set (load_segmenter reads it); else the model a Space
    export names in ``space_config.json`` (``brainseg space``); else None: the bundled default."""
    if arg or model_arg_from_env():
        return arg
    return SpaceConfig.load(folder).model


def resolve_data_dir(arg: str | None) -> str | None:
    """``--data-dir``, else ``$BRAINSEG_DATA_DIR``, else None (uploads only)."""
    return arg or os.environ.get(DATA_DIR_ENV) or None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="brainseg Gradio demo")
    parser.add_argument("--host", default=None, help="address to bind (default 127.0.0.1 or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860 or $GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--model", default=None, help="model folder or Hub repo id ORG/NAME[@REVISION] "
                        "(default: $BRAINSEG_MODEL, else the bundled model in assets/model)")
    parser.add_argument("--data-dir", default=None,
                        help=f"Kaggle-layout folder for the patient browser and examples (or ${DATA_DIR_ENV})")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=DEFAULT_PRECISION,
                        help=f"CPU inference precision (default {DEFAULT_PRECISION})")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="what runs the network: onnx = ONNX Runtime (CPU, fp32), torch = PyTorch, auto = ONNX "
                        "Runtime when installed and equal to PyTorch within 1e-4, else PyTorch "
                        f"(default {DEFAULT_BACKEND})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    try:
        model_arg = started_model_arg(args.model)
        segmenter, note = load_segmenter(model_arg, args.precision, args.backend)
        models = ModelRegistry.around(segmenter, model_arg or model_arg_from_env(), args.backend, note)
        demo = build_demo(segmenter, data_dir, note, models)
    except (FileNotFoundError, ValueError, BackendError) as exc:  # a bad --model, --data-dir or --backend
        raise SystemExit(f"app.py: error: {exc}") from None
    demo.queue(default_concurrency_limit=4, max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(Path(data_dir).resolve())] if data_dir else None,
        css=CSS,
    )


if __name__ == "__main__":
    main()
