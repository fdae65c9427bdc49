"""The article's U-Net: DoubleConv blocks, max-pool down, bilinear up with skip concatenation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from torch import nn

from .config import WEIGHTS_FILE, ModelConfig
from .weights import load_weights, save_model

HUB_CARD_TEMPLATE = """---
{{ card_data }}
---

# brainseg U-Net

U-Net weights (`model.safetensors`) and preprocessing config (`config.json`) for segmenting FLAIR
abnormality (lower-grade glioma) on 256x256 brain-MRI slices, trained on the Kaggle LGG MRI set
(Buda, Saha, Mazurowski, Computers in Biology and Medicine 109 (2019); data from TCIA TCGA-LGG,
CC BY-NC-SA 4.0). Load with `brainseg.Segmenter.from_pretrained("ORG/NAME")`.

**Research and teaching only. Not for clinical use.**
"""


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Bilinear 2x upsample, concatenate the skip connection, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="brainseg",
    license="cc-by-nc-sa-4.0",
    pipeline_tag="image-segmentation",
    tags=["medical-imaging", "brain-mri", "glioma", "unet"],
    model_card_template=HUB_CARD_TEMPLATE,
):
    """U-Net returning logits of shape (N, 1, H, W); H and W must be divisible by 2**depth.

    ``base_channels=64, depth=4`` is the article's model. Channels double at every
    down block; the bottleneck keeps the deepest encoder width, as with bilinear
    upsampling in the article's implementation.

    Through :class:`huggingface_hub.PyTorchModelHubMixin`, ``save_pretrained`` /
    ``from_pretrained`` / ``push_to_hub`` read and write ``model.safetensors`` plus the
    brainseg ``config.json`` (a :class:`~brainseg.config.ModelConfig`, see :attr:`model_config`).
    """

    def __init__(self, base_channels: int = 32, depth: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self._architecture = {"base_channels": base_channels, "depth": depth, "in_channels": in_channels}
        widths = [base_channels * 2**level for level in range(depth)]
        self.inc = DoubleConv(in_channels, widths[0])
        down_out = widths[1:] + [widths[-1]]
        self.downs = nn.ModuleList(Down(widths[i], down_out[i]) for i in range(depth))
        ups = []
        below = widths[-1]
        for level in reversed(range(depth)):
            out = widths[level - 1] if level > 0 else widths[0]
            ups.append(Up(below + widths[level], out))
            below = out
        self.ups = nn.ModuleList(ups)
        self.outc = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities, shape (N, 1, H, W)."""
        return torch.sigmoid(self(x))

    @property
    def model_config(self) -> ModelConfig:
        """The config written as ``config.json``: the attached one, else defaults for this architecture."""
        attached = self._hub_mixin_config
        if isinstance(attached, ModelConfig):
            return attached
        return ModelConfig(**self._architecture)

    def attach_config(self, config: ModelConfig) -> None:
        """Use ``config`` (threshold, preprocessing, metrics...) when saving or pushing this model."""
        if config.architecture() != self._architecture:
            raise ValueError(f"config architecture {config.architecture()} does not match the model {self._architecture}")
        self._hub_mixin_config = config

    def save_pretrained(self, save_directory: str | Path, *, config: ModelConfig | dict | None = None,
                        **kwargs: Any) -> str | None:
        """Write ``model.safetensors``, ``config.json`` and a README; ``config`` is attached first if given."""
        if config is not None:
            self.attach_config(config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config))
        return super().save_pretrained(save_directory, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_model(self, self.model_config, save_directory)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict | None = None,
        map_location: str = "cpu",
        **model_kwargs: Any,
    ) -> "UNet":
        """Build from ``config.json`` and load ``model.safetensors`` strictly (local folder or Hub repo)."""
        model_config = ModelConfig.from_dict(config) if config is not None else None
        model = cls(**model_kwargs)  # the mixin fills these from config.json
        if Path(model_id).is_dir():
            weights = Path(model_id) / WEIGHTS_FILE
        else:
            weights = Path(hf_hub_download(
                repo_id=model_id, filename=WEIGHTS_FILE, revision=revision, cache_dir=cache_dir,
                force_download=force_download, local_files_only=local_files_only, token=token,
            ))
        load_weights(model, weights)
        if model_config is not None:
            model.attach_config(model_config)
        return model.to(map_location).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
