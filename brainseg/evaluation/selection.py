"""Choosing among trained models, and means of their probabilities, on the validation patients in every input form.

A candidate is one model or the mean of several models' probabilities (what :mod:`brainseg.ensemble` builds,
each member with its own flip TTA). Every model runs once per input form; each candidate gets its own
threshold and minimum component size (:func:`brainseg.evaluation.scoring.search_postprocessing`) and is ranked on the
forms score. Only validation patients are read: held-out patients never take part in a choice.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.evaluation.forms import SELECTION_FORMS, present
from brainseg.evaluation.scoring import MIN_COMPONENT_GRID, THRESHOLD_GRID, PostprocessingChoice, search_postprocessing
from brainseg.inference.segmenter import Segmenter
from brainseg.io.dataset import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, load_slices, make_split

CANDIDATE_SEPARATOR = "+"


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's members and the post-processing chosen for it with its reports per form."""

    members: tuple[str, ...]
    choice: PostprocessingChoice

    @property
    def name(self) -> str:
        return f" {CANDIDATE_SEPARATOR} ".join(self.members)

    def to_dict(self) -> dict:
        return {"members": list(self.members), "forms_score": self.choice.score,
                "threshold": self.choice.threshold, "min_component_px": self.choice.min_component_px,
                "forms": {form: {"slice_dice": r.slice_dice, "volume_dice": r.volume_dice}
                          for form, r in self.choice.reports.items()}}


def parse_candidate(text: str) -> tuple[str, ...]:
    """``"unet+runs/x/best"`` -> ``("unet", "runs/x/best")``: the models whose probabilities are
    averaged (one name: that model alone)."""
    members = tuple(part.strip() for part in text.split(CANDIDATE_SEPARATOR))
    if not all(members):
        raise ValueError(f"candidate {text!r} has an empty member: write models joined by "
                         f"'{CANDIDATE_SEPARATOR}', e.g. unet{CANDIDATE_SEPARATOR}runs/segformer/best")
    if len(set(members)) != len(members):
        raise ValueError(f"candidate {text!r} names a model twice")
    return members


def compare_candidates(
    candidates: Sequence[Sequence[str]],
    data_dir: str | Path,
    *,
    split_seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    forms: Sequence[str] = SELECTION_FORMS,
    thresholds: Sequence[float] = THRESHOLD_GRID,
    min_sizes: Sequence[int] = MIN_COMPONENT_GRID,
    backend: str = "auto",
    device: str = "auto",
) -> list[CandidateResult]:
    """Each candidate (a sequence of model sources) scored on the validation patients of the split
    ``split_seed``/``val_fraction`` make under ``data_dir``, best forms score first; every model runs on ``device``
    with ``backend``."""
    if not candidates:
        raise ValueError("give at least one candidate")
    split = make_split(data_dir, "patient", val_fraction, split_seed)
    if not split.val:
        raise ValueError("no validation patients under the data folder: give the full dataset")
    images, masks = load_slices(list(split.val))
    patients = [r.patient for r in split.val]
    presented = {form: present(form, images, masks) for form in forms}
    probas: dict[str, dict[str, np.ndarray]] = {}
    for source in dict.fromkeys(member for candidate in candidates for member in candidate):
        segmenter = Segmenter.from_pretrained(source, device=device, backend=backend)
        probas[source] = {form: segmenter.predict_proba_batch(form_images).astype(np.float16)
                          for form, (form_images, _) in presented.items()}
    results = []
    for members in candidates:
        mean = {form: np.mean([probas[m][form] for m in members], axis=0, dtype=np.float32) for form in forms}
        choice = search_postprocessing(mean, {form: presented[form][1] for form in forms}, patients,
                                       thresholds, min_sizes)
        results.append(CandidateResult(tuple(members), choice))
    return sorted(results, key=lambda r: -r.choice.score)


def candidates_markdown_table(results: Sequence[CandidateResult]) -> str:
    """One row per candidate: slice / volume Dice in each form, the chosen post-processing, the forms score."""
    forms = list(results[0].choice.reports)
    lines = ["| candidate | " + " | ".join(forms) + " | threshold / min px | forms score |",
             "|---" * (len(forms) + 3) + "|"]
    for rank, result in enumerate(results):
        cells = [f"{r.slice_dice:.3f} / {r.volume_dice:.3f}" for r in result.choice.reports.values()]
        score = f"{result.choice.score:.4f}"
        lines.append(f"| {result.name} | " + " | ".join(cells) +
                     f" | {result.choice.threshold:g} / {result.choice.min_component_px} | "
                     f"{f'**{score}**' if rank == 0 else score} |")
    return "\n".join(lines) + "\n"
