"""An epoch's validation (:class:`Validation`: the slices as they are and, with ``select_on=forms``, every
input form) and the ``log.csv`` columns and row that record it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from brainseg.evaluation.forms import SELECTION_FORMS
from brainseg.evaluation.metrics import Report
from brainseg.evaluation.scoring import evaluate_arrays, evaluate_forms, forms_score
from brainseg.inference.segmenter import Segmenter
from brainseg.training.config import TrainConfig
from brainseg.training.data import TrainingData

LOG_FIELDS = [
    "epoch", "train_loss", "lr", "val_slice_dice", "val_slice_iou", "val_tumor_slice_dice",
    "val_empty_fp_rate", "val_volume_dice", "seconds",
]


@dataclass
class Validation:
    """An epoch's validation: the slices as they are and, with ``select_on=forms``, every input form."""

    report: Report
    forms: dict[str, Report] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """What chooses ``best/``: slice Dice as is, or :func:`brainseg.evaluation.scoring.forms_score`."""
        return forms_score(self.forms) if self.forms else self.report.slice_dice


def validate(cfg: TrainConfig, model: nn.Module, data: TrainingData, device: torch.device) -> Validation:
    """Metrics of ``model`` on the validation slices (threshold 0.5, no post-processing), in every input form
    of :data:`brainseg.evaluation.forms.SELECTION_FORMS` when ``cfg.select_on`` is ``forms``."""
    segmenter = Segmenter(model, cfg.model_config(), device=str(device), bf16=cfg.bf16)
    if cfg.select_on == "forms":
        forms = evaluate_forms(segmenter, data.val_images, data.val_masks, data.val_patients, SELECTION_FORMS)
        result = Validation(forms["as_is"], forms)
    else:
        result = Validation(evaluate_arrays(segmenter, data.val_images, data.val_masks, data.val_patients))
    model.train()
    return result


def log_fields(cfg: TrainConfig) -> list[str]:
    """The columns of ``log.csv``: :data:`LOG_FIELDS`, plus each form's numbers with ``select_on=forms``."""
    if cfg.select_on != "forms":
        return LOG_FIELDS
    per_form = [f"val_{form}_{metric}" for form in SELECTION_FORMS for metric in ("slice_dice", "volume_dice")]
    return [*LOG_FIELDS[:-1], *per_form, "val_forms_score", LOG_FIELDS[-1]]


def log_row(epoch: int, train_loss: float, lr: float, validation: Validation, seconds: float) -> dict:
    """One ``log.csv`` row (:func:`log_fields`)."""
    report = validation.report
    row = {
        "epoch": epoch, "train_loss": round(train_loss, 5), "lr": f"{lr:.3g}",
        "val_slice_dice": round(report.slice_dice, 4), "val_slice_iou": round(report.slice_iou, 4),
        "val_tumor_slice_dice": round(report.tumor_slice_dice, 4),
        "val_empty_fp_rate": round(report.empty_fp_rate, 4), "val_volume_dice": round(report.volume_dice, 4),
    }
    for form, form_report in validation.forms.items():
        row[f"val_{form}_slice_dice"] = round(form_report.slice_dice, 4)
        row[f"val_{form}_volume_dice"] = round(form_report.volume_dice, 4)
    if validation.forms:
        row["val_forms_score"] = round(validation.score, 4)
    row["seconds"] = round(seconds, 1)
    return row
