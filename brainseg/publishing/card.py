"""The model card (``README.md`` of a Hub model repo): its front matter and sections in words, from the facts of
:mod:`brainseg.publishing.facts`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from brainseg.config import CALIBRATION_KEY, ModelConfig
from brainseg.evaluation.forms import SELECTION_FORMS
from brainseg.evaluation.metrics import METRICS
from brainseg.publishing.facts import LOG_FILES, TrainingInfo

LICENSE = "cc-by-nc-sa-4.0"
TAGS = ["image-segmentation", "medical-imaging", "brain-mri", "glioma", "unet", "pytorch", "safetensors"]
DATASET_NAME = "LGG MRI Segmentation (Kaggle, TCGA-LGG)"
DATASET_TYPE = "lgg-mri-segmentation"
# The input forms of brainseg.evaluation.forms in the card's words: (title, what the model is given).
FORM_TEXT = {
    "as_is": ("as is", "the Kaggle slice: pre-contrast T1, FLAIR, post-contrast T1, skull included"),
    "skull_stripped": ("skull-stripped", "everything outside a heuristic brain mask set to black"),
    "flair_only": ("FLAIR only", "the FLAIR in all three channels"),
    "flair_t1c": ("FLAIR + T1c", "the FLAIR in place of the pre-contrast T1"),
    "half_frame": ("half frame", "the slice shrunk to half its size in a black frame"),
    "stripped_flair_only": ("skull-stripped FLAIR only", "skull-stripped, the FLAIR in all three channels"),
    "rotated_90": ("rotated 90°", "the slice turned by a quarter"),
}
SEQUENCE_TITLES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1c"}  # brainseg.inference.volume channel names
CITATION = """@article{buda2019association,
  title   = {Association of genomic subtypes of lower-grade gliomas with shape features
             automatically extracted by a deep learning algorithm},
  author  = {Buda, Mateusz and Saha, Ashirbani and Mazurowski, Maciej A.},
  journal = {Computers in Biology and Medicine},
  volume  = {109},
  year    = {2019},
  doi     = {10.1016/j.compbiomed.2019.05.002}
}"""


def _percent(share: float) -> str:
    return f"{100 * share:.3g} %"


def _form_text(form: str) -> tuple[str, str]:
    """(title, what the model is given) of an input form; a form added to brainseg.evaluation.forms later gets
    its name."""
    return FORM_TEXT.get(form, (form.replace("_", " "), "see `brainseg.evaluation.forms`"))


def _form_title(form: str) -> str:
    return _form_text(form)[0]


def training_recipe(training: TrainingInfo) -> str | None:
    """The augmentation and checkpoint choice in plain words, from what ``train_config.json`` recorded
    (None when it recorded none of it)."""
    parts = []
    flips = {"random": "random horizontal flips", "offline": "every slice also mirrored (offline flips)",
             "none": "no flips"}
    if training.flip is not None:
        parts.append(flips.get(training.flip, f"flips: {training.flip}"))
    if training.augment == "affine_gamma":
        scale = ""
        if training.scale_range is not None:
            scale = f" ({training.scale_range[0]:g}–{training.scale_range[1]:g})"
        parts.append(f"random rotation/scale{scale}/shift + per-channel gamma")
    elif training.augment == "none":
        parts.append("no rotation/scale/intensity augmentation")
    elif training.augment is not None:
        parts.append(f"augmentation {training.augment}")
    if training.strip_prob:
        parts.append(f"skull-stripped with the heuristic brain mask on {_percent(training.strip_prob)} of slices")
    if training.missing_channel_prob:
        parts.append(f"T1 (or T1 and T1c) replaced by FLAIR on {_percent(training.missing_channel_prob)}")
    if training.acquisition:
        parts.append("MONAI bias field / low resolution / histogram shift / noise")
    weights_are_best = training.last_epoch is None and training.averaged_epochs is None
    if training.select_on == "forms" and weights_are_best:
        forms = ", ".join(_form_title(f) for f in training.selection_forms or SELECTION_FORMS)
        parts.append(f"checkpoint chosen on the mean over input forms ({forms}) of (slice Dice + volume Dice) / 2")
    elif training.select_on == "as_is" and weights_are_best:
        parts.append("checkpoint chosen on the validation slices as they are (slice Dice)")
    return "; ".join(parts) if parts else None


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
        *([_forms(evaluation)] if evaluation.get("forms") else []),
        *([_external(evaluation["external"])] if evaluation.get("external") else []),
        _training(training, config),
        _data_and_licence(),
    ]
    return "\n\n".join(sections).rstrip() + "\n"


def architecture_summary(config: ModelConfig, n_parameters: int) -> tuple[str, str]:
    """The network's short name (for the card title) and one phrase describing it, by ``config.arch``."""
    if config.arch == "segformer_mit_b0":
        return "SegFormer-B0 (Transformer)", (
            f"A 2D SegFormer-B0 (Mix-Transformer MiT-b0 encoder, all-MLP decoder at 1/4 resolution, logits upsampled "
            f"bilinearly; random init, no pretrained weights; {n_parameters:,} parameters)")
    if config.arch == "unet_mit_b0":
        return "U-Net with a MiT-b0 Transformer encoder", (
            f"A 2D U-Net decoder on a Mix-Transformer MiT-b0 encoder (random init, no pretrained weights; "
            f"{n_parameters:,} parameters)")
    return "U-Net", (f"A 2D U-Net ({config.depth} down/up levels, {config.base_channels} base channels, bilinear "
                     f"upsampling,\n{n_parameters:,} parameters)")


def calibration_line(config: ModelConfig) -> str | None:
    """One line saying where a model was calibrated (``brainseg calibrate``); None when it was not."""
    record = config.extra.get(CALIBRATION_KEY)
    if not isinstance(record, dict):
        return None
    loo = record.get("leave_one_out") or {}
    before, after = loo.get("uncalibrated_mean"), loo.get("calibrated_mean")
    measured = (f"; leave-one-scan-out mean 3D Dice {before:.3f} -> {after:.3f}"
                if isinstance(before, (int, float)) and isinstance(after, (int, float)) else "")
    was = record.get("source_threshold"), record.get("source_min_component_px")
    tune = record.get("fine_tune")
    tuned = (f"its {tune.get('part', '?')} fine-tuned ({tune.get('steps', '?')} steps), "
             if isinstance(tune, dict) else "")
    return (f"Calibrated on {record.get('n_scans', '?')} labelled scans of `{record.get('scans_folder', '?')}` "
            f"({record.get('channels', '?')}, {str(record.get('date', '?'))[:10]}) from `{record.get('source', '?')}`: "
            f"{tuned}threshold {was[0]} -> {config.threshold}, min. component {was[1]} -> {config.min_component_px} px"
            f"{measured}")


def _intro(repo_id: str, config: ModelConfig, n_parameters: int) -> str:
    norm = "per-image normalisation (mean, 2·std)" if config.normalize else "inputs scaled to [0, 1], no normalisation"
    post = f"threshold {config.threshold}"
    if config.min_component_px:
        post += f", connected components under {config.min_component_px} px removed"
    if config.flip_tta:
        post += ", horizontal-flip test-time augmentation"
    name, description = architecture_summary(config, n_parameters)
    calibrated = calibration_line(config)
    if calibrated:
        post += f" ({calibrated})"
    return f"""# {repo_id.split('/')[-1]}: {name} for FLAIR abnormality (lower-grade glioma) on brain MRI

> **Not for clinical use.** This is a research and teaching model. It is not a medical device, has not been
> clinically validated, and must not be used for diagnosis, treatment planning or any decision about a patient.

{description} that outlines the FLAIR abnormality on one axial brain-MRI slice.

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


def _forms(evaluation: dict[str, Any]) -> str:
    """The held-out slices in each input form (``brainseg.evaluation.scoring.forms_result``'s ``forms``)."""
    rows = []
    for form, report in evaluation["forms"].items():
        title, given = _form_text(form)
        rows.append(f"| {title} | {given} | {_fmt(report['slice_dice'])} | {_fmt(report['volume_dice'])} |")
    score = ""
    if evaluation.get("forms_score") is not None:
        chosen = [f for f in SELECTION_FORMS if f in evaluation["forms"]]
        score = (f"\n\nMean of (slice Dice + volume Dice) / 2 over {', '.join(_form_title(f) for f in chosen)}: "
                 f"**{_fmt(evaluation['forms_score'])}**.")
    first = next(iter(evaluation["forms"].values()))
    return f"""## Robustness: other input forms

The same held-out slices ({first['n_slices']} slices of {first['n_patients']} patients), each given to the model
in the forms a user may send instead of the Kaggle slice (made from the LGG slices by `brainseg.evaluation.forms`; the
model's own threshold and post-processing). Per-slice scores count an empty slice with an empty prediction as 1.

| Input form | What the model is given | Slice Dice | Volume Dice |
|---|---|---|---|
{chr(10).join(rows)}{score}"""


def _external(result: dict[str, Any]) -> str:
    """Per-subject 3D Dice on external NIfTI subjects (``brainseg.evaluation.external.evaluate_external``'s result)."""
    forms = list(result["forms"])
    rows = []
    for row in result["subjects"]:
        sequences = sorted({c for channels in row.get("channels", {}).values() for c in channels} - {"flair"})
        given = ", ".join(["FLAIR", *(SEQUENCE_TITLES.get(c, c) for c in sequences)])
        rows.append(f"| {row['name']} | {given} | " + " | ".join(_fmt(row["dice"][f], 3) for f in forms) + " |")
    rows.append(f"| **mean of {result['n_subjects']}** | | "
                + " | ".join(f"**{_fmt(result['mean_dice'][f], 3)}**" for f in forms) + " |")
    folder = Path(str(result["folder"])).name
    return f"""## External check

Whole-tumor 3D Dice (every label > 0) on {result['n_subjects']} external NIfTI subjects (folder `{folder}`), a
dataset other than the one the model learned from. These subjects were never used for training, tuning or
choosing the model or its post-processing. Each scan ran through the whole-scan pipeline (head crop, intensity
rule `{result.get('intensity', 'percentile')}`, threshold {result['threshold']}) with all the sequences it has (a
missing T1 / T1c gets the FLAIR) and with the FLAIR alone.
Their labels outline the whole tumor, which is close to, but not the same as, the FLAIR abnormality the model
was trained to outline.

| Subject | Sequences | {' | '.join(f'Dice, {form}' for form in forms)} |
|---|---|{'---:|' * len(forms)}
{chr(10).join(rows)}"""


def _training(training: TrainingInfo, config: ModelConfig) -> str:
    epochs = "not recorded"
    if training.epochs_run is not None or training.epochs_planned is not None:
        epochs = f"{training.epochs_run if training.epochs_run is not None else '?'} of "
        epochs += f"{training.epochs_planned if training.epochs_planned is not None else '?'} planned"
    if training.best_epoch is not None:
        best_on = "best validation score over input forms" if training.select_on == "forms" else "best validation Dice"
        epochs += f"; weights from epoch {training.best_epoch} ({best_on})"
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
        split_seed = training.split_seed if training.split_seed is not None else training.seed
        split_text = ("patient-level: the 11 held-out test patients are excluded, and "
                      f"{training.val_fraction if training.val_fraction is not None else 0.1:.0%} of the remaining "
                      f"patients (seed {split_seed}) form the validation set used to pick the checkpoint "
                      "and the post-processing")
    else:
        split_text = f"`{training.split}` (see the brainseg repository)"
    duration = _duration(training.seconds)
    if training.seconds is not None:
        duration += f" (sum of epoch times in `{training.log_file or LOG_FILES[0]}`)"
    command = f"```bash\n{training.command}\n```" if training.command else "Command not recorded."
    recipe = training_recipe(training)
    recipe_line = f"\n- **Augmentation and choice:** {recipe}." if recipe else ""
    return f"""## Training

- **Data:** Kaggle "LGG MRI Segmentation" (`kaggle_3m`), 110 patients, 3,929 slices with manual FLAIR masks.
- **Split:** {split_text}.
- **Epochs:** {epochs}.{recipe_line}
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
