"""The slice tab's handlers and outputs: the model runs when the slice or its preprocessing changes, a threshold
move only redraws from the stored probability map; and the patient browser over a Kaggle-layout folder."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, NamedTuple

import gradio as gr
import numpy as np

from brainseg.app.gallery import DatasetIndex, largest_tumor_position
from brainseg.app.models import ModelRegistry
from brainseg.app.shared import SLICE_REDRAW, normalize_info, read_upload, slider_steps, tuned_threshold, unchanged
from brainseg.io.slices import decode_image, encode_png, inspect_mask, save_png, slice_notes
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
from brainseg.views.planes import gray_slice

START_TEXT = "Upload a slice to start."


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

    ``build_slice_tab`` fills one with the output components, the handlers return one with their values.
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


def png_data_url(array: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(array)).decode("ascii")


def clear_all() -> tuple[Any, ...]:
    """The slice was removed: empty every output and the ground-truth file."""
    return (*SliceOutputs.cleared(), None)


def read_truth(truth_file: str | None, image: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
    """The ground-truth mask (checked against the slice's size) and notes about it."""
    return inspect_mask(truth_file, image.shape[:2]) if truth_file else (None, [])


@dataclass(frozen=True)
class SliceHandlers:
    """The handlers of one demo's slice tab; a redraw uses the post-processing of the model that made the map."""

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

    def run_model(self, image: np.ndarray, threshold: float, normalize: bool, truth: np.ndarray | None,
                  notes: tuple[str, ...], model: str | None) -> SliceOutputs:
        """Run ``model`` (None: the started one) on ``image`` and draw every output."""
        model = model or self.models.started
        proba = self.models.get(model).predict_proba(image, normalize=bool(normalize))
        return self.slice_outputs(self.new_state(image, proba, bool(normalize), truth, notes, model), threshold)

    def segment(self, image_file: str | None, threshold: float, normalize: bool,
                truth_file: str | None, model: str | None = None) -> SliceOutputs:
        """Segment one slice with ``model`` (a selector choice; None: the model the app was started with);
        returns the binary mask (white = abnormality), the numbers and the views."""
        if not image_file:
            raise gr.Error("Upload a slice first (TIFF, PNG or JPEG).")
        image = read_upload(decode_image, image_file, errors=ValueError)
        truth, truth_notes = read_upload(read_truth, truth_file, image, errors=ValueError)
        return self.run_model(image, threshold, normalize, truth, (*slice_notes(image), *truth_notes), model)

    def choose_model(self, model: str | None) -> tuple[Any, Any, Any]:
        """Another model was chosen: load it (once) and set its model line, its tuned threshold and the
        normalization it was trained with; ``resegment`` then re-runs the current slice."""
        cfg = self.models.get(model).config
        return (self.models.description(model), tuned_threshold(cfg, SLICE_REDRAW),
                gr.Checkbox(value=cfg.normalize, info=normalize_info(cfg.normalize)))

    def resegment(self, state: SliceState | None, threshold: float, normalize: bool,
                  model: str | None) -> SliceOutputs:
        """Re-run the current slice (its ground truth kept) with ``model``; nothing to do before a first slice."""
        if state is None:
            return unchanged(SliceOutputs)
        return self.run_model(state.image, threshold, normalize, state.truth, state.notes, model)

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
        truth, truth_notes = read_upload(read_truth, truth_file, state.image, errors=ValueError)
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
