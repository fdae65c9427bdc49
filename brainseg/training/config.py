"""A training run's settings: :class:`TrainConfig` (``train_config.json``), the valid values of its string
options (:data:`CHOICES`) and the named recipes (:data:`PRESETS`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from brainseg.config import PRECISIONS, TRAINABLE_ARCHITECTURES, ModelConfig
from brainseg.io.dataset import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, SPLIT_PROTOCOLS, Split, make_split

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("constant", "onecycle", "cosine")
LOSSES = ("bce", "bce_dice")  # bce_dice: BCE + (1 - soft Dice)
FLIPS = ("none", "random", "offline")  # offline: the article's doubled set; random: each slice flipped 50 %
AUGMENTS = ("none", "affine_gamma")  # affine_gamma: random rotation/scale/shift + per-channel gamma
# What chooses best/ on validation: the slices as they are (slice Dice), or the mean over the input forms of
# brainseg.evaluation.forms.SELECTION_FORMS of (slice Dice + volume Dice) / 2 (brainseg.evaluation.scoring.forms_score).
SELECT_ON = ("as_is", "forms")
DISTILL_VIEWS = ("augmented", "clean")
# The valid values of TrainConfig's string options: checked there, offered as choices by brainseg/cli/train.py.
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": tuple(OPTIMIZERS), "schedule": SCHEDULES, "loss": LOSSES, "flip": FLIPS, "augment": AUGMENTS,
    "split": SPLIT_PROTOCOLS, "arch": TRAINABLE_ARCHITECTURES, "select_on": SELECT_ON, "precision": PRECISIONS,
    "distill_view": DISTILL_VIEWS,
}
AT_LEAST_ONE = ("base_channels", "epochs", "batch_size", "checkpoint_every", "dist_timeout_s")
NOT_NEGATIVE = (
    "weight_decay", "max_train_slices", "max_val_slices", "stop_after_epochs", "swa_start", "distill_weight",
)
PROBABILITIES = ("strip_prob", "missing_channel_prob", "quarter_turn_prob")


@dataclass
class TrainConfig:
    """A training run; saved as ``train_config.json`` in the output folder.

    The string options take the values in :data:`CHOICES`; anything else is refused when the config is made.
    """

    data_dir: str
    out_dir: str
    arch: str = "unet"  # brainseg.config.TRAINABLE_ARCHITECTURES; base_channels and depth size the U-Net only
    base_channels: int = 16
    depth: int = 4
    normalize: bool = True
    epochs: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    optimizer: str = "adamw"  # adam | adamw
    weight_decay: float = 1e-4
    schedule: str = "onecycle"  # constant | onecycle | cosine
    loss: str = "bce_dice"  # bce | bce_dice
    flip: str = "random"  # none | random | offline
    augment: str = "none"  # none | affine_gamma (random rotation/scale/shift + per-channel gamma)
    scale_min: float = 0.9  # affine_gamma's zoom range: 0.5 puts the head in half the frame
    scale_max: float = 1.1
    strip_prob: float = 0.0  # share of training slices skull-stripped (brainseg.training.augment.random_skull_strip)
    missing_channel_prob: float = 0.0  # share whose T1 / both T1s are replaced by FLAIR (random_missing_channels)
    acquisition: bool = False  # MONAI bias field, low resolution, histogram shift, noise (random_acquisition)
    quarter_turn_prob: float = 0.0  # share of slices turned by 90/180/270 degrees (+ upside down half the time)
    # distillation: a trained model (folder, bundled name or Hub id) whose probabilities on each batch
    # are soft targets beside the ground truth; loss += distill_weight * BCE(student, teacher probability)
    distill_from: str = ""
    distill_weight: float = 1.0
    # what the teacher sees: the student's augmented batch, or the same slices only flipped ("clean": no strip,
    # warp, acquisition or missing channel), its probabilities then warped, stripped and turned with the masks
    distill_view: str = "augmented"
    select_on: str = "as_is"  # as_is | forms: what picks best/ on validation (SELECT_ON)
    split: str = "patient"  # patient | article
    val_fraction: float = DEFAULT_VAL_FRACTION
    empty_fraction: float = 1.0  # share of tumor-free training slices drawn each epoch
    checkpoint_every: int = 1
    tune_postprocessing: bool = True
    seed: int = 2026  # weight init, sampling order, augmentation
    split_seed: int = DEFAULT_SPLIT_SEED  # validation patients; apart from seed, so a fine-tune keeps its start's split
    device: str = "auto"
    precision: str = "bf16"  # fp32 | bf16 (autocast, where the device supports it)
    max_train_slices: int = 0  # 0 = all; small values for smoke tests
    max_val_slices: int = 0
    stop_after_epochs: int = 0  # stop early (still resumable), 0 = run to the end
    init_from: str = ""  # model folder whose weights start the run (fine-tuning); "" = random init
    swa_start: int = 0  # average the weights of every epoch from this one on into swa/ (0 = off)
    # under torchrun: batch_size is per process (effective batch = batch_size x processes), lr is used as given
    sync_bn: bool = False  # torchrun on GPUs: BatchNorm statistics over the whole effective batch (SyncBatchNorm)
    dist_timeout_s: int = 1800  # torchrun: how long a rank waits for the others (e.g. rank 0 validating) before failing

    def __post_init__(self) -> None:
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(valid)}")
        for name in AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {self.empty_fraction}")
        for name in PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min} and {self.scale_max}")

    @property
    def bf16(self) -> bool:
        """Whether the network computes in bfloat16 autocast (``precision`` bf16)."""
        return self.precision == "bf16"

    def model_config(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, base_channels=self.base_channels, depth=self.depth,
                           normalize=self.normalize)

    def data_split(self) -> Split:
        """This run's train / validation / test split (:func:`brainseg.io.dataset.make_split`)."""
        return make_split(self.data_dir, self.split, self.val_fraction, self.split_seed)


# The article's recipe, exactly: width 64, BCE, Adam 1e-4, 30 epochs, a checkpoint every 2 epochs.
PRESETS: dict[str, dict] = {
    "article": dict(
        base_channels=64, depth=4, epochs=30, batch_size=16, lr=1e-4, optimizer="adam", weight_decay=0.0,
        schedule="constant", loss="bce", flip="none", checkpoint_every=2, precision="fp32", tune_postprocessing=False,
    ),
    "default": {},
}
