"""Loading a trained model (the one path: source -> files -> config + weights -> :class:`Segmenter`) and
predicting probability maps for images of any size."""
from __future__ import annotations

import contextlib
import platform
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as TF

from brainseg.config import WEIGHTS_FILE, ModelConfig
from brainseg.inference.backends import BACKENDS, BackendChoice, BackendError, Forward, select_backend
from brainseg.inference.postprocess import binarize
from brainseg.inference.preprocess import preprocess, uint8_batch_to_input
from brainseg.io.hub import ModelLoadError, ResolvedModel, first_line, model_arg_from_env, resolve_model
from brainseg.io.pixels import as_rgb_uint8
from brainseg.io.weights import load_weights, save_model
from brainseg.models.unet import build_model


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device that is not here is a ``ValueError`` saying so."""
    mps = getattr(torch.backends, "mps", None)
    available = {"cuda": torch.cuda.is_available(), "mps": mps is not None and mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(kind for kind, here in available.items() if here))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or mps") from None
    if not available.get(device.type, False):
        raise ValueError(f"device {name!r} is not available on this machine: use auto or cpu")
    return device


def describe_device(device: torch.device) -> str:
    """Where inference runs, for reports: the GPU's name on CUDA, the CPU architecture and thread count otherwise."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} GPU"
    if device.type == "mps":
        return "Apple GPU (mps)"
    return f"{platform.machine()} CPU x{torch.get_num_threads()} threads"


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU/CUDA when enabled, otherwise a no-op."""
    if enabled and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_model(resolved: ResolvedModel) -> tuple[ModelConfig, nn.Module]:
    """Build the network ``config.json`` names and load its weights; any problem is a :class:`ModelLoadError`."""
    try:
        config = ModelConfig.load(resolved.folder)
        model = build_model(config)
        load_weights(model, resolved.folder / WEIGHTS_FILE)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot load model {resolved.describe()}: {first_line(exc)}") from exc
    return config, model


def choose_backend(requested: str, model: nn.Module, config: ModelConfig, device: torch.device, bf16: bool,
                   folder: str | Path | None, cache_dir: str | Path | None = None) -> BackendChoice:
    """:func:`brainseg.inference.backends.select_backend` for a model already on ``device``.

    ONNX Runtime runs here on the CPU in fp32 only: on a GPU or with bf16, ``auto`` means PyTorch and
    ``onnx`` is a :class:`BackendError`.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}: choose one of {', '.join(BACKENDS)}")
    if requested != "torch" and (device.type != "cpu" or bf16):
        why = f"on {device.type}" if device.type != "cpu" else "with bf16"
        if requested == "onnx":
            raise BackendError(f"backend 'onnx' runs on the CPU in fp32 only, not {why}: use device 'cpu' without "
                               "bf16, or backend 'torch'")
        return BackendChoice("torch", model, f"PyTorch (ONNX Runtime is used on the CPU in fp32 only, not {why})")
    return select_backend(requested, model, folder, config.input_size, cache_dir=cache_dir)


class Segmenter:
    """A network plus the preprocessing and post-processing its weights were trained with.

    ``source`` says where the weights came from (``"bundled default"``, a folder, or
    ``"ORG/NAME@<commit>"``), ``revision`` is the Hub commit they were pinned to (None when
    not from the Hub), ``name`` what the model is called (its bundled name, folder name or repo id; ``source``
    when not given) and ``description`` is a one-line summary for a UI.

    ``backend`` (``"torch"``, ``"onnx"`` or ``"auto"``, :mod:`brainseg.inference.backends`) says what runs the network's
    forward; ``onnx``/``auto`` export the graph from ``folder/model.safetensors`` (``folder``: where ``model``'s
    weights were loaded from; never written to). After construction ``backend`` holds the name that runs
    (``"torch"`` or ``"onnx"``) and ``backend_reason`` one line saying why, for a UI. ``model`` is always the
    PyTorch module (training, publishing and saving use it).
    """

    def __init__(self, model: nn.Module, config: ModelConfig, source: str = "", device: str = "auto",
                 bf16: bool = False, revision: str | None = None, description: str | None = None,
                 backend: str = "torch", folder: str | Path | None = None, name: str | None = None):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.config = config
        self.source = source
        self.name = source if name is None else name
        self.revision = revision
        self.description = description or source
        self.bf16 = bf16
        choice = choose_backend(backend, self.model, config, self.device, bf16, folder)
        self.backend: str = choice.name
        self.backend_reason: str = choice.reason
        self.onnx_path: Path | None = choice.onnx_path if choice.name == "onnx" else None
        self._network: Forward = choice.forward

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, device: str = "auto", bf16: bool = False,
                        backend: str = "auto") -> "Segmenter":
        """Load the bundled default model (``source=None``), a bundled model by name (:func:`brainseg.bundled_models`:
        ``"unet"``, ...), a saved model folder, or a Hub model.

        Hub models are given as ``"ORG/NAME"`` or ``"ORG/NAME@REVISION"`` (branch, tag or commit)
        and go through the Hugging Face cache. Every failure to find or read the model raises
        :class:`brainseg.io.hub.ModelLoadError`; ``backend="onnx"`` that cannot run raises :class:`BackendError`.
        ``auto`` (the default) runs ONNX Runtime on the CPU when it is installed and matches PyTorch within
        1e-4, else PyTorch (always PyTorch on a GPU or with ``bf16``).
        """
        return cls.from_resolved(resolve_model(source), device=device, bf16=bf16, backend=backend)

    @classmethod
    def from_resolved(cls, resolved: ResolvedModel, device: str = "auto", bf16: bool = False,
                      backend: str = "auto") -> "Segmenter":
        """Load the model files :func:`brainseg.io.hub.resolve_model` found."""
        config, model = load_model(resolved)
        return cls(model, config, source=resolved.source, device=device, bf16=bf16,
                   revision=resolved.revision, description=resolved.describe(), backend=backend,
                   folder=resolved.folder, name=resolved.name)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``folder``."""
        return save_model(self.model, self.config, folder)

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) model input -> (N, S, S) float32 probabilities on the CPU, flip TTA included."""
        if self.backend == "onnx":  # a contiguous float32 NCHW CPU tensor, as the graph was exported for
            batch = batch.float().cpu().contiguous()
            context: contextlib.AbstractContextManager = contextlib.nullcontext()
        else:
            batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            context = autocast(self.device, self.bf16)
        with context:
            proba = torch.sigmoid(self._network(batch).float())
            if self.config.flip_tta:
                flipped = batch.flip(-1).contiguous() if self.backend == "onnx" else batch.flip(-1)
                proba = (proba + torch.sigmoid(self._network(flipped).float()).flip(-1)) / 2
        return proba[:, 0].float().cpu()

    def predict_proba(self, image: np.ndarray, normalize: bool | None = None) -> np.ndarray:
        """Probability map (H x W float32, input size) for one H x W x 3 or H x W image.

        ``normalize`` overrides the trained preprocessing (for comparisons); default: the config's.
        A constant image (all black, all white) gives all zeros: it has no contrast to segment.
        """
        rgb = as_rgb_uint8(image)
        height, width = rgb.shape[:2]
        if rgb.min() == rgb.max():  # a constant slice (e.g. all black) holds nothing to find
            return np.zeros((height, width), np.float32)
        norm = self.config.normalize if normalize is None else normalize
        batch = preprocess(rgb, self.config.input_size, norm)[None]
        proba = self._forward(batch)
        if (height, width) != proba.shape[1:]:
            proba = TF.interpolate(proba[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        return proba[0].numpy().astype(np.float32)

    def predict_proba_batch(self, images: np.ndarray, batch_size: int = 32,
                            normalize: bool | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 slices at the model's input size -> (N, S, S) float32 probabilities.

        Same results as :meth:`predict_proba` slice by slice (constant slices give all zeros).
        """
        if images.shape[1:3] != (self.config.input_size, self.config.input_size):
            return np.stack([self.predict_proba(img, normalize) for img in images])
        norm = self.config.normalize if normalize is None else normalize
        out = []
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)
            out.append(self._forward(uint8_batch_to_input(chunk, norm)))
        probas = torch.cat(out).numpy().astype(np.float32)
        flat = images.reshape(len(images), -1)
        probas[flat.min(axis=1) == flat.max(axis=1)] = 0.0  # constant slices: nothing to find
        return probas

    def to_mask(self, proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Binary mask from a probability map with the model's threshold and post-processing."""
        return binarize(proba, self.config.threshold if threshold is None else threshold, self.config.min_component_px)

    def predict_mask(self, image: np.ndarray, threshold: float | None = None) -> np.ndarray:
        return self.to_mask(self.predict_proba(image), threshold)


def load_segmenter(model_arg: str | Path | None = None, fallback_to_bundled: bool | None = None, *,
                   device: str = "auto", bf16: bool = False, backend: str = "auto",
                   environ: Mapping[str, str] | None = None) -> tuple[Segmenter, str]:
    """Load the model an app or CLI was asked for; returns ``(segmenter, message for the UI)``.

    ``model_arg`` None means: ``BRAINSEG_MODEL`` if set, else the bundled model. ``fallback_to_bundled``
    defaults to "only when ``model_arg`` is None", so a model the user named explicitly either
    loads or raises :class:`ModelLoadError`, while a failing ``BRAINSEG_MODEL`` falls back with a warning.
    ``backend`` is passed to :meth:`Segmenter.from_pretrained` (a :class:`BackendError` is never a reason to
    fall back).
    """
    requested = model_arg if model_arg not in (None, "") else model_arg_from_env(environ)
    if fallback_to_bundled is None:
        fallback_to_bundled = model_arg in (None, "")
    try:
        segmenter = Segmenter.from_pretrained(requested, device=device, bf16=bf16, backend=backend)
    except ModelLoadError as exc:
        if requested is None or not fallback_to_bundled:
            raise
        segmenter = Segmenter.from_pretrained(None, device=device, bf16=bf16, backend=backend)
        return segmenter, f"Could not load {requested} ({exc}); using the bundled default model instead."
    return segmenter, f"Model: {segmenter.description}"
