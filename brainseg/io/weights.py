"""Reading and writing ``model.safetensors`` (plus ``config.json``) for a brainseg model folder."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from brainseg.config import WEIGHTS_FILE, ModelConfig
from brainseg.fileio import atomic_write


def state_for_saving(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors (safetensors refuses channels-last views); with ``dtype``, its
    floating-point tensors stored in that type (loading casts them back to the model's own)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return state


def save_weights(model: torch.nn.Module, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model.safetensors`` atomically (temporary file, then rename); ``dtype`` as in
    :func:`state_for_saving` (float16 halves the file)."""
    state = state_for_saving(model, dtype)
    return atomic_write(Path(folder) / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model`` with a clear message on any mismatch."""
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}: train a model or download one")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a readable safetensors file ({exc}): it is truncated or corrupted, re-download it"
        ) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"weights in {path} do not match config.json ({first})") from None


def save_model(model: torch.nn.Module, config: ModelConfig, folder: str | Path,
               dtype: torch.dtype | None = None) -> Path:
    """Write weights (safetensors, floating tensors as ``dtype`` if given) and config atomically into ``folder``."""
    folder = Path(folder)
    save_weights(model, folder, dtype)
    config.save(folder)
    return folder
