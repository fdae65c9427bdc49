"""Reading and writing ``model.safetensors`` (plus ``config.json``) for a brainseg model folder."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import WEIGHTS_FILE, ModelConfig
from .fileio import atomic_write


def state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors (safetensors refuses channels-last views)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_weights(model: torch.nn.Module, folder: str | Path) -> Path:
    """Write ``model.safetensors`` atomically (temporary file, then rename)."""
    state = state_for_saving(model)
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


def save_model(model: torch.nn.Module, config: ModelConfig, folder: str | Path) -> Path:
    """Write weights (safetensors) and config atomically into ``folder``."""
    folder = Path(folder)
    save_weights(model, folder)
    config.save(folder)
    return folder
