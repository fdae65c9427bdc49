"""Every model brainseg knows, once: its name, where it lives, its architecture, what it is for and its headline
numbers, and which one is the default.

A bundled model lives in ``assets/models/<name>/`` (in a wheel: ``brainseg/_bundled/<name>/``;
:mod:`brainseg.io.hub` finds the folder); a Hub model is a repo id. Headline numbers come from the model
folder's ``metrics.json`` (written by ``brainseg evaluate --json``) when it has one, else from the entry.
``brainseg models`` prints the table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL_NAME = "unet-generalist"
UNET_MODEL_NAME = "unet"  # the article's U-Net, whole-head LGG slices only (the comparison)
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Headline:
    """A model's headline numbers: held-out LGG slice and volume Dice (11 patients), mean 3D whole-tumor Dice on
    the 5 external BRATS 2013 scans (all channels); None where not measured."""

    slice_dice: float | None = None
    volume_dice: float | None = None
    brats_dice: float | None = None

    @classmethod
    def from_metrics(cls, path: Path) -> Headline:
        """The numbers of a ``brainseg evaluate --json`` file (``--data-dir`` held-out patients + ``--external``)."""
        metrics = json.loads(path.read_text())
        external = (metrics.get("external") or {}).get("mean_dice") or {}
        return cls(metrics.get("slice_dice"), metrics.get("volume_dice"), external.get("all channels"))


@dataclass(frozen=True)
class ModelEntry:
    """One known model: its name, architecture and purpose; ``repo_id`` is its Hub repo, None for a bundled model
    (its folder is ``assets/models/<name>``)."""

    name: str
    architecture: str
    purpose: str
    repo_id: str | None = None
    stated: Headline = field(default_factory=Headline)  # the numbers when the model's folder has no metrics.json

    @property
    def bundled(self) -> bool:
        return self.repo_id is None

    @property
    def location(self) -> str:
        """Where it lives, as a user names it: ``assets/models/<name>/`` or the Hub repo id."""
        return f"assets/models/{self.name}/" if self.bundled else self.repo_id

    def headline(self, folder: Path | None = None) -> Headline:
        """The numbers of ``folder/metrics.json`` when there is one, else the entry's own."""
        if folder is not None and (folder / METRICS_FILE).is_file():
            return Headline.from_metrics(folder / METRICS_FILE)
        return self.stated


MODELS: tuple[ModelEntry, ...] = (
    ModelEntry(DEFAULT_MODEL_NAME, "U-Net, width 16, depth 5 (3.3 M parameters)",
               "the default: one network for every input form, at home and on other hospitals' scans "
               "(docs/generalization.md)"),
    ModelEntry(UNET_MODEL_NAME, "U-Net, width 16, depth 5 (3.3 M parameters)",
               "the article's U-Net on the LGG slices as they are: whole-head 3-channel slices only (comparison)"),
    ModelEntry("segformer-b0", "SegFormer MiT-b0 (Transformer encoder, 3.7 M parameters)",
               "the Transformer comparison (docs/transformer.md)"),
)


def known_models() -> dict[str, ModelEntry]:
    """Every entry by name, the default first."""
    return {entry.name: entry for entry in MODELS}


def bundled_names() -> list[str]:
    """The bundled models' names, the default first."""
    return [entry.name for entry in MODELS if entry.bundled]
