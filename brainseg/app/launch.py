"""The brainseg Gradio demo: upload a brain-MRI slice, or a whole scan, and see the FLAIR abnormality the U-Net finds.

    brainseg app [--host 0.0.0.0] [--port 7860] [--share] [--model FOLDER] [--data-dir PATH]   (or: python app.py)

Only UI wiring lives in ``brainseg.app``: the page and its launcher here, the model selector's models in
``models``, the tabs in ``slice_tab`` / ``volume_tab`` (their handlers in ``slice_handlers`` /
``volume_handlers``, what both share in ``shared``) and dataset browsing in ``gallery``. Decoding is in
``brainseg.io.slices``, the model in ``brainseg.inference.segmenter``, drawing and the numbers in
``brainseg.views.overlay``; the Volume tab runs ``brainseg.inference.volume`` over a whole scan, its views, plot and
GIF come from ``brainseg.views.volume_export``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import gradio as gr

from brainseg.app.gallery import DatasetIndex
from brainseg.app.models import (
    DEFAULT_BACKEND,
    DEFAULT_PRECISION,
    ModelRegistry,
    bundled_metrics_table,
    load_started_model,
    model_description,
    shipped_models,
)
from brainseg.app.slice_tab import DATA_DIR_ENV, build_slice_tab
from brainseg.app.volume_tab import build_volume_tab
from brainseg.config import CHECKOUT_ROOT
from brainseg.inference.backends import BACKENDS, BackendError
from brainseg.inference.segmenter import Segmenter
from brainseg.io.hub import model_arg_from_env
from brainseg.publishing.space import SpaceConfig

# Uploads: a DICOM series .zip or an uncompressed NIfTI can be large; volume_io still caps the voxels and
# refuses zip bombs whatever the file size.
MAX_FILE_SIZE = "256mb"
TITLE = (
    "# brainseg: FLAIR abnormality (lower-grade glioma) on brain-MRI slices and volumes\n"
    "Upload a 3-channel slice from the Kaggle LGG set (pre-contrast, FLAIR, post-contrast) or a "
    "single-channel FLAIR slice (replicated to 3 channels); any size, 8- or 16-bit. "
    "Add its ground-truth mask to see Dice and IoU. The **Volume** tab takes a whole scan "
    "(NIfTI or DICOM series) and gives the tumor volume in mL and a 3D mask."
)
DISCLAIMER = (
    "**Research demo, not a medical device.** Do not use it for diagnosis or treatment decisions: "
    "the model was trained on one public dataset (110 lower-grade glioma patients, TCGA / Kaggle LGG) "
    "and can be wrong on other scanners, protocols or diseases. Do not upload identifiable patient data."
)
CSS = (
    "#disclaimer {border: 2px solid #d97706; border-radius: 8px; padding: 4px 12px;"
    " background: #fff7ed; color: #7c2d12}"
)


def model_section(models: ModelRegistry, segmenter: Segmenter, model_note: str) -> tuple[gr.Dropdown, gr.Markdown]:
    """The model selector, the model line and, folded, the bundled models' held-out numbers."""
    with gr.Row():
        model_choice = gr.Dropdown(models.choices(), value=models.started, label="Model", scale=1,
                                   elem_id="model-choice", info="Switching re-runs the current slice and volume "
                                   "with that model, at its own tuned threshold.")
        model_info = gr.Markdown(model_description(segmenter, model_note), elem_id="model-info")
    with gr.Accordion("Held-out numbers of the bundled models", open=False):
        gr.Markdown(bundled_metrics_table(shipped_models()), elem_id="model-metrics")
    return model_choice, model_info


def build_demo(segmenter: Segmenter, data_dir: str | Path | None = None, model_note: str = "",
               models: ModelRegistry | None = None) -> gr.Blocks:
    """The demo's UI serving ``segmenter`` first; ``data_dir`` (a Kaggle-layout folder) adds the patient browser
    and examples. ``models`` (default: the bundled models around ``segmenter``) fills the model selector."""
    models = models or ModelRegistry.around(segmenter, note=model_note)
    index = DatasetIndex(data_dir) if data_dir else None
    demo = gr.Blocks(title="brainseg: FLAIR abnormality segmentation", analytics_enabled=False,
                     delete_cache=(3600, 3600))
    with demo:
        gr.Markdown(TITLE)
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        model_choice, model_info = model_section(models, segmenter, model_note)
        with gr.Tabs():
            with gr.Tab("Slice", id="slice-tab"):
                build_slice_tab(models, demo.GRADIO_CACHE, model_choice, model_info, index)
            with gr.Tab("Volume", id="volume-tab"):
                build_volume_tab(models, demo.GRADIO_CACHE, model_choice)
    return demo


def started_model_arg(arg: str | None, folder: Path = CHECKOUT_ROOT) -> str | None:
    """``--model``; else None when ``$BRAINSEG_MODEL`` is set (load_started_model reads it); else the model a Space
    export names in ``space_config.json`` (``brainseg space``); else None: the bundled default."""
    if arg or model_arg_from_env():
        return arg
    return SpaceConfig.load(folder).model


def resolve_data_dir(arg: str | None) -> str | None:
    """``--data-dir``, else ``$BRAINSEG_DATA_DIR``, else None (uploads only)."""
    return arg or os.environ.get(DATA_DIR_ENV) or None


def build_parser(prog: str = "brainseg app") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="brainseg Gradio demo")
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
    return parser


def main(argv: list[str] | None = None, prog: str = "brainseg app") -> None:
    """Start the demo (``brainseg app``, or ``python app.py`` in a checkout or a Space: ``prog`` names it in the
    help and in the one-line error)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    try:
        model_arg = started_model_arg(args.model)
        segmenter, note = load_started_model(model_arg, args.precision, args.backend)
        models = ModelRegistry.around(segmenter, model_arg or model_arg_from_env(), args.backend, note)
        demo = build_demo(segmenter, data_dir, note, models)
    except (FileNotFoundError, ValueError, BackendError) as exc:  # a bad --model, --data-dir or --backend
        raise SystemExit(f"{parser.prog}: error: {exc}") from None
    demo.queue(default_concurrency_limit=4, max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(Path(data_dir).resolve())] if data_dir else None,
        css=CSS,
    )
