"""The Volume tab's layout and events: uploads, the result card, three linked planes, the 3D view and downloads."""
from __future__ import annotations

from typing import Any

import gradio as gr

from brainseg.app.models import ModelRegistry
from brainseg.app.shared import STATE_TTL_S, VOLUME_REDRAW, on_model_switch, on_truth_change, threshold_slider
from brainseg.app.volume_handlers import VolumeHandlers, VolumeOutputs
from brainseg.config import ModelConfig
from brainseg.io.hub import DEFAULT_MODEL_NAME
from brainseg.views.planes import SEQUENCES

VOLUME_FILE_TYPES = [".nii", ".gz", ".zip"]
VOLUME_START_TEXT = ("Upload a FLAIR volume (NIfTI `.nii` / `.nii.gz`, or a `.zip` of one DICOM series), optionally "
                     "T1 and post-contrast T1 on the same grid, then press **Segment volume**. The default model "
                     f"(**{DEFAULT_MODEL_NAME}**, one network) was trained for whole-head and skull-stripped scans, "
                     "FLAIR only or with T1/T1c, from this and other hospitals.")
# After a run the card (left) and the three planes (right) start at the top of the window, below the page's header.
SCROLL_TO_RESULT = ("() => { const card = document.querySelector('#volume-card');"
                    " if (card) window.scrollTo({top: card.getBoundingClientRect().top + window.scrollY - 8}); }")
VOLUME_PLANE = {"format": "png", "interactive": False, "height": 300, "buttons": ["fullscreen"]}
SEGMENT_VOLUME_API = (
    "Segment a whole FLAIR volume (NIfTI file or .zip of a DICOM series; optional T1 and post-contrast T1 on the "
    "same grid, optional ground-truth labels NIfTI). Returns the NIfTI mask (input shape and affine), the numbers "
    "(volume_ml, slices_with_tumor, ...; dice and per_slice_dice with ground truth), the overlay GIF, the area "
    "plot, the axial slice shown, its plane and probability map, caption and summary; then (appended) the result "
    "card, the coronal and sagittal scrubbers and planes, the 3D view (.glb) and the report (PDF, JSON). The "
    "optional last input names the model (default: the one the app was started with).")
ONE_VOLUME_AT_A_TIME = {"concurrency_id": "volume", "concurrency_limit": 1}


def volume_uploads() -> dict[str, Any]:
    """The FLAIR upload and, folded, the optional T1, post-contrast T1 and ground truth."""
    parts: dict[str, Any] = {}
    parts["flair"] = gr.File(label="FLAIR volume (NIfTI, or .zip of a DICOM series)", file_types=VOLUME_FILE_TYPES,
                             elem_id="volume-flair", height=90)
    with gr.Accordion("More channels and ground truth (optional)", open=False):
        parts["t1"] = gr.File(label="T1 (pre-contrast), on the FLAIR's grid", file_types=VOLUME_FILE_TYPES,
                              elem_id="volume-t1")
        parts["t1ce"] = gr.File(label="T1 post-contrast, on the FLAIR's grid", file_types=VOLUME_FILE_TYPES,
                                elem_id="volume-t1ce")
        parts["truth"] = gr.File(label="Ground-truth labels NIfTI (labels > 0 = tumor)", file_types=[".nii", ".gz"],
                                 elem_id="volume-truth")
    return parts


def volume_downloads() -> dict[str, Any]:
    """The report (PDF, JSON), the mask (NIfTI) and the overlay GIF to download."""
    with gr.Accordion("Downloads: report (PDF, JSON), mask (NIfTI), 3D view, GIF", open=True):
        with gr.Row():
            report_pdf = gr.File(label="Report (PDF)", interactive=False, elem_id="volume-report-pdf")
            report_json = gr.File(label="Report (JSON)", interactive=False, elem_id="volume-report-json")
        with gr.Row():
            mask = gr.File(label="Mask (NIfTI, the input's grid)", interactive=False, elem_id="volume-mask")
            gif = gr.File(label="Overlays, animated GIF", interactive=False, elem_id="volume-gif")
    return {"report_pdf": report_pdf, "report_json": report_json, "mask": mask, "gif": gif}


def volume_controls(cfg: ModelConfig) -> dict[str, Any]:
    """The Volume tab's left column: the result card (before a run, what to do), uploads, threshold, run and the
    downloads."""
    parts: dict[str, Any] = {"card": gr.Markdown(VOLUME_START_TEXT, elem_id="volume-card")}  # after a run: the card
    parts.update(volume_uploads())
    parts["threshold"] = threshold_slider(cfg.threshold, "volume-threshold", VOLUME_REDRAW)
    parts["run"] = gr.Button("Segment volume", variant="primary", elem_id="volume-run")
    parts.update(volume_downloads())
    parts["summary"] = gr.Markdown("", elem_id="volume-summary")
    return parts


def volume_planes() -> dict[str, Any]:
    """The base-image and band choices, the three linked planes and their scrubbers."""
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
    return parts


def volume_views() -> dict[str, Any]:
    """The Volume tab's right column (hidden until a run): three linked planes with their scrubbers, the caption,
    the 3D view, the probability map, the area plot and the numbers."""
    parts = volume_planes()
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


def volume_outputs(left: dict[str, Any], right: dict[str, Any], state: gr.State) -> VolumeOutputs:
    """The tab's output components, in the order of the ``/segment_volume`` outputs."""
    return VolumeOutputs(mask_file=left["mask"], numbers=right["numbers"], gif_file=left["gif"],
                         area_plot=right["area_plot"], summary=left["summary"], state=state, card=left["card"],
                         report_pdf=left["report_pdf"], report_json=left["report_json"],
                         **{name: right[name] for name in ("position", "overlay", "probability", "caption",
                                                          "coronal_position", "sagittal_position", "coronal",
                                                          "sagittal", "mesh")})


def wire_runs(handlers: VolumeHandlers, left: dict[str, Any], outputs: VolumeOutputs, model_choice: gr.Dropdown,
              views_column: gr.Column) -> None:
    """``/segment_volume`` (the run button), then the views shown and scrolled to."""
    inputs = [left["flair"], left["t1"], left["t1ce"], left["threshold"], left["truth"], model_choice]
    show = {"fn": lambda: gr.Column(visible=True), "outputs": views_column, "api_visibility": "private"}
    left["run"].click(handlers.segment_volume, inputs, list(outputs), api_name="segment_volume",
                      show_progress_on=[left["card"]], api_description=SEGMENT_VOLUME_API,
                      **ONE_VOLUME_AT_A_TIME).success(**show).then(None, js=SCROLL_TO_RESULT)


def wire_redraws(handlers: VolumeHandlers, left: dict[str, Any], right: dict[str, Any],
                 outputs: VolumeOutputs) -> None:
    """Scrubbers, clicks on a plane, the threshold and a ground truth redraw without a model run; the threshold
    release and a ground truth then write the 3D view and the downloads in chained steps."""
    state, threshold = outputs.state, left["threshold"]
    point = [outputs.position, outputs.coronal_position, outputs.sagittal_position]
    view_inputs = [state, *point, threshold, right["sequence"], right["band"]]
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
    on_truth_change(left["truth"], handlers.change_truth, [state, left["truth"], point[0], threshold, *point[1:]],
                    outputs, show_progress="minimal").then(
        handlers.scene, outputs=outputs.mesh, **chained).then(handlers.files, outputs=list(outputs.files()), **chained)


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
    outputs = volume_outputs(left, right, state)
    wire_runs(handlers, left, outputs, model_choice, views_column)
    wire_redraws(handlers, left, right, outputs)
    rerun_inputs = [state, left["flair"], left["t1"], left["t1ce"], left["threshold"], left["truth"], model_choice]
    on_model_switch(model_choice, handlers.choose_model, [left["threshold"], left["card"], left["summary"]],
                    handlers.rerun, rerun_inputs, outputs, show_progress_on=[left["card"]], **ONE_VOLUME_AT_A_TIME)
    return handlers
