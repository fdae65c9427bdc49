"""Compare the intensity rules of ``brainseg.inference.intensity`` on the validation patients as volumes, in every
input form.

    python -m benchmarks.intensity_rules --data-dir $DATA --model unet-generalist \
        --json /tmp/intensity_rules.json

Each validation patient of ``make_split(DATA, "patient", 0.1, 2026)`` (never a test or external one) is put in
each form of ``brainseg.evaluation.forms`` (as is, skull-stripped, FLAIR only, FLAIR + T1c, half frame = a small
brain in the frame, skull-stripped FLAIR only), made into in-memory volumes on a 0.9 x 0.9 x 2.5 mm RAS grid (as
``benchmarks.lgg_as_volumes``: a form without T1 / T1c gives only the channels it has) and run through
``predict_volume`` once per rule; the score is the 3D Dice per patient and its mean per form and rule.
Nothing is written but the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.lgg_as_volumes import AFFINE, ras_from_presented
from brainseg import Segmenter
from brainseg.evaluation.forms import SELECTION_FORMS, present
from brainseg.evaluation.volumes import evaluate_volume
from brainseg.inference.intensity import RULES
from brainseg.inference.volume import predict_volume
from brainseg.io.dataset import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, load_slices, make_split
from brainseg.io.volumes import Volume

FORMS = (*SELECTION_FORMS, "stripped_flair_only")
FLAIR_ALONE = ("flair_only", "stripped_flair_only")  # forms whose T1 / T1c are the FLAIR: only a FLAIR volume


def volumes(form: str, images: np.ndarray, name: str) -> tuple[Volume, Volume | None, Volume | None]:
    """The FLAIR, T1 and T1c volumes a scan in ``form`` would have (None: the form has no such sequence)."""
    def channel(index: int, suffix: str) -> Volume:
        return Volume(ras_from_presented(images[..., index]).astype(np.float32), AFFINE, f"{name}_{suffix}", "nifti")

    flair = channel(1, "flair")
    if form in FLAIR_ALONE:
        return flair, None, None
    if form == "flair_t1c":
        return flair, None, channel(2, "t1ce")
    return flair, channel(0, "t1"), channel(2, "t1ce")


def evaluate(segmenter: Segmenter, data_dir: Path, rules: list[str], forms: list[str], split_seed: int,
             val_fraction: float) -> dict:
    """{form: {rule: {patient: Dice}}} over the validation patients."""
    split = make_split(data_dir, "patient", val_fraction, split_seed)
    by_patient: dict[str, list] = {}
    for record in split.val:
        by_patient.setdefault(record.patient, []).append(record)
    scores: dict = {form: {rule: {} for rule in rules} for form in forms}
    for patient, records in sorted(by_patient.items()):
        images, masks = load_slices(records)
        for form in forms:
            shown, truth = present(form, images, masks)
            flair, t1, t1ce = volumes(form, shown, patient)
            truth_volume = ras_from_presented(truth)
            for rule in rules:
                prediction = predict_volume(segmenter, flair, t1, t1ce, intensity=rule)
                scores[form][rule][patient] = round(evaluate_volume(prediction, truth_volume).dice, 4)
            print(patient, form, {rule: scores[form][rule][patient] for rule in rules}, file=sys.stderr, flush=True)
    return scores


def markdown(scores: dict, rules: list[str]) -> str:
    lines = ["| form | " + " | ".join(rules) + " |", "|---|" + "---:|" * len(rules)]
    means = {rule: [] for rule in rules}
    for form, by_rule in scores.items():
        row = {rule: float(np.mean(list(by_rule[rule].values()))) for rule in rules}
        if form in SELECTION_FORMS:
            for rule in rules:
                means[rule].append(row[rule])
        lines.append(f"| {form} | " + " | ".join(f"{row[rule]:.4f}" for rule in rules) + " |")
    lines.append("| **mean of the selection forms** | "
                 + " | ".join(f"**{np.mean(means[rule]):.4f}**" for rule in rules) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--model", default="unet-generalist")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED)
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    segmenter = Segmenter.from_pretrained(args.model, backend=args.backend)
    started = time.perf_counter()
    scores = evaluate(segmenter, args.data_dir, args.rules, args.forms, args.split_seed, args.val_fraction)
    table = markdown(scores, args.rules)
    print(f"model {segmenter.source}, backend {segmenter.backend}, {time.perf_counter() - started:.0f} s\n")
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"model": str(segmenter.source), "scores": scores, "table": table},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
