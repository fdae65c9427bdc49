"""Model configuration saved next to the weights (``config.json``)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainseg.fileio import atomic_write_text

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PACKAGE_DIR = Path(__file__).resolve().parent  # brainseg/ itself (installed: site-packages/brainseg)
CHECKOUT_ROOT = PACKAGE_DIR.parent  # the checkout or Space export around it: app.py, assets/, README.md
ONNX_FILE = "model.onnx"  # optional: the exported graph, stamped with the weights' sha256 (brainseg.inference.backends)
CONFIG_VERSION = 1
CALIBRATION_KEY = "calibration"  # ``ModelConfig.extra`` record written by ``brainseg calibrate``
# Network architectures :func:`brainseg.models.unet.build_model` can build; configs without ``arch`` are U-Nets.
# "unet": the article's U-Net, sized by ``base_channels`` and ``depth``. The others are Transformers of fixed size
# (:mod:`brainseg.models.transformer`, built with segmentation-models-pytorch), which ignore ``base_channels`` and
# ``depth``.
# (Ensembles and routed pairs of networks were removed: every model is one network, one forward per slice.)
UNET = "unet"
TRANSFORMER_ARCHITECTURES = ("segformer_mit_b0", "unet_mit_b0")
TRAINABLE_ARCHITECTURES = (UNET, *TRANSFORMER_ARCHITECTURES)
ARCHITECTURES = TRAINABLE_ARCHITECTURES
PRECISIONS = ("fp32", "bf16")  # what a network computes in: float32, or bfloat16 autocast (``--precision``)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and preprocess its input."""

    arch: str = "unet"
    base_channels: int = 32
    depth: int = 4
    in_channels: int = 3
    input_size: int = 256
    normalize: bool = True
    threshold: float = 0.5
    min_component_px: int = 0
    flip_tta: bool = False
    version: int = CONFIG_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r} in config.json (this brainseg knows "
                             f"{', '.join(ARCHITECTURES)}): upgrade brainseg or fix the config")
        if not 2 <= self.depth <= 5:
            raise ValueError(f"depth must be between 2 and 5, got {self.depth}")
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be positive, got {self.base_channels}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")

    def architecture(self) -> dict[str, Any]:
        """The fields that shape the network (two configs with equal ones load the same weights).

        ``base_channels`` and ``depth`` size the U-Net only; a Transformer's size is fixed by its ``arch``.
        """
        if self.arch != UNET:
            return {"arch": self.arch, "in_channels": self.in_channels}
        return {"arch": self.arch, "base_channels": self.base_channels, "depth": self.depth,
                "in_channels": self.in_channels}

    def to_dict(self) -> dict[str, Any]:
        """The config as ``config.json`` holds it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict, refusing configs written by a newer, incompatible version."""
        version = int(data.get("version", CONFIG_VERSION))
        if version > CONFIG_VERSION:
            raise ValueError(
                f"config.json has version {version}, this brainseg understands up to {CONFIG_VERSION}: "
                "upgrade brainseg to load these weights"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = dict(data.get("extra", {}))
        extra.update({k: v for k, v in data.items() if k not in known})
        kwargs["extra"] = extra
        return cls(**kwargs)

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` atomically (temporary file, then rename)."""
        return atomic_write_text(Path(folder) / CONFIG_FILE, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "ModelConfig":
        path = Path(folder) / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no {CONFIG_FILE} in {folder}: is this a brainseg model folder?") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}): re-download or re-export the model") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(data)
