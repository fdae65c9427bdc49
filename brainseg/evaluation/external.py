"""Generalization check on external NIfTI subjects: 3D whole-tumor Dice per subject, once per input form.

A folder holds one sub-folder per subject (found by :func:`brainseg.io.subjects.find_subjects`): a FLAIR NIfTI,
optionally T1 / post-contrast T1 on its grid, and one label NIfTI (every label > 0 = whole tumor, e.g. BraTS).
Each subject goes through the whole-scan pipeline (:func:`brainseg.inference.volume.predict_volume`, head crop, the
model's own threshold) once per form in :data:`FORMS` and is scored with
:func:`brainseg.evaluation.volumes.evaluate_volume`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.evaluation.volumes import evaluate_volume
from brainseg.inference.intensity import model_rule
from brainseg.inference.volume import predict_volume
from brainseg.io.subjects import SubjectInputs, find_subjects
from brainseg.io.volumes import VolumeError, load_label_volume, load_volume

ALL_CHANNELS = "all channels"  # the FLAIR with whatever T1 / T1c the subject has (missing ones get the FLAIR)
FLAIR_ONLY = "flair only"  # the FLAIR in all three channels, even where T1 / T1c exist
FORMS = (ALL_CHANNELS, FLAIR_ONLY)
# Tried in order when no truth glob is given; the first that matches exactly one file in every subject folder wins.
# Case-sensitive: BRATS 2013/2015 "OTMultiClass", BraTS 2018+ "*_seg", other sets "*label*".
DEFAULT_TRUTH_GLOBS = ("OTMultiClass*.nii*", "*seg*.nii*", "*label*.nii*")


def find_labelled_subjects(folder: str | Path, truth_glob: str | None = None) -> tuple[list[SubjectInputs], str]:
    """The subjects under ``folder`` with their label files, and the glob that found the labels.

    Without ``truth_glob`` the patterns of :data:`DEFAULT_TRUTH_GLOBS` are tried in order. Raises
    :class:`VolumeError` when the folder has no subject or some subject has no label file.
    """
    folder = Path(folder)
    patterns = (truth_glob,) if truth_glob else DEFAULT_TRUTH_GLOBS
    subjects, used = None, patterns[0]
    for pattern in patterns:
        try:
            subjects, used = find_subjects([folder], pattern), pattern
            break
        except VolumeError:
            if truth_glob:
                raise
    if subjects is None:
        find_subjects([folder])  # the folder's own problem (missing, nothing in it, no FLAIR) in its own words
        raise VolumeError(f"{folder}: no label file found: none of {', '.join(DEFAULT_TRUTH_GLOBS)} matches exactly "
                          "one file in every subject folder: name the label file with --external-truth-glob")
    unlabelled = [s.name for s in subjects if s.truth is None]
    if unlabelled:
        raise VolumeError(f"{folder}: no label file for {', '.join(unlabelled)} (looked for "
                          f"{' / '.join(patterns)}): give one folder per subject, each holding its FLAIR and one "
                          "label NIfTI (name it with --external-truth-glob)")
    return subjects, used


def evaluate_external(
    segmenter,
    folder: str | Path,
    truth_glob: str | None = None,
    forms: Sequence[str] = FORMS,
    *,
    on_subject: Callable[[dict[str, Any]], None] | None = None,
    intensity: str | None = None,
) -> dict[str, Any]:
    """Whole-tumor 3D Dice of ``segmenter`` on every labelled subject under ``folder``, per input form.

    Returns a JSON-able dict: ``folder``, ``truth_glob`` (the one used), ``forms``, ``threshold``, ``model``,
    ``n_subjects``, ``mean_dice`` {form: mean over subjects} and ``subjects``: per subject ``name``,
    ``truth_voxels``, and {form: value} dicts ``dice``, ``predicted_voxels``, ``channels``; ``intensity`` is
    the rule of :mod:`brainseg.inference.intensity` every volume went through (None: the model's,
    :func:`~brainseg.inference.intensity.model_rule`).
    ``on_subject`` is called with each subject's entry when it is done (for progress lines).
    """
    unknown = [form for form in forms if form not in FORMS]
    if unknown or not forms:
        raise ValueError(f"forms {list(forms)!r}: give one or more of {', '.join(FORMS)}")
    subjects, used_glob = find_labelled_subjects(folder, truth_glob)
    intensity = intensity or model_rule(segmenter.config)
    rows = []
    for subject in subjects:
        row = _evaluate_subject(segmenter, subject, tuple(forms), intensity)
        rows.append(row)
        if on_subject:
            on_subject(row)
    return {
        "folder": str(folder),
        "truth_glob": used_glob,
        "forms": list(forms),
        "crop": "head",
        "intensity": intensity,
        "threshold": segmenter.config.threshold,
        "model": str(getattr(segmenter, "source", "") or "model"),
        "n_subjects": len(rows),
        "mean_dice": {form: round(float(np.mean([r["dice"][form] for r in rows])), 4) for form in forms},
        "subjects": rows,
    }


def _evaluate_subject(segmenter, subject: SubjectInputs, forms: tuple[str, ...], intensity: str) -> dict[str, Any]:
    started = time.perf_counter()
    flair = load_volume(subject.flair)
    truth = load_label_volume(subject.truth, flair)
    t1 = None if subject.t1 is None else load_volume(subject.t1)
    t1ce = None if subject.t1ce is None else load_volume(subject.t1ce)
    row: dict[str, Any] = {"name": subject.name, "truth_voxels": int(truth.sum()), "dice": {},
                           "predicted_voxels": {}, "channels": {}}
    done: dict[tuple, tuple] = {}  # a subject with the FLAIR alone runs once for both forms
    for form in forms:
        key = (None, None) if form == FLAIR_ONLY else (subject.t1, subject.t1ce)
        if key not in done:
            prediction = (predict_volume(segmenter, flair, intensity=intensity) if form == FLAIR_ONLY
                          else predict_volume(segmenter, flair, t1, t1ce, intensity=intensity))
            done[key] = (evaluate_volume(prediction, truth), list(prediction.channels))
            del prediction
        score, channels = done[key]
        row["dice"][form] = round(score.dice, 4)
        row["predicted_voxels"][form] = score.predicted_voxels
        row["channels"][form] = channels
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def external_markdown_table(result: dict[str, Any]) -> str:
    """An :func:`evaluate_external` result as Markdown: one row per subject, the mean, one Dice column per form."""
    forms = result["forms"]
    lines = [f"Whole-tumor 3D Dice (labels > 0) on {result['folder']}, threshold {result['threshold']}, head crop, "
             f"intensity rule {result.get('intensity', 'percentile')}:",
             "",
             "| subject | truth voxels | " + " | ".join(f"Dice, {form}" for form in forms) + " |",
             "|---|---:|" + "---:|" * len(forms)]
    for row in result["subjects"]:
        lines.append(f"| {row['name']} | {row['truth_voxels']} | "
                     + " | ".join(f"{row['dice'][form]:.4f}" for form in forms) + " |")
    lines.append(f"| **mean of {result['n_subjects']}** | | "
                 + " | ".join(f"**{result['mean_dice'][form]:.4f}**" for form in forms) + " |")
    return "\n".join(lines) + "\n"
