"""The models the app offers (the bundled ones plus the one it was started with), their selector labels, model
line and the table of their held-out numbers."""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from brainseg.config import UNET, ModelConfig
from brainseg.inference.backends import BackendError
from brainseg.inference.segmenter import Segmenter, load_segmenter
from brainseg.io.hub import BUNDLED_LABEL, DEFAULT_MODEL_NAME, ModelLoadError, bundled_models
from brainseg.publishing.card import calibration_line

# fp32: bf16 autocast does not keep the test-set masks equal to fp32 at threshold 0.5 (it flips
# a few boundary pixels in many slices; benchmarks/bf16_agreement.py, numbers in the README).
DEFAULT_PRECISION = "fp32"
# auto: ONNX Runtime on the CPU when installed and within 1e-4 of PyTorch (about 2x faster per slice,
# benchmarks/inference_speed.py), else PyTorch; always PyTorch on a GPU or with bf16.
DEFAULT_BACKEND = "auto"
METRIC_COLUMNS = (("slice_dice", "slice Dice"), ("volume_dice", "volume Dice"),
                  ("tumor_slice_dice", "tumor-slice Dice"), ("empty_fp_rate", "empty-slice FP"))
EXTERNAL_COLUMN = "other hospitals: 3D Dice, all sequences / FLAIR only"


def load_started_model(model: str | None = None, precision: str = DEFAULT_PRECISION,
                       backend: str = DEFAULT_BACKEND) -> tuple[Segmenter, str]:
    """The one place the app gets its model: a local folder or Hub repo id ``ORG/NAME[@REVISION]``
    (``--model``, else ``BRAINSEG_MODEL``), else the bundled default, run by ``backend`` (auto, onnx, torch).
    Returns the model and a note for the UI (which revision was pinned, or why it fell back to the bundled model)."""
    return load_segmenter(model, bf16=precision == "bf16", backend=backend)


def model_description(segmenter: Segmenter, note: str = "") -> str:
    """One model line; ``note`` (from :func:`load_started_model`) is added only when it says more than that line,
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


def started_choice(segmenter: Segmenter, requested: str | None = None) -> str:
    """The selector's name for the model the app was started with: a bundled model's name when it is one
    (also after a fallback to the bundled default), else what ``--model`` named, else its description."""
    if segmenter.source == BUNDLED_LABEL:
        return DEFAULT_MODEL_NAME
    name = segmenter.source.removeprefix("bundled ")
    if segmenter.source.startswith("bundled ") and name in bundled_models():
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
    return {name: folder for name, folder in bundled_models().items() if (folder / "config.json").is_file()}


@dataclass
class ModelRegistry:
    """The models the app can serve, by choice name: the bundled ones plus the one it was started with. Each is
    loaded on first use and kept; one lock, so concurrent sessions never load the same model twice."""

    started: str  # the choice the app was started with (the selector's default)
    sources: dict[str, str]  # choice -> what Segmenter.from_pretrained takes
    labels: dict[str, str]  # choice -> the selector's label
    bf16: bool = False
    backend: str = DEFAULT_BACKEND
    started_note: str = ""  # load_started_model's note about the started model (shown with it only)
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


def external_cell(metrics: dict) -> str:
    """A model's mean 3D Dice on the external scans it was measured on (``brainseg evaluate --external``)."""
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
