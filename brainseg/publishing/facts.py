"""The facts a model card reports, read from where they are recorded: the training run (``train_config.json``
and the epoch log: :class:`TrainingInfo`, the ``brainseg train`` command that reproduces it) and the evaluation JSON
(checked against the model's config; its summary stored in ``config.json``)."""
from __future__ import annotations

import csv
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainseg.config import ModelConfig
from brainseg.evaluation.forms import SELECTION_FORMS
from brainseg.evaluation.metrics import METRICS

REQUIRED_KEYS = [m.key for m in METRICS] + ["n_slices", "n_tumor_slices", "n_patients", "per_patient_dice"]
TRAIN_FIELDS_SKIPPED = ("data_dir", "out_dir", "device", "stop_after_epochs", "max_train_slices", "max_val_slices",
                        "world_size")
LOG_FILES = ("log.csv", "training_log.csv")  # a run folder's epoch log; the bundled models keep it under the second


@dataclass(frozen=True)
class TrainingInfo:
    """What the card says about training, read from ``train_config.json`` and ``log.csv``."""

    command: str | None = None
    epochs_planned: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    last_epoch: int | None = None  # set when the weights are the run's final epoch (``RUN/last``)
    averaged_epochs: list[int] | None = None  # [first, last] epoch averaged into ``RUN/swa``
    seconds: float | None = None
    hardware: str | None = None
    split: str | None = None
    val_fraction: float | None = None
    seed: int | None = None
    split_seed: int | None = None  # chooses the validation patients (runs before it was a field used ``seed``)
    log_file: str | None = None  # the epoch log ``seconds`` and ``epochs_run`` were read from
    # the recipe, each as recorded in train_config.json (None: not recorded, e.g. a run older than the field)
    flip: str | None = None
    augment: str | None = None
    scale_range: list[float] | None = None  # [scale_min, scale_max] of the affine augmentation
    strip_prob: float | None = None
    missing_channel_prob: float | None = None
    acquisition: bool | None = None
    select_on: str | None = None
    selection_forms: list[str] | None = None  # with select_on "forms": the forms validated on (log.csv columns)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def find_training_dir(model_folder: Path) -> Path | None:
    """The run folder with ``train_config.json``: the model folder itself or its parent (``RUN/best``)."""
    for candidate in (model_folder, model_folder.parent):
        if (candidate / "train_config.json").is_file():
            return candidate
    return None


def _shell_value(value: Any) -> str:
    """A command-line value: ``$DATA``-style placeholders as they are, anything else shell-quoted when needed."""
    text = str(value)
    return text if re.fullmatch(r"\$\w+", text) else shlex.quote(text)


def _portable_path(path: str, placeholder: str) -> str:
    """A path for a published command: an absolute one (this machine's folders) becomes ``placeholder``."""
    return placeholder if Path(path).is_absolute() else path


def train_command(train_config: dict[str, Any]) -> str:
    """The ``brainseg train`` command line that reproduces a saved ``train_config.json``.

    Absolute folders are replaced by ``$DATA`` / ``OUT_DIR`` / ``INIT_MODEL`` (no machine's paths in a card);
    an empty string (e.g. ``init_from`` unset) is the default and left out."""
    world_size = int(train_config.get("world_size", 1))  # processes under torchrun (issue 19)
    launcher = "brainseg train" if world_size <= 1 else f"torchrun --nproc_per_node={world_size} -m brainseg train"
    data_dir = _portable_path(str(train_config.get("data_dir", "$DATA")), "$DATA")
    out_dir = _portable_path(str(train_config.get("out_dir", "OUT_DIR")), "OUT_DIR")
    parts = [launcher, f"--data-dir {_shell_value(data_dir)}", f"--out-dir {_shell_value(out_dir)}"]
    for name, value in train_config.items():
        if name in TRAIN_FIELDS_SKIPPED and not (name.startswith("max_") and value):
            continue
        if value == "":
            continue
        if name == "amp":  # recorded before --precision replaced --amp / --no-amp
            name, value = "precision", "bf16" if value else "fp32"
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif name == "init_from":
            parts.append(f"{flag} {_shell_value(_portable_path(str(value), 'INIT_MODEL'))}")
        else:
            parts.append(f"{flag} {_shell_value(value)}")
    return " \\\n    ".join(parts)


def _logged_forms(columns: list[str]) -> list[str]:
    """The input forms a ``select_on=forms`` run validated on: its ``val_<form>_slice_dice`` / ``_volume_dice``
    columns."""
    forms = [m.group(1) for c in columns if (m := re.fullmatch(r"val_(.+)_volume_dice", c))]
    return [form for form in forms if f"val_{form}_slice_dice" in columns]


def read_training_info(run_dir: Path | None, config: ModelConfig, hardware: str | None = None,
                       command: str | None = None) -> TrainingInfo:
    """Collect the training facts; anything not recorded stays None."""
    train_config: dict[str, Any] = {}
    rows: list[dict[str, str]] = []
    columns: list[str] = []
    log_file = None
    if run_dir is not None:
        train_config = json.loads((run_dir / "train_config.json").read_text())
        log = next((run_dir / name for name in LOG_FILES if (run_dir / name).is_file()), None)
        if log is not None:
            with open(log, newline="") as fh:
                reader = csv.DictReader(fh)
                rows, columns, log_file = list(reader), list(reader.fieldnames or []), log.name
    select_on = train_config.get("select_on")
    selection_forms = None
    if select_on == "forms":
        selection_forms = _logged_forms(columns) or list(SELECTION_FORMS)
    scale_range = None
    if "scale_min" in train_config and "scale_max" in train_config:
        scale_range = [float(train_config["scale_min"]), float(train_config["scale_max"])]
    seconds = sum(float(r.get("seconds") or 0) for r in rows) if rows else None
    best = config.extra.get("best_epoch")
    last = config.extra.get("epoch") if best is None else None
    averaged = config.extra.get("averaged_epochs")
    return TrainingInfo(
        command=command or (train_command(train_config) if train_config else None),
        epochs_planned=train_config.get("epochs"),
        epochs_run=len(rows) if rows else None,
        best_epoch=int(best) if best is not None else None,
        last_epoch=int(last) if last is not None else None,
        averaged_epochs=[int(averaged[0]), int(averaged[1])] if averaged else None,
        seconds=seconds,
        hardware=hardware or train_config.get("hardware"),
        # a model without a training run (e.g. calibrated) may record the split whose validation patients tuned it
        split=train_config.get("split", config.extra.get("split")),
        val_fraction=train_config.get("val_fraction", config.extra.get("val_fraction")),
        seed=train_config.get("seed"),
        split_seed=train_config.get("split_seed", config.extra.get("split_seed")),
        log_file=log_file if rows else None,
        flip=train_config.get("flip"),
        augment=train_config.get("augment"),
        scale_range=scale_range,
        strip_prob=train_config.get("strip_prob"),
        missing_channel_prob=train_config.get("missing_channel_prob"),
        acquisition=train_config.get("acquisition"),
        select_on=select_on,
        selection_forms=selection_forms,
    )


def check_evaluation(evaluation: dict[str, Any], config: ModelConfig) -> None:
    """Refuse an evaluation JSON that lacks metrics or was run with other post-processing than ``config``."""
    missing = [key for key in REQUIRED_KEYS if key not in evaluation]
    if missing:
        raise ValueError(f"evaluation JSON lacks {', '.join(missing)}: write it with `brainseg evaluate --json`")
    evaluated = evaluation.get("model_config") or {}
    published = config.to_dict()
    differs = [k for k in ("arch", "base_channels", "depth", "in_channels", "input_size", "normalize", "threshold",
                           "min_component_px", "flip_tta") if k in evaluated and evaluated[k] != published[k]]
    external = evaluation.get("external") or {}
    if "threshold" in external and external["threshold"] != published["threshold"]:
        differs.append("external threshold")
    if differs:
        raise ValueError(f"the evaluation used a different {', '.join(differs)} than the model's config.json: "
                         "re-run the evaluation on this model")


def metrics_summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The held-out metrics stored in ``config.json`` (``extra["metrics"]``)."""
    keys = [m.key for m in METRICS] + ["n_slices", "n_tumor_slices", "n_patients", "ms_per_slice"]
    summary = {k: _json_number(evaluation[k]) for k in keys if k in evaluation}
    summary["patients"] = sorted(evaluation.get("per_patient_dice", {}))
    if "hardware" in evaluation:
        summary["inference_hardware"] = evaluation["hardware"]
    if evaluation.get("forms"):
        summary["forms"] = {form: {k: _json_number(report[k]) for k in ("slice_dice", "volume_dice")}
                            for form, report in evaluation["forms"].items()}
        summary["forms_score"] = _json_number(evaluation.get("forms_score"))
    if evaluation.get("external"):
        external = evaluation["external"]
        summary["external"] = {"folder": Path(str(external["folder"])).name, "n_subjects": external["n_subjects"],
                               "mean_dice": external["mean_dice"]}
    return summary


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
