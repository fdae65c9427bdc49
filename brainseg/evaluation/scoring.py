"""Running a Segmenter over slices and summarising the metrics."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from brainseg.config import ModelConfig
from brainseg.evaluation.forms import SELECTION_FORMS, present
from brainseg.evaluation.metrics import METRICS, Report, SliceCounts, summarize
from brainseg.inference.postprocess import binarize
from brainseg.inference.segmenter import Segmenter, describe_device
from brainseg.io.dataset import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_VAL_FRACTION,
    SliceRecord,
    load_slices,
    make_split,
    require_masks,
    scan_dataset,
)

# Which slices under a data folder to evaluate: every one, or one part of the patient split.
EVAL_SPLITS = ("all", "test", "val", "train")


def count_slices(
    probas: np.ndarray, masks: np.ndarray, patients: Sequence[str], threshold: float, min_component_px: int
) -> list[SliceCounts]:
    return [
        SliceCounts.of(patient, binarize(proba, threshold, min_component_px), mask)
        for proba, mask, patient in zip(probas, masks, patients)
    ]


def evaluate_arrays(
    segmenter: Segmenter, images: np.ndarray, masks: np.ndarray, patients: Sequence[str]
) -> Report:
    """Metrics of ``segmenter`` on (N, H, W, 3) uint8 slices with (N, H, W) bool masks."""
    probas = segmenter.predict_proba_batch(images)
    cfg = segmenter.config
    return summarize(count_slices(probas, masks, patients, cfg.threshold, cfg.min_component_px))


def evaluate_forms(
    segmenter: Segmenter, images: np.ndarray, masks: np.ndarray, patients: Sequence[str],
    forms: Sequence[str] = SELECTION_FORMS,
) -> dict[str, Report]:
    """:func:`evaluate_arrays` on the slices in each input form of :mod:`brainseg.evaluation.forms`, by form name."""
    return {form: evaluate_arrays(segmenter, *present(form, images, masks), patients) for form in forms}


def forms_score(reports: dict[str, Report]) -> float:
    """The number a robust model is chosen on: the mean over forms of (slice Dice + volume Dice) / 2."""
    return float(np.mean([(r.slice_dice + r.volume_dice) / 2 for r in reports.values()]))


def forms_result(reports: dict[str, Report]) -> dict[str, Any]:
    """``{"forms": {form: Report.to_dict()}, "forms_score": ...}`` (the score over the selection forms given)."""
    selection = {form: reports[form] for form in SELECTION_FORMS if form in reports}
    return {"forms": {form: report.to_dict() for form, report in reports.items()},
            "forms_score": forms_score(selection) if selection else None}


def forms_markdown_table(result: dict[str, Any]) -> str:
    """One row per input form: slice Dice, tumor-slice Dice, empty-slice FP, volume Dice."""
    lines = ["| input form | slice Dice | tumor-slice Dice | empty-slice FP | volume Dice |", "|---|---|---|---|---|"]
    for form, report in result["forms"].items():
        lines.append(f"| {form} | {report['slice_dice']:.4f} | {report['tumor_slice_dice']:.4f} | "
                     f"{100 * report['empty_fp_rate']:.1f} % | {report['volume_dice']:.4f} |")
    if result.get("forms_score") is not None:
        lines.append(f"\nforms score (mean of (slice + volume Dice) / 2 over {', '.join(SELECTION_FORMS)}): "
                     f"{result['forms_score']:.4f}")
    return "\n".join(lines) + "\n"


def timed_probabilities(segmenter: Segmenter, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities for every slice and the mean milliseconds per slice (one slice at a time)."""
    segmenter.predict_proba(images[0])  # warm-up
    started = time.perf_counter()
    probas = np.stack([segmenter.predict_proba(img) for img in images])
    return probas, 1000 * (time.perf_counter() - started) / len(images)


# The post-processing grid searched on validation. The thresholds reach down to 0.05: with a sharp model the
# optimum can lie below 0.3 (it did for the bundled model), and a grid that stops at its edge hides it.
THRESHOLD_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_COMPONENT_GRID = (0, 10, 20, 40, 80, 120, 160, 240, 320)


@dataclasses.dataclass(frozen=True)
class PostprocessingChoice:
    """The threshold and minimum component size :func:`search_postprocessing` chose, and the reports they give."""

    threshold: float
    min_component_px: int
    reports: dict[str, Report]

    @property
    def score(self) -> float:
        """:func:`forms_score` of the reports (one form: its (slice Dice + volume Dice) / 2)."""
        return forms_score(self.reports)


def _counts_per_min_size(
    probas: np.ndarray, masks: np.ndarray, patients: Sequence[str], threshold: float, min_sizes: Sequence[int]
) -> dict[int, list[SliceCounts]]:
    """``count_slices(probas, masks, patients, threshold, m)`` for every ``m`` in ``min_sizes``, labelling each
    slice's components once (the same 8-connected components :func:`brainseg.inference.postprocess.binarize` drops)."""
    counts: dict[int, list[SliceCounts]] = {m: [] for m in min_sizes}
    for proba, mask, patient in zip(probas, masks, patients):
        truth = np.asarray(mask, bool)
        n, labels, stats, _ = cv2.connectedComponentsWithStats((proba >= threshold).astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        overlaps = np.bincount(labels[truth], minlength=n)[1:]
        for m in min_sizes:
            kept = areas >= m if m > 1 else np.ones_like(areas, bool)
            counts[m].append(SliceCounts(patient, int(overlaps[kept].sum()), int(areas[kept].sum()), int(truth.sum())))
    return counts


def search_postprocessing(
    probas: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    patients: Sequence[str],
    thresholds: Sequence[float] = THRESHOLD_GRID,
    min_sizes: Sequence[int] = MIN_COMPONENT_GRID,
) -> PostprocessingChoice:
    """The threshold and minimum component size that maximise :func:`forms_score` over the input forms given
    (``probas[form]``: (N, H, W) probabilities of the slices in that form, ``masks[form]`` their truth). With one
    form that is its slice Dice + volume Dice. The first best in grid order wins a tie.

    Only ever call this with validation slices: the chosen values go into a model config.
    """
    best: PostprocessingChoice | None = None
    for threshold in thresholds:
        counts = {form: _counts_per_min_size(probas[form], masks[form], patients, threshold, min_sizes)
                  for form in probas}
        for min_px in min_sizes:
            choice = PostprocessingChoice(threshold, min_px,
                                          {form: summarize(counts[form][min_px]) for form in probas})
            if best is None or choice.score > best.score + 1e-9:
                best = choice
    if best is None:
        raise ValueError("empty threshold or minimum-size grid")
    return best


def tune_postprocessing(
    segmenter: Segmenter,
    images: np.ndarray,
    masks: np.ndarray,
    patients: Sequence[str],
    thresholds: Sequence[float] = THRESHOLD_GRID,
    min_sizes: Sequence[int] = MIN_COMPONENT_GRID,
    flip_tta_options: Sequence[bool] = (False, True),
    forms: Sequence[str] = ("as_is",),
) -> tuple[ModelConfig, Report]:
    """Pick threshold, minimum component size and flip TTA that maximise :func:`forms_score` on the validation
    slices in ``forms`` (by default the slices as they are: slice Dice + volume Dice; with
    :data:`brainseg.evaluation.forms.SELECTION_FORMS` one threshold for every input form), once per flip TTA option.

    ``flip_tta_options=(False,)`` keeps inference single-pass (what a latency budget may require).

    Returns the chosen config and its report on the slices as they are (the first form). Only ever call this
    with validation slices: the chosen values are stored in the model config.
    """
    presented = {form: present(form, images, masks) for form in forms}
    best_cfg, best_report, best_score = segmenter.config, None, -1.0
    for flip_tta in flip_tta_options:
        trial = Segmenter(segmenter.model, dataclasses.replace(segmenter.config, flip_tta=flip_tta),
                          device=str(segmenter.device), bf16=segmenter.bf16)
        probas = {form: trial.predict_proba_batch(form_images) for form, (form_images, _) in presented.items()}
        choice = search_postprocessing(probas, {form: truth for form, (_, truth) in presented.items()}, patients,
                                       thresholds, min_sizes)
        if choice.score > best_score + 1e-9:
            best_score, best_report = choice.score, choice.reports[forms[0]]
            best_cfg = dataclasses.replace(
                segmenter.config, threshold=choice.threshold, min_component_px=choice.min_component_px,
                flip_tta=flip_tta, extra=dict(segmenter.config.extra),
            )
    return best_cfg, best_report


def tune_on_validation_patients(
    segmenter: Segmenter, data_dir: str | Path, *, split_seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION, flip_tta_options: Sequence[bool] = (False, True),
    forms: Sequence[str] = ("as_is",),
) -> tuple[ModelConfig, dict[str, Any]]:
    """:func:`tune_postprocessing` on the validation patients of the split ``split_seed``/``val_fraction`` make
    under ``data_dir`` (the full dataset). Returns the tuned config (``extra["tuned_on"]`` says on what) and its
    validation report as a dict without the per-patient scores (what the CLIs print)."""
    split = make_split(data_dir, "patient", val_fraction, split_seed)
    if not split.val:
        raise ValueError("no validation patients under --data-dir: give the full dataset")
    images, masks = load_slices(list(split.val))
    tuned, validation = tune_postprocessing(segmenter, images, masks, [r.patient for r in split.val],
                                            flip_tta_options=flip_tta_options, forms=forms)
    in_forms = "" if tuple(forms) == ("as_is",) else f" in {len(forms)} input forms ({', '.join(forms)})"
    tuned.extra["tuned_on"] = f"{len(split.patients('val'))} validation patients, {len(split.val)} slices{in_forms}"
    report = validation.to_dict()
    report.pop("per_patient_dice")
    return tuned, report


def select_slices(
    data_dir: str | Path,
    split: str = "all",
    *,
    split_seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> list[SliceRecord]:
    """Every slice under ``data_dir`` (``all``), or the ``test``/``val``/``train`` part of the patient split
    made with ``split_seed`` and ``val_fraction`` (pass the training run's own to get its validation)."""
    if split == "all":
        records = [r for p in require_masks(scan_dataset(data_dir), data_dir) for r in p.slices]
    elif split in EVAL_SPLITS:
        records = list(getattr(make_split(data_dir, "patient", val_fraction, split_seed), split))
    else:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(EVAL_SPLITS)}")
    if not records:
        raise ValueError(f"no slices for split {split!r} under {data_dir}")
    return records


def evaluate_model(
    segmenter: Segmenter,
    data_dir: str | Path,
    split: str = "all",
    *,
    split_seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    figures_dir: str | Path | None = None,
    forms: Sequence[str] = (),
) -> dict[str, Any]:
    """Metrics of ``segmenter`` (with its own threshold and post-processing) on the slices
    :func:`select_slices` picks, timed one slice at a time.

    Returns :meth:`Report.to_dict` plus ``ms_per_slice``, ``hardware``, ``model``, ``model_config``,
    ``data_dir`` and ``split`` (and ``split_seed``/``val_fraction`` for ``val``/``train``: they choose
    those patients). With ``figures_dir``, writes ``examples.png`` and ``patient_dice.png`` there. With
    ``forms`` (e.g. :data:`brainseg.evaluation.forms.REPORT_FORMS`), also the same slices in those input forms, as
    :func:`forms_result` (``as_is`` is the report above, not a second run).
    """
    records = select_slices(data_dir, split, split_seed=split_seed, val_fraction=val_fraction)
    images, masks = load_slices(records)
    probas, ms_per_slice = timed_probabilities(segmenter, images)
    cfg = segmenter.config
    counts = count_slices(probas, masks, [r.patient for r in records], cfg.threshold, cfg.min_component_px)
    report = summarize(counts)
    result = report.to_dict()
    result.update(
        ms_per_slice=ms_per_slice,
        hardware=f"{describe_device(segmenter.device)}, bf16={segmenter.bf16}",
        model=str(segmenter.source),
        model_config=cfg.to_dict(),
        data_dir=str(data_dir),
        split=split,
    )
    if split in ("val", "train"):
        result.update(split_seed=split_seed, val_fraction=val_fraction)
    if forms:
        others = evaluate_forms(segmenter, images, masks, [r.patient for r in records],
                                [form for form in forms if form != "as_is"])
        result.update(forms_result({form: report if form == "as_is" else others[form] for form in forms}))
    if figures_dir is not None:
        save_figures(Path(figures_dir), segmenter, records, images, masks, probas, counts, report)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """An :func:`evaluate_model` result as a Markdown table: the metrics, the counts, the speed."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {m.label} | {result[m.key]:.4f} |" for m in METRICS]
    lines.append(f"| slices / tumor slices / patients | {result['n_slices']} / {result['n_tumor_slices']} / "
                 f"{result['n_patients']} |")
    lines.append(f"| inference ms per slice ({result['hardware']}) | {result['ms_per_slice']:.1f} |")
    return "\n".join(lines) + "\n"


def pick_examples(masks: np.ndarray, count: int = 8) -> list[int]:
    """Largest-tumor slices first, then a few tumor-free ones."""
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    tumor = [int(i) for i in np.argsort(-areas) if areas[i] > 0]
    empty = [int(i) for i in np.flatnonzero(areas == 0)]
    picked = tumor[: count * 3 // 4]
    picked += empty[:: max(1, len(empty) // max(1, count - len(picked)))][: count - len(picked)]
    return picked


def save_figures(
    folder: Path, segmenter: Segmenter, records: Sequence[SliceRecord], images: np.ndarray, masks: np.ndarray,
    probas: np.ndarray, counts: Sequence[SliceCounts], report: Report,
) -> None:
    """``examples.png`` (a few slices, truth vs prediction) and ``patient_dice.png`` in ``folder``."""
    from brainseg.evaluation.figures import (  # matplotlib: only loaded when figures are asked for
        example_grid,
        patient_dice_plot,
    )

    folder.mkdir(parents=True, exist_ok=True)
    chosen = pick_examples(masks)
    preds = [segmenter.to_mask(probas[i]) for i in chosen]
    titles = [f"{records[i].patient[5:12]} #{records[i].index} Dice {counts[i].dice:.2f}" for i in chosen]
    example_grid(images[chosen], masks[chosen], np.stack(preds), titles, folder / "examples.png")
    patient_dice_plot(report.per_patient_dice, folder / "patient_dice.png")
