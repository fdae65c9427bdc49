"""The brainseg Gradio demo: upload a brain-MRI slice and see the FLAIR abnormality the U-Net finds.

    python app.py [--host 0.0.0.0] [--port 7860] [--share] [--model FOLDER] [--data-dir PATH]

Only UI wiring lives here; decoding is in ``brainseg.imaging``, the model in ``brainseg.inference``,
drawing in ``brainseg.overlay`` and dataset browsing in ``brainseg.gallery``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from brainseg.gallery import DatasetIndex, curated_examples, largest_tumor_position
from brainseg.imaging import decode_image, inspect_mask, save_png, slice_notes
from brainseg.hub import load_segmenter as load_model_source
from brainseg.inference import Segmenter
from brainseg.overlay import TRUTH_COLOUR, fill_and_contour, probability_heatmap, render_views

DATA_DIR_ENV = "BRAINSEG_DATA_DIR"
# fp32: bf16 autocast does not keep the test-set masks equal to fp32 at threshold 0.5 (it flips
# a few boundary pixels in many slices; benchmarks/bf16_agreement.py, numbers in the README).
DEFAULT_PRECISION = "fp32"
DEFAULT_THRESHOLD = 0.5
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


@dataclass(frozen=True)
class SliceState:
    """Per-session state: the decoded slice, its probability map, the optional ground truth
    (and the cached PNG of its overlay, drawn once)."""

    image: np.ndarray
    proba: np.ndarray
    normalize: bool
    truth: np.ndarray | None = None
    truth_view: str | None = None
    notes: tuple[str, ...] = ()


def load_segmenter(model: str | None = None, precision: str = DEFAULT_PRECISION) -> tuple[Segmenter, str]:
    """The one place the app gets its model: a local folder or Hub repo id ``ORG/NAME[@REVISION]``
    (``--model``, else ``BRAINSEG_MODEL``), else the bundled default. Returns the model and a note
    for the UI (which revision was pinned, or why it fell back to the bundled model)."""
    return load_model_source(model, bf16=precision == "bf16")


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

    def png(array: np.ndarray | None, name: str) -> str | None:
        """Encode straight into Gradio's cache (fast PNG), so Gradio only serves the file."""
        return None if array is None else save_png(array, demo.GRADIO_CACHE, name)

    def with_truth(image: np.ndarray, proba: np.ndarray, normalize: bool, truth: np.ndarray | None,
                   notes: tuple[str, ...] = ()) -> SliceState:
        view = None if truth is None else png(fill_and_contour(image, truth, TRUTH_COLOUR), "ground_truth")
        for note in notes:  # a visible toast; also in the numbers and the summary
            gr.Warning(note)
        return SliceState(image, proba, normalize, truth, view, notes)

    def read_truth(truth_file: str | None, image: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
        """The ground-truth mask (checked against the slice's size) and notes about it."""
        return inspect_mask(truth_file, image.shape[:2]) if truth_file else (None, [])

    def outputs_for(state: SliceState, threshold: float) -> tuple[Any, ...]:
        """The threshold-dependent outputs (``live_outputs`` below): no model run."""
        views = render_views(state.image, segmenter.to_mask(state.proba, threshold), state.truth)
        overlay = png(views.overlay, "prediction")
        stats = views.summary.to_dict() | {
            "threshold": round(float(threshold), 4),
            "normalize": state.normalize,
            "width": int(state.image.shape[1]),
            "height": int(state.image.shape[0]),
            "probability_max": round(float(state.proba.max()), 6),
            "probability_mean": round(float(state.proba.mean()), 6),
            "notes": list(state.notes),
        }
        pair = None if state.truth_view is None else (state.truth_view, overlay)
        agreement = png(views.agreement, "agreement")
        text = views.summary.markdown() + "".join(f"\n\n**Note:** {note}" for note in state.notes)
        return png(views.mask, "prediction_mask"), stats, overlay, agreement, pair, text

    def all_outputs(state: SliceState, threshold: float) -> tuple[Any, ...]:
        mask, stats, overlay, agreement, pair, summary = outputs_for(state, threshold)
        heat = png(probability_heatmap(state.proba, state.image), "probability")
        return mask, stats, overlay, heat, state.truth_view, agreement, pair, summary, state

    def segment(image_file: str | None, threshold: float, normalize: bool, truth_file: str | None):
        """Segment one slice; returns the binary mask (white = abnormality), the numbers and the views."""
        if not image_file:
            raise gr.Error("Upload a slice first (TIFF, PNG or JPEG).")
        try:
            image = decode_image(image_file)
            truth, truth_notes = read_truth(truth_file, image)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        proba = segmenter.predict_proba(image, normalize=bool(normalize))
        notes = (*slice_notes(image), *truth_notes)
        return all_outputs(with_truth(image, proba, bool(normalize), truth, notes), threshold)

    def segment_new_upload(image_file: str | None, threshold: float, normalize: bool):
        # a new slice invalidates the previous ground truth
        return (*segment(image_file, threshold, normalize, None), None)

    def segment_example(image_file: str, truth_file: str | None, threshold: float, normalize: bool):
        return segment(image_file, threshold, normalize, truth_file)

    def change_truth(state: SliceState | None, truth_file: str | None, threshold: float):
        if state is None:
            return tuple(gr.skip() for _ in range(9))
        try:
            truth, truth_notes = read_truth(truth_file, state.image)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        notes = (*slice_notes(state.image), *truth_notes)
        return all_outputs(with_truth(state.image, state.proba, state.normalize, truth, notes), threshold)

    def rethreshold(state: SliceState | None, threshold: float):
        """Redraw for a new threshold from the stored probability map (no model run)."""
        if state is None:
            return tuple(gr.skip() for _ in range(6))
        return outputs_for(state, threshold)

    def clear_all():
        return None, None, None, None, None, None, None, "Upload a slice to start.", None, None

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
                threshold = gr.Slider(0.05, 0.95, value=DEFAULT_THRESHOLD, step=0.01, label="Threshold",
                                      info=f"Redraws without re-running the model; the model's tuned value is "
                                           f"{cfg.threshold:g}.", elem_id="threshold")
                normalize = gr.Checkbox(
                    value=cfg.normalize, label="Per-image normalization, Normalize(mean, 2·std)",
                    info=f"The loaded weights were trained with it {'ON' if cfg.normalize else 'OFF'}; "
                         "flipping it re-runs the model (off = raw [0, 1] input).", elem_id="normalize")
                run = gr.Button("Segment", variant="primary")
                summary = gr.Markdown("Upload a slice to start.", elem_id="summary")
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

        main_outputs = [mask_img, stats, overlay_img, heat_img, truth_img, agreement_img, compare, summary, state]
        live_outputs = [mask_img, stats, overlay_img, agreement_img, compare, summary]
        model_run = {"concurrency_id": "model", "concurrency_limit": 1}
        segment_inputs = [image_file, threshold, normalize, truth_file]

        run.click(segment, segment_inputs, main_outputs, api_name="segment", **model_run,
                  api_description="Segment a slice. Returns the binary mask PNG (input size, white = "
                                  "abnormality), the numbers (area; Dice and IoU with ground truth), the "
                                  "overlay, heat map, ground-truth view, agreement map, slider pair, summary.")
        image_file.upload(segment_new_upload, [image_file, threshold, normalize], [*main_outputs, truth_file],
                          api_visibility="private", **model_run)
        image_file.clear(clear_all, None, [*main_outputs, truth_file], api_visibility="private")
        normalize.input(segment, segment_inputs, main_outputs, api_visibility="private", **model_run)
        gr.on([truth_file.upload, truth_file.clear], change_truth, [state, truth_file, threshold], main_outputs,
              api_visibility="private")
        threshold.input(rethreshold, [state, threshold], live_outputs, api_name="threshold",
                        trigger_mode="always_last", show_progress="hidden")

        if index is not None:
            def choose_patient(name: str | None):
                if not name:
                    return gr.skip()
                slices = index.patient(name).slices
                start = largest_tumor_position(index.patient(name)) + 1
                return gr.Slider(minimum=1, maximum=max(len(slices), 2), value=start, step=1,
                                 label=f"Slice (1-{len(slices)})")

            def load_slice(name: str | None, pos: float):
                if not name:
                    return gr.skip(), gr.skip(), gr.skip()
                record = index.slice(name, int(pos))
                has_mask = "with its ground truth" if record.mask_path else "no ground-truth file"
                text = f"`{record.image_path.name}` ({has_mask})"
                return str(record.image_path), str(record.mask_path) if record.mask_path else None, text

            loaded = dict(fn=segment, inputs=segment_inputs, outputs=main_outputs, api_visibility="private",
                          **model_run)
            patient.change(choose_patient, patient, position, api_visibility="private").then(
                load_slice, [patient, position], [image_file, truth_file, caption], api_visibility="private"
            ).then(**loaded)
            position.release(load_slice, [patient, position], [image_file, truth_file, caption],
                             api_visibility="private").then(**loaded)
            examples = curated_examples(index.patients)
            if examples:
                gr.Examples(
                    examples=[[str(e.record.image_path), str(e.record.mask_path) if e.record.mask_path else None,
                               DEFAULT_THRESHOLD, cfg.normalize] for e in examples],
                    inputs=[image_file, truth_file, threshold, normalize],
                    outputs=main_outputs,
                    fn=segment_example,
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
    parser.add_argument("--model", default=None, help="model folder or Hub repo id ORG/NAME[@REVISION] (default: $BRAINSEG_MODEL, "
                        "else the bundled model in assets/model)")
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
