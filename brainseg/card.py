"""The model card (``README.md`` of a Hub model repo) and the training facts it reports."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from .config import ModelConfig
from .metrics import METRICS

LICENSE = "cc-by-nc-sa-4.0"
TAGS = ["image-segmentation", "medical-imaging", "brain-mri", "glioma", "unet", "pytorch", "safetensors"]
DATASET_NAME = "LGG MRI Segmentation (Kaggle, TCGA-LGG)"
DATASET_TYPE = "lgg-mri-segmentation"
REQUIRED_KEYS = [m.key for m in METRICS] + ["n_slices", "n_tumor_slices", "n_patients", "per_patient_dice"]
TRAIN_FIELDS_SKIPPED = ("data_dir", "out_dir", "device", "stop_after_epochs", "max_train_slices", "max_val_slices",
                        "world_size")
CITATION = """@article{buda2019association,
  title   = {Association of genomic subtypes of lower-grade gliomas with shape features
             automatically extracted by a deep learning algorithm},
  author  = {Buda, Mateusz and Saha, Ashirbani and Mazurowski, Maciej A.},
  journal = {Computers in Biology and Medicine},
  volume  = {109},
  year    = {2019},
  doi     = {10.1016/j.compbiomed.2019.05.002}
}"""


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

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def find_training_dir(model_folder: Path) -> Path | None:
    """The run folder with ``train_config.json``: the model folder itself or its parent (``RUN/best``)."""
    for candidate in (model_folder, model_folder.parent):
        if (candidate / "train_config.json").is_file():
            return candidate
    return None


def train_command(train_config: dict[str, Any]) -> str:
    """The ``python -m train.train`` command line that reproduces a saved ``train_config.json``."""
    world_size = int(train_config.get("world_size", 1))  # processes under torchrun (issue 19)
    launcher = "python -m train.train" if world_size <= 1 else f"torchrun --nproc_per_node={world_size} -m train.train"
    parts = [launcher, f"--data-dir {train_config.get('data_dir', 'DATA_DIR')}",
             f"--out-dir {train_config.get('out_dir', 'OUT_DIR')}"]
    for name, value in train_config.items():
        if name in TRAIN_FIELDS_SKIPPED and not (name.startswith("max_") and value):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts.append(f"{flag} {value}")
    return " \\\n    ".join(parts)


def read_training_info(run_dir: Path | None, config: ModelConfig, hardware: str | None = None,
                       command: str | None = None) -> TrainingInfo:
    """Collect the training facts; anything not recorded stays None."""
    train_config: dict[str, Any] = {}
    rows: list[dict[str, str]] = []
    if run_dir is not None:
        train_config = json.loads((run_dir / "train_config.json").read_text())
        log = run_dir / "log.csv"
        if log.is_file():
            with open(log, newline="") as fh:
                rows = list(csv.DictReader(fh))
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
        split=train_config.get("split"),
        val_fraction=train_config.get("val_fraction"),
        seed=train_config.get("seed"),
    )


def check_evaluation(evaluation: dict[str, Any], config: ModelConfig) -> None:
    """Refuse an evaluation JSON that lacks metrics or was run with other post-processing than ``config``."""
    missing = [key for key in REQUIRED_KEYS if key not in evaluation]
    if missing:
        raise ValueError(f"evaluation JSON lacks {', '.join(missing)}: write it with `python -m train.evaluate --json`")
    evaluated = evaluation.get("model_config") or {}
    published = config.to_dict()
    differs = [k for k in ("arch", "base_channels", "depth", "in_channels", "input_size", "normalize", "threshold",
                           "min_component_px", "flip_tta") if k in evaluated and evaluated[k] != published[k]]
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
    return summary


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def card_data(repo_id: str, evaluation: dict[str, Any]) -> ModelCardData:
    """Front matter: licence, tags, library, and the held-out metrics as model-index results."""
    results = [
        EvalResult(task_type="image-segmentation", task_name="FLAIR abnormality segmentation",
                   dataset_type=DATASET_TYPE, dataset_name=DATASET_NAME, dataset_split="held-out test patients",
                   metric_type=m.kind, metric_name=m.title, metric_value=round(float(evaluation[m.key]), 4))
        for m in METRICS
        if not math.isnan(float(evaluation[m.key]))
    ]
    return ModelCardData(license=LICENSE, library_name="brainseg", pipeline_tag="image-segmentation", tags=TAGS,
                         model_name=repo_id.split("/")[-1], eval_results=results or None)


def build_card(repo_id: str, config: ModelConfig, evaluation: dict[str, Any], training: TrainingInfo,
               n_parameters: int) -> str:
    """The full ``README.md`` text."""
    data = card_data(repo_id, evaluation)
    sections = [
        f"---\n{data.to_yaml()}\n---",
        _intro(repo_id, config, n_parameters),
        _usage(repo_id),
        _evaluation(evaluation),
        _training(training, config),
        _data_and_licence(),
    ]
    return "\n\n".join(sections).rstrip() + "\n"


def _intro(repo_id: str, config: ModelConfig, n_parameters: int) -> str:
    norm = "per-image normalisation (mean, 2·std)" if config.normalize else "inputs scaled to [0, 1], no normalisation"
    post = f"threshold {config.threshold}"
    if config.min_component_px:
        post += f", connected components under {config.min_component_px} px removed"
    if config.flip_tta:
        post += ", horizontal-flip test-time augmentation"
    return f"""# {repo_id.split('/')[-1]}: U-Net for FLAIR abnormality (lower-grade glioma) on brain MRI

> **Not for clinical use.** This is a research and teaching model. It is not a medical device, has not been
> clinically validated, and must not be used for diagnosis, treatment planning or any decision about a patient.

A 2D U-Net ({config.depth} down/up levels, {config.base_channels} base channels, bilinear upsampling,
{n_parameters:,} parameters) that outlines the FLAIR abnormality on one axial brain-MRI slice.

- **Input:** a {config.input_size}x{config.input_size}x{config.in_channels} slice whose channels are pre-contrast,
  FLAIR and post-contrast, as in the Kaggle LGG set (other sizes are resized); {norm}.
- **Output:** a probability map; the mask uses {post} (all stored in `config.json`).
- **Files:** `model.safetensors` (weights), `config.json` (architecture, preprocessing, threshold, input size,
  training data and split, held-out metrics under `extra`), `evaluation.json` (the full evaluation).

## Intended use

Demonstrations, teaching and research on the Kaggle LGG MRI dataset or images prepared the same way
(skull-stripped, co-registered pre-contrast / FLAIR / post-contrast slices of adult lower-grade glioma).

**Out of scope:** any clinical use; other tumour types, other sequences or channel orders, 3D volumes, and
scans from different protocols without re-validation. The model was trained on patients of one public archive (the
Kaggle LGG set: 110 patients, five institutions, of which 89 trained it) and will not generalise reliably
beyond data like it."""


def _usage(repo_id: str) -> str:
    return f"""## How to use

```python
from brainseg import Segmenter

# "{repo_id}@<commit or tag>" pins a revision
segmenter = Segmenter.from_pretrained("{repo_id}")
# rgb_slice: H x W x 3 uint8 (pre-contrast, FLAIR, post-contrast) -> H x W bool
mask = segmenter.predict_mask(rgb_slice)
# the exact commit that was loaded
print(segmenter.source, segmenter.revision)
```

The bare PyTorch network is `segmenter.model`."""


def _evaluation(evaluation: dict[str, Any]) -> str:
    rows = [f"| {m.title} | {_fmt(evaluation[m.key])} |" for m in METRICS]
    rows.append(f"| Slices / tumor slices / patients | {evaluation['n_slices']} / {evaluation['n_tumor_slices']} / "
                f"{evaluation['n_patients']} |")
    if "ms_per_slice" in evaluation:
        rows.append(f"| Inference time per slice | {_fmt(evaluation['ms_per_slice'], 1)} ms "
                    f"({evaluation.get('hardware', 'hardware not recorded')}) |")
    per_patient = sorted(evaluation["per_patient_dice"].items())
    patients = "\n".join(f"| {name} | {_fmt(dice, 3)} |" for name, dice in per_patient)
    return f"""## Evaluation

Measured on {evaluation['n_patients']} held-out patients (listed below) that were never used for training
or for choosing the checkpoint and post-processing. Per-slice scores count a slice with no abnormality and an
empty prediction as 1.

| Metric | Value |
|---|---|
{chr(10).join(rows)}

<details><summary>Volume Dice per patient</summary>

| Patient | Volume Dice |
|---|---|
{patients}

</details>"""


def _training(training: TrainingInfo, config: ModelConfig) -> str:
    epochs = "not recorded"
    if training.epochs_run is not None or training.epochs_planned is not None:
        epochs = f"{training.epochs_run if training.epochs_run is not None else '?'} of "
        epochs += f"{training.epochs_planned if training.epochs_planned is not None else '?'} planned"
    if training.best_epoch is not None:
        epochs += f"; weights from epoch {training.best_epoch} (best validation Dice)"
    elif training.last_epoch is not None:
        epochs += f"; weights from epoch {training.last_epoch}, the run's last"
    elif training.averaged_epochs is not None:
        first, last = training.averaged_epochs
        epochs += (f"; weights are the average of epochs {first}–{last} (stochastic weight averaging, "
                   "BatchNorm statistics recomputed on the training slices)")
    if training.best_epoch is None and config.extra.get("weights_note"):
        epochs += f" ({config.extra['weights_note']})"
    if training.split is None:
        split_text = "not recorded (no train_config.json next to the weights)"
    elif training.split == "patient":
        split_text = ("patient-level: the 11 held-out test patients are excluded, and "
                      f"{training.val_fraction if training.val_fraction is not None else 0.1:.0%} of the remaining "
                      f"patients (seed {training.seed}) form the validation set used to pick the checkpoint "
                      "and the post-processing")
    else:
        split_text = f"`{training.split}` (see the brainseg repository)"
    duration = _duration(training.seconds)
    if training.seconds is not None:
        duration += " (sum of epoch times in `log.csv`)"
    command = f"```bash\n{training.command}\n```" if training.command else "Command not recorded."
    return f"""## Training

- **Data:** Kaggle "LGG MRI Segmentation" (`kaggle_3m`), 110 patients, 3,929 slices with manual FLAIR masks.
- **Split:** {split_text}.
- **Epochs:** {epochs}.
- **Training time:** {duration}.
- **Hardware:** {training.hardware or 'not recorded'}.
- **Post-processing** (chosen on validation patients): threshold {config.threshold},
  minimum component {config.min_component_px} px, flip TTA {'on' if config.flip_tta else 'off'}.

{command}"""


def _data_and_licence() -> str:
    return f"""## Dataset credit and licence

Trained on the LGG MRI Segmentation dataset by Mateusz Buda (Kaggle), built from
[The Cancer Imaging Archive (TCIA)](https://www.cancerimagingarchive.net/) **TCGA-LGG** collection, with
masks from: M. Buda, A. Saha, M. A. Mazurowski, "Association of genomic subtypes of lower-grade gliomas with
shape features automatically extracted by a deep learning algorithm", *Computers in Biology and Medicine*
109 (2019). Please cite it when you use this model:

```bibtex
{CITATION}
```

The dataset is distributed under **CC BY-NC-SA 4.0**; these weights are derived from it and are released
under the same licence ([CC BY-NC-SA 4.0](https://creativecommons.org/licenses/by-nc-sa/4.0/)):
attribution, non-commercial use only, share alike."""
