"""The brainseg Gradio demo: upload a brain-MRI slice and see the FLAIR abnormality the U-Net finds.

    python app.py [--host 0.0.0.0] [--port 7860] [--share] [--model FOLDER] [--data-dir PATH]

Only UI wiring lives here; decoding is in ``brainseg.imaging``, the model in ``brainseg.inference``,
drawing and the numbers in ``brainseg.overlay`` and dataset browsing in ``brainseg.gallery``; the browser
redraws the overlay itself while the threshold slider moves (``assets/app/threshold.js``).
"""
from __future__ import annotations

import argparse
import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import gradio as gr
import numpy as np

import brainseg
from brainseg import Segmenter
from brainseg.gallery import DatasetIndex, curated_examples, largest_tumor_position
from brainseg.imaging import decode_image, encode_png, inspect_mask, save_png, slice_notes
from brainseg.overlay import (
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

DATA_DIR_ENV = "BRAINSEG_DATA_DIR"
# fp32: bf16 autocast does not keep the test-set masks equal to fp32 at threshold 0.5 (it flips
# a few boundary pixels in many slices; benchmarks/bf16_agreement.py, numbers in the README).
DEFAULT_PRECISION = "fp32"
DEFAULT_THRESHOLD = 0.5
THRESHOLD_MIN, THRESHOLD_MAX, THRESHOLD_STEP = 0.05, 0.95, 0.01
MAX_FILE_SIZE = "25mb"
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


@dataclass(frozen=True)
class SliceHandlers:
    """The handlers of one demo: the model runs when the slice or its preprocessing changes, a threshold
    move only redraws from the stored probability map."""

    segmenter: Segmenter
    cache_dir: str  # Gradio's cache: PNGs are encoded straight into it, so Gradio only serves the files
    thresholds: tuple[float, ...] = slider_steps()  # what the browser can redraw by itself

    def png(self, array: np.ndarray | None, name: str) -> str | None:
        return None if array is None else save_png(array, self.cache_dir, name)

    def new_state(self, image: np.ndarray, proba: np.ndarray, normalize: bool, truth: np.ndarray | None,
                  notes: tuple[str, ...] = ()) -> SliceState:
        """The session state for a slice; the ground-truth view is drawn here, once."""
        for note in notes:  # a visible toast; also in the numbers and the summary
            gr.Warning(note)
        view = None if truth is None else self.png(truth_overlay(image, truth), "ground_truth")
        return SliceState(image, proba, normalize, truth, view, notes)

    def live_outputs(self, state: SliceState, threshold: float) -> LiveOutputs:
        """The threshold-dependent outputs (no model run)."""
        views = render_views(state.image, self.segmenter.to_mask(state.proba, threshold), state.truth)
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
                truth_file: str | None) -> SliceOutputs:
        """Segment one slice; returns the binary mask (white = abnormality), the numbers and the views."""
        if not image_file:
            raise gr.Error("Upload a slice first (TIFF, PNG or JPEG).")
        try:
            image = decode_image(image_file)
            truth, truth_notes = read_truth(truth_file, image)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        proba = self.segmenter.predict_proba(image, normalize=bool(normalize))
        state = self.new_state(image, proba, bool(normalize), truth, (*slice_notes(image), *truth_notes))
        return self.slice_outputs(state, threshold)

    def segment_new_upload(self, image_file: str | None, threshold: float, normalize: bool) -> tuple[Any, ...]:
        """A new slice: segment it and empty the ground-truth file (it belonged to the previous slice)."""
        return (*self.segment(image_file, threshold, normalize, None), None)

    def segment_example(self, image_file: str, truth_file: str | None, threshold: float,
                        normalize: bool) -> SliceOutputs:
        return self.segment(image_file, threshold, normalize, truth_file)

    def change_truth(self, state: SliceState | None, truth_file: str | None, threshold: float) -> SliceOutputs:
        """A ground-truth mask was uploaded or removed: redraw without running the model."""
        if state is None:
            return unchanged(SliceOutputs)
        try:
            truth, truth_notes = read_truth(truth_file, state.image)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        notes = (*slice_notes(state.image), *truth_notes)
        return self.slice_outputs(self.new_state(state.image, state.proba, state.normalize, truth, notes), threshold)

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
            "image": png_data_url(state.image),
            "levels": png_data_url(threshold_levels(state.proba, self.thresholds)),
            "thresholds": list(self.thresholds),
            "min_component_px": self.segmenter.config.min_component_px,
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


def load_segmenter(model: str | None = None, precision: str = DEFAULT_PRECISION) -> tuple[Segmenter, str]:
    """The one place the app gets its model: a local folder or Hub repo id ``ORG/NAME[@REVISION]``
    (``--model``, else ``BRAINSEG_MODEL``), else the bundled default. Returns the model and a note
    for the UI (which revision was pinned, or why it fell back to the bundled model)."""
    return brainseg.load_segmenter(model, bf16=precision == "bf16")


def model_description(segmenter: Segmenter, note: str = "") -> str:
    cfg = segmenter.config
    trained = "per-image normalization, Normalize(mean, 2·std)" if cfg.normalize else "raw [0, 1] input"
    precision = "bf16" if segmenter.bf16 else "fp32"
    return (
        f"**Model:** `{segmenter.source}` · trained with **{trained}** · tuned threshold {cfg.threshold:g}"
        f" · min. component {cfg.min_component_px} px · {precision} on {segmenter.device.type}"
        + (f"\n\n{note}" if note else "")
    )


def build_demo(segmenter: Segmenter, data_dir: str | Path | None = None, model_note: str = "") -> gr.Blocks:
    """The demo's UI; ``data_dir`` (a Kaggle-layout folder) adds the patient browser and examples."""
    cfg = segmenter.config
    index = DatasetIndex(data_dir) if data_dir else None
    demo = gr.Blocks(title="brainseg: FLAIR abnormality segmentation", analytics_enabled=False,
                     delete_cache=(3600, 3600))
    handlers = SliceHandlers(segmenter, demo.GRADIO_CACHE)

    with demo:
        gr.Markdown(
            "# brainseg: FLAIR abnormality (lower-grade glioma) on brain-MRI slices\n"
            "Upload a 3-channel slice from the Kaggle LGG set (pre-contrast, FLAIR, post-contrast) or a "
            "single-channel FLAIR slice (replicated to 3 channels); any size, 8- or 16-bit. "
            "Add its ground-truth mask to see Dice and IoU."
        )
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        gr.Markdown(model_description(segmenter, model_note), elem_id="model-info")
        state = gr.State(None, time_to_live=STATE_TTL_S)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image_file = gr.File(label="Slice (TIFF / PNG / JPEG)", file_types=["image", ".tif", ".tiff"],
                                     elem_id="slice-file")
                truth_file = gr.File(label="Ground-truth mask (optional, upload after the slice)",
                                     file_types=["image", ".tif", ".tiff"], elem_id="truth-file")
                threshold = gr.Slider(THRESHOLD_MIN, THRESHOLD_MAX, value=DEFAULT_THRESHOLD, step=THRESHOLD_STEP,
                                      label="Threshold",
                                      info=f"Redraws in the browser while you drag, without re-running the model; "
                                           f"the model's tuned value is {cfg.threshold:g}.", elem_id="threshold")
                live_view = gr.HTML(None, html_template=LIVE_TEMPLATE, js_on_load=LIVE_JS.read_text(),
                                    elem_id="live-threshold", overlay_id="overlay", slider_id="threshold")
                normalize = gr.Checkbox(
                    value=cfg.normalize, label="Per-image normalization, Normalize(mean, 2·std)",
                    info=f"The loaded weights were trained with it {'ON' if cfg.normalize else 'OFF'}; "
                         "flipping it re-runs the model (off = raw [0, 1] input).", elem_id="normalize")
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
                    heat_img = gr.Image(label="Probability (black 0 → yellow 1)", elem_id="heatmap", **shown)
                with gr.Row():
                    truth_img = gr.Image(label="Ground truth (blue)", elem_id="truth", **shown)
                    agreement_img = gr.Image(label="Agreement: TP yellow · FP orange · FN blue",
                                             elem_id="agreement", **shown)
                with gr.Row():
                    compare = gr.ImageSlider(label="Ground truth ↔ prediction", format="png", interactive=False,
                                             max_height=IMAGE_HEIGHT, elem_id="compare")
                    mask_img = gr.Image(label="Binary mask (white = abnormality), PNG", buttons=["download"],
                                        elem_id="mask", **shown)
                with gr.Accordion("Numbers (JSON)", open=False):
                    stats = gr.JSON(label="Numbers", elem_id="stats")

        outputs = SliceOutputs(mask=mask_img, stats=stats, overlay=overlay_img, heatmap=heat_img, truth=truth_img,
                               agreement=agreement_img, compare=compare, summary=summary, state=state)
        model_run = {"concurrency_id": "model", "concurrency_limit": 1}
        segment_inputs = [image_file, threshold, normalize, truth_file]

        run.click(handlers.segment, segment_inputs, list(outputs), api_name="segment", **model_run,
                  api_description="Segment a slice. Returns the binary mask PNG (input size, white = "
                                  "abnormality), the numbers (area; Dice and IoU with ground truth), the "
                                  "overlay, heat map, ground-truth view, agreement map, slider pair, summary.")
        image_file.upload(handlers.segment_new_upload, [image_file, threshold, normalize], [*outputs, truth_file],
                          api_visibility="private", **model_run)
        image_file.clear(clear_all, None, [*outputs, truth_file], api_visibility="private")
        normalize.input(handlers.segment, segment_inputs, list(outputs), api_visibility="private", **model_run)
        gr.on([truth_file.upload, truth_file.clear], handlers.change_truth, [state, truth_file, threshold],
              list(outputs), api_visibility="private")
        # Dragging redraws in the browser from the live view's data (sent once per new state); the server redraws
        # (mask PNG, numbers, agreement, slider pair) on release, or on key up for the arrow keys.
        state.change(handlers.live_view, state, live_view, api_visibility="private", show_progress="hidden")
        threshold.input(None, threshold, None, js=ON_SLIDER_INPUT, api_visibility="private", show_progress="hidden")
        gr.on([threshold.release, live_view.submit], handlers.rethreshold, [state, threshold], list(outputs.live()),
              api_name="threshold", trigger_mode="always_last", show_progress="hidden",
              api_description="Redraw the last segmented slice of this session at a new threshold (no model run).")

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
                gr.Examples(
                    examples=[[str(e.record.image_path), str(e.record.mask_path) if e.record.mask_path else None,
                               DEFAULT_THRESHOLD, cfg.normalize] for e in examples],
                    inputs=[image_file, truth_file, threshold, normalize],
                    outputs=list(outputs),
                    fn=handlers.segment_example,
                    run_on_click=True,
                    cache_examples=False,
                    example_labels=[e.label for e in examples],
                    label="Examples from the dataset folder (with and without tumor)",
                    api_visibility="private",
                )
    return demo


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    try:
        segmenter, note = load_segmenter(args.model, args.precision)
        demo = build_demo(segmenter, data_dir, note)
    except (FileNotFoundError, ValueError) as exc:  # a bad --model or --data-dir: say why, no traceback
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
