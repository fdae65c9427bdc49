"""The slice tab's layout and events: upload a slice (and its ground truth), see the prediction, move the
threshold (redrawn in the browser while dragging, ``assets/app/threshold.js``), browse a dataset folder."""
from __future__ import annotations

from typing import Any

import gradio as gr

from brainseg.app.gallery import DatasetIndex, curated_examples
from brainseg.app.models import ModelRegistry
from brainseg.app.shared import (
    SLICE_REDRAW,
    STATE_TTL_S,
    normalize_info,
    on_model_switch,
    on_truth_change,
    threshold_slider,
)
from brainseg.app.slice_handlers import START_TEXT, DatasetBrowser, PickedSlice, SliceHandlers, SliceOutputs, clear_all
from brainseg.config import CHECKOUT_ROOT, ModelConfig

DATA_DIR_ENV = "BRAINSEG_DATA_DIR"
KAGGLE_URL = "https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation"
NO_DATA_HINT = (
    "No dataset folder given, so no patient browser or examples. Download the Kaggle "
    f"[lgg-mri-segmentation]({KAGGLE_URL}) set and start `python app.py --data-dir PATH` "
    f"(or set `{DATA_DIR_ENV}=PATH`) with PATH holding its `TCGA_*` folders (`kaggle_3m`)."
)
IMAGE_HEIGHT = 320
SLICE_FILE_TYPES = ["image", ".tif", ".tiff"]
# The browser's redraw while the threshold slider moves: the body of the live view's js_on_load.
LIVE_JS = CHECKOUT_ROOT / "assets" / "app" / "threshold.js"
LIVE_TEMPLATE = '<div class="brainseg-live"><small class="brainseg-live-readout" aria-live="polite"></small></div>'
# The slider's `input` only tells the live view (no server call); the server redraws on release.
ON_SLIDER_INPUT = '(t) => { document.dispatchEvent(new CustomEvent("brainseg-threshold", { detail: t })); }'
SEGMENT_API = ("Segment a slice. Returns the binary mask PNG (input size, white = abnormality), the numbers (area; "
               "Dice and IoU with ground truth), the overlay, heat map, ground-truth view, agreement map, slider "
               "pair, summary. The optional last input names the model (default: the one the app was started with).")
MODEL_RUN = {"concurrency_id": "model", "concurrency_limit": 1}  # one model run at a time across sessions


def slice_controls(cfg: ModelConfig) -> dict[str, Any]:
    """The left column's inputs: the slice, its ground truth, threshold (with the live view), normalization."""
    parts: dict[str, Any] = {}
    parts["image_file"] = gr.File(label="Slice (TIFF / PNG / JPEG)", file_types=SLICE_FILE_TYPES,
                                  elem_id="slice-file")
    parts["truth_file"] = gr.File(label="Ground-truth mask (optional, upload after the slice)",
                                  file_types=SLICE_FILE_TYPES, elem_id="truth-file")
    parts["threshold"] = threshold_slider(cfg.threshold, "threshold", SLICE_REDRAW)
    parts["live_view"] = gr.HTML(None, html_template=LIVE_TEMPLATE, js_on_load=LIVE_JS.read_text(),
                                 elem_id="live-threshold", overlay_id="overlay", slider_id="threshold")
    parts["normalize"] = gr.Checkbox(value=cfg.normalize, label="Per-image normalization, Normalize(mean, 2·std)",
                                     info=normalize_info(cfg.normalize), elem_id="normalize")
    parts["run"] = gr.Button("Segment", variant="primary")
    parts["summary"] = gr.Markdown(START_TEXT, elem_id="summary")
    return parts


def dataset_browser(index: DatasetIndex | None) -> dict[str, Any]:
    """The patient browser (a patient, its slice); without a dataset folder, how to get one."""
    with gr.Accordion("Dataset browser", open=index is not None):
        if index is None:
            gr.Markdown(NO_DATA_HINT, elem_id="no-data-hint")
            return {}
        return {"patient": gr.Dropdown(index.names, value=None, label="Patient", elem_id="patient"),
                "position": gr.Slider(1, 2, value=1, step=1, label="Slice", elem_id="slice-position"),
                "caption": gr.Markdown(f"{len(index.names)} patients in `{index.root}`.")}


def slice_results() -> dict[str, Any]:
    """The right column: prediction, probability, ground truth, agreement, comparison slider, mask, numbers."""
    shown = {"format": "png", "interactive": False, "height": IMAGE_HEIGHT}
    parts: dict[str, Any] = {}
    with gr.Row():
        parts["overlay"] = gr.Image(label="Prediction (red)", elem_id="overlay", **shown)
        parts["heatmap"] = gr.Image(label="Probability (black 0 → yellow 1)", elem_id="heatmap", **shown)
    with gr.Row():
        parts["truth"] = gr.Image(label="Ground truth (blue)", elem_id="truth", **shown)
        parts["agreement"] = gr.Image(label="Agreement: TP yellow · FP orange · FN blue", elem_id="agreement",
                                      **shown)
    with gr.Row():
        parts["compare"] = gr.ImageSlider(label="Ground truth ↔ prediction", format="png", interactive=False,
                                          max_height=IMAGE_HEIGHT, elem_id="compare")
        parts["mask"] = gr.Image(label="Binary mask (white = abnormality), PNG", buttons=["download"],
                                 elem_id="mask", **shown)
    with gr.Accordion("Numbers (JSON)", open=False):
        parts["stats"] = gr.JSON(label="Numbers", elem_id="stats")
    return parts


def wire_slice_events(handlers: SliceHandlers, parts: dict[str, Any], outputs: SliceOutputs,
                      model_choice: gr.Dropdown, model_info: gr.Markdown) -> None:
    """``/segment``, a model switch, uploads, normalization, ground truth and ``/threshold``."""
    image_file, truth_file, threshold, normalize = (parts[name] for name in ("image_file", "truth_file",
                                                                            "threshold", "normalize"))
    segment_inputs = [image_file, threshold, normalize, truth_file, model_choice]
    parts["run"].click(handlers.segment, segment_inputs, list(outputs), api_name="segment",
                       api_description=SEGMENT_API, **MODEL_RUN)
    on_model_switch(model_choice, handlers.choose_model, [model_info, threshold, normalize], handlers.resegment,
                    [outputs.state, threshold, normalize, model_choice], outputs, choose_options=MODEL_RUN,
                    **MODEL_RUN)
    image_file.upload(handlers.segment_new_upload, [image_file, threshold, normalize, model_choice],
                      [*outputs, truth_file], api_visibility="private", **MODEL_RUN)
    image_file.clear(clear_all, None, [*outputs, truth_file], api_visibility="private")
    normalize.input(handlers.segment, segment_inputs, list(outputs), api_visibility="private", **MODEL_RUN)
    on_truth_change(truth_file, handlers.change_truth, [outputs.state, truth_file, threshold], outputs)
    # Dragging redraws in the browser from the live view's data (sent once per new state); the server
    # redraws (mask PNG, numbers, agreement, slider pair) on release, or on key up for the arrow keys.
    outputs.state.change(handlers.live_view, outputs.state, parts["live_view"], api_visibility="private",
                         show_progress="hidden")
    threshold.input(None, threshold, None, js=ON_SLIDER_INPUT, api_visibility="private", show_progress="hidden")
    gr.on([threshold.release, parts["live_view"].submit], handlers.rethreshold, [outputs.state, threshold],
          list(outputs.live()), api_name="threshold", trigger_mode="always_last", show_progress="hidden",
          api_description="Redraw the last segmented slice of this session at a new threshold (no model run).")


def wire_dataset_browser(handlers: SliceHandlers, index: DatasetIndex, parts: dict[str, Any],
                         outputs: SliceOutputs, model_choice: gr.Dropdown) -> None:
    """Choosing a patient or a slice fills the uploads and segments; the curated examples too."""
    browser = DatasetBrowser(index)
    picked = list(PickedSlice(image_file=parts["image_file"], truth_file=parts["truth_file"],
                              caption=parts["caption"]))
    segment_inputs = [parts[name] for name in ("image_file", "threshold", "normalize", "truth_file")]
    then_segment = dict(fn=handlers.segment, inputs=[*segment_inputs, model_choice], outputs=list(outputs),
                        api_visibility="private", **MODEL_RUN)
    patient, position = parts["patient"], parts["position"]
    patient.change(browser.choose_patient, patient, position, api_visibility="private").then(
        browser.pick_slice, [patient, position], picked, api_visibility="private").then(**then_segment)
    position.release(browser.pick_slice, [patient, position], picked, api_visibility="private").then(**then_segment)
    examples = curated_examples(index.patients)
    if not examples:
        return
    gallery = gr.Examples(
        examples=[[str(e.record.image_path), str(e.record.mask_path) if e.record.mask_path else None]
                  for e in examples],
        inputs=[parts["image_file"], parts["truth_file"]], cache_examples=False,
        example_labels=[e.label for e in examples],
        label="Examples from the dataset folder (with and without tumor)", api_visibility="private")
    # run with the model chosen at click time, at its tuned threshold and normalization
    gallery.load_input_event.then(handlers.segment_example, [parts["image_file"], parts["truth_file"], model_choice],
                                  [*outputs, parts["threshold"], parts["normalize"]], api_visibility="private",
                                  **MODEL_RUN)


def build_slice_tab(models: ModelRegistry, cache_dir: str, model_choice: gr.Dropdown, model_info: gr.Markdown,
                    index: DatasetIndex | None) -> SliceHandlers:
    """The slice tab's components and events (call inside a ``gr.Blocks``); ``index`` adds the patient browser
    and examples. A run uses the model chosen in ``model_choice``; choosing another re-runs the shown slice."""
    handlers = SliceHandlers(models, cache_dir)
    state = gr.State(None, time_to_live=STATE_TTL_S)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            parts = slice_controls(models.get().config)
            parts.update(dataset_browser(index))
        with gr.Column(scale=2):
            parts.update(slice_results())
    outputs = SliceOutputs(state=state, **{name: parts[name] for name in SliceOutputs._fields if name != "state"})
    wire_slice_events(handlers, parts, outputs, model_choice, model_info)
    if index is not None:
        wire_dataset_browser(handlers, index, parts, outputs, model_choice)
    return handlers
