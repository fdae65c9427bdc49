"""Where the network forward runs: PyTorch eager or ONNX Runtime, both from the same safetensors weights.

Only the forward pass changes: preprocessing, sigmoid, flip TTA and post-processing stay with the caller,
so both backends see the same input tensors. The ONNX graph is either ``model.onnx`` beside the weights
(written by :func:`save_onnx`) or exported once into a cache (:func:`ensure_onnx`); each graph records the
sha256 of the ``model.safetensors`` it came from, so a graph left over from other weights is never used.
``auto`` (:func:`select_backend`) takes ONNX Runtime only when it is installed and its probabilities match
PyTorch's within :data:`AUTO_TOLERANCE` on a probe batch.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainseg.config import ONNX_FILE, WEIGHTS_FILE
from brainseg.fileio import atomic_write

BACKENDS = ("auto", "onnx", "torch")
AUTO_TOLERANCE = 1e-4
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"
WEIGHTS_SHA_KEY = "brainseg.weights_sha256"
INPUT_SIZE_KEY = "brainseg.input_size"
CACHE_ENV_VAR = "BRAINSEG_CACHE"

Forward = Callable[[torch.Tensor], torch.Tensor]


class BackendError(RuntimeError):
    """A backend that was asked for by name cannot run; the message says what to install or choose instead."""


def onnxruntime_available() -> bool:
    """True when ``import onnxruntime`` works."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$BRAINSEG_CACHE/onnx``, else ``$XDG_CACHE_HOME/brainseg/onnx``, else ``~/.cache/brainseg/onnx``."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV_VAR):
        return Path(env[CACHE_ENV_VAR]) / "onnx"
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "brainseg" / "onnx"


def export_onnx(model: nn.Module, path: str | Path, input_size: int, weights_sha256: str | None = None,
                in_channels: int | None = None) -> Path:
    """Write ``model`` (in eval mode, fp32, on CPU) as an ONNX graph with a dynamic batch axis, atomically.

    Input ``input`` is (N, C, input_size, input_size) float32, output ``logits`` is (N, 1, input_size,
    input_size). ``weights_sha256`` (of the ``model.safetensors`` the model was loaded from) and
    ``input_size`` are stored in the graph's metadata so :func:`onnx_is_current` can check them. The
    model is exported from a copy, so the caller's model keeps its device, dtype and mode. ``in_channels``
    defaults to the first ``Conv2d``'s.
    """
    import copy

    channels = in_channels or _input_channels(model)
    export_model = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, channels, input_size, input_size)
    metadata = {INPUT_SIZE_KEY: str(int(input_size))}
    if weights_sha256:
        metadata[WEIGHTS_SHA_KEY] = weights_sha256

    def write(tmp: Path) -> None:
        _torch_onnx_export(export_model, example, tmp)
        _add_metadata(tmp, metadata)

    return atomic_write(path, write)


def _input_channels(model: nn.Module) -> int:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ValueError("cannot export to ONNX: the model has no Conv2d layer to read its input channels from")
    return first_conv.in_channels


def _torch_onnx_export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The TorchScript exporter (``dynamo=False``): the torch.export one would need onnxscript as well."""
    options: dict[str, Any] = {
        "input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": ONNX_OPSET,
        "dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    }
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export"
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, **options)
        except TypeError:  # a torch without the ``dynamo`` switch
            torch.onnx.export(model, (example,), str(path), **options)


def _add_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    import onnx

    graph = onnx.load(str(path))
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The custom metadata of an ONNX file (raises ``onnxruntime``'s error when the file is not a valid graph)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def onnx_is_current(path: str | Path, weights_sha256: str, input_size: int) -> bool:
    """True when ``path`` is a readable graph exported from the weights with this sha256 at this input size."""
    try:
        metadata = onnx_metadata(path)
    except Exception:  # noqa: BLE001 - a truncated or foreign file is just not current; it gets re-exported
        return False
    return metadata.get(WEIGHTS_SHA_KEY) == weights_sha256 and metadata.get(INPUT_SIZE_KEY) == str(int(input_size))


def save_onnx(model: nn.Module, folder: str | Path, input_size: int) -> Path:
    """Write ``model.onnx`` beside ``folder/model.safetensors`` (which ``model`` must hold), for a publish step."""
    folder = Path(folder)
    return export_onnx(model, folder / ONNX_FILE, input_size, file_sha256(folder / WEIGHTS_FILE))


def ensure_onnx(folder: str | Path, model: nn.Module, input_size: int, cache_dir: str | Path | None = None) -> Path:
    """An ONNX graph of ``model``, which must have been loaded from ``folder/model.safetensors``.

    Uses ``folder/model.onnx`` when it was exported from exactly these weights at this input size; else
    ``<cache_dir>/<sha256>-<input_size>.onnx``, exporting it there once. Never writes into ``folder``
    (it may be a read-only bundle or a Hub snapshot).
    """
    folder = Path(folder)
    weights_sha = file_sha256(folder / WEIGHTS_FILE)
    beside = folder / ONNX_FILE
    if beside.is_file() and onnx_is_current(beside, weights_sha, input_size):
        return beside
    cached = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{weights_sha}-{int(input_size)}.onnx"
    if cached.is_file() and onnx_is_current(cached, weights_sha, input_size):
        return cached
    try:
        return export_onnx(model, cached, input_size, weights_sha)
    except OSError as exc:  # read-only home, full disk
        raise BackendError(f"cannot write the ONNX cache {cached.parent} ({exc.strerror or exc}): set {CACHE_ENV_VAR} "
                           "to a writable folder or use backend='torch'") from None


class OnnxRunner:
    """Runs an ONNX graph with ONNX Runtime on the CPU in place of the network's forward.

    Call it like the model: a float32 (N, C, H, W) batch, preprocessed exactly as for PyTorch, in; logits
    out, as a torch tensor for a torch input and a numpy array for a numpy input. ``num_threads``
    defaults to ``torch.get_num_threads()`` so both backends use the same cores. Thread-safe.
    """

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.num_threads = num_threads or torch.get_num_threads()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 array -> (N, 1, H, W) float32 logits."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def __call__(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        if isinstance(batch, np.ndarray):
            return self.run(batch)
        return torch.from_numpy(self.run(batch.detach().float().cpu().numpy()))

    def __repr__(self) -> str:
        return f"OnnxRunner({str(self.path)!r}, num_threads={self.num_threads})"


def synthetic_probe(input_size: int, channels: int = 3, normalize: bool = True) -> torch.Tensor:
    """A (2, C, S, S) batch of brain-like test images (an ellipse with a bright lesion, seeded noise).

    For :func:`select_backend` when no real slice is at hand: it is made to drive the logits through a
    wide range, so backends that differ show it. Normalized as the model expects when ``normalize``.
    """
    from brainseg.inference.preprocess import normalize_per_image

    rng = np.random.default_rng(2026)
    yy, xx = np.mgrid[0:input_size, 0:input_size] / input_size
    images = []
    for cx, cy, radius in ((0.55, 0.45, 0.09), (0.4, 0.6, 0.14)):
        head = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1
        lesion = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        base = 0.35 * head + 0.1 * np.sin(12 * xx) * head
        planes = [base, base + 0.5 * lesion, base + 0.2 * lesion][:channels]
        planes += [base] * (channels - len(planes))
        image = np.stack(planes) + rng.normal(0, 0.03, (channels, input_size, input_size)) * head
        images.append(np.clip(image, 0, 1))
    batch = torch.from_numpy(np.stack(images).astype(np.float32))
    return normalize_per_image(batch) if normalize else batch


@torch.inference_mode()
def max_probability_difference(model: nn.Module, runner: Forward, probe: torch.Tensor) -> float:
    """Largest |sigmoid(model(probe)) - sigmoid(runner(probe))| over all pixels (PyTorch fp32 as reference)."""
    probe = probe.float().cpu()
    device = next(model.parameters()).device
    reference = torch.sigmoid(model(probe.to(device)).float().cpu())
    other = torch.sigmoid(torch.as_tensor(runner(probe)).float().cpu())
    return float((reference - other).abs().max())


@dataclass(frozen=True)
class BackendChoice:
    """The forward to use (``model`` or an :class:`OnnxRunner`), its name, and why it was chosen."""

    name: str
    forward: Forward
    reason: str
    onnx_path: Path | None = None
    max_abs_difference: float | None = None


def select_backend(requested: str, model: nn.Module, folder: str | Path | None, input_size: int, *,
                   probe: torch.Tensor | None = None, cache_dir: str | Path | None = None,
                   tolerance: float = AUTO_TOLERANCE) -> BackendChoice:
    """Pick the forward for ``requested`` = ``"torch"``, ``"onnx"`` or ``"auto"``.

    ``model`` is the eval-mode PyTorch model loaded from ``folder/model.safetensors``. ``onnx`` raises
    :class:`BackendError` when onnxruntime is missing or the graph cannot be made; ``auto`` then falls
    back to PyTorch, and also when the probabilities on ``probe`` (default :func:`synthetic_probe`)
    differ by more than ``tolerance``. ``folder`` None (a model built in memory) means PyTorch for ``auto``.
    ONNX Runtime runs on the CPU only: callers on a GPU should ask for ``torch``.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}: choose one of {', '.join(BACKENDS)}")
    if requested == "torch":
        return BackendChoice("torch", model, "PyTorch (asked for)")
    if not onnxruntime_available():
        if requested == "onnx":
            raise BackendError("backend 'onnx' needs onnxruntime: pip install onnxruntime, or use backend='torch'")
        return BackendChoice("torch", model, "PyTorch (onnxruntime is not installed)")
    if folder is None:
        if requested == "onnx":
            raise BackendError("backend 'onnx' needs a model folder with model.safetensors to export from")
        return BackendChoice("torch", model, "PyTorch (no model folder to export an ONNX graph from)")
    try:
        path = ensure_onnx(folder, model, input_size, cache_dir)
        runner = OnnxRunner(path)
    except Exception as exc:  # noqa: BLE001 - any export/load failure: clear error for onnx, fallback for auto
        if requested == "onnx":
            if isinstance(exc, BackendError):
                raise
            raise BackendError(f"cannot run the model with onnxruntime ({exc}): use backend='torch'") from exc
        return BackendChoice("torch", model, f"PyTorch (ONNX export or load failed: {exc})")
    if requested == "onnx":
        return BackendChoice("onnx", runner, "ONNX Runtime (asked for)", path)
    if probe is None:
        probe = synthetic_probe(input_size, _input_channels(model))
    difference = max_probability_difference(model, runner, probe)
    if difference > tolerance:
        return BackendChoice("torch", model, f"PyTorch (ONNX probabilities differ by {difference:.1e} > "
                                             f"{tolerance:.0e})", path, difference)
    return BackendChoice("onnx", runner, f"ONNX Runtime (probabilities within {difference:.1e} of PyTorch)",
                         path, difference)
