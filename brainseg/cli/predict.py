"""Segment whole scans from the command line: ``brainseg predict FLAIR [FLAIR ...] --out-dir DIR``.

Each input is a NIfTI file, a DICOM series (folder or ``.zip``), a Kaggle patient folder, or a folder of
those (one subject per entry). Writes ``DIR/<subject>_mask.nii.gz`` (uint8 0/1, the input's exact shape and
affine) per volume, ``DIR/<subject>/<slice>_mask.png`` per patient folder, and with ``--json`` the numbers.
A mistake the user can fix ends in one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brainseg.cli.common import add_device_argument, one_line, parse_and_run
from brainseg.evaluation.volumes import evaluate_volume
from brainseg.fileio import atomic_write_text
from brainseg.inference.backends import BACKENDS, BackendError
from brainseg.inference.intensity import DEFAULT_RULE, RULES
from brainseg.inference.segmenter import Segmenter
from brainseg.inference.volume import VolumePrediction, predict_subject, save_mask
from brainseg.io.hub import ModelLoadError
from brainseg.io.subjects import SubjectInputs, find_subjects, is_patient_folder_input
from brainseg.io.volumes import VolumeError
from brainseg.registry import DEFAULT_MODEL_NAME, UNET_MODEL_NAME

USER_ERRORS = (VolumeError, ModelLoadError, BackendError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainseg predict",
        description="Segment FLAIR abnormality on whole scans: one mask per subject, tumor volume in mL.")
    parser.add_argument("inputs", nargs="*", metavar="FLAIR",
                        help="NIfTI file, DICOM series folder or .zip, Kaggle patient folder, or a folder of these "
                        "(with a cohort option also a BIDS tree)")
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for the masks")
    parser.add_argument("--t1", type=Path, help="pre-contrast T1 on the FLAIR's grid (one input only)")
    parser.add_argument("--t1ce", type=Path, help="post-contrast T1 on the FLAIR's grid (one input only)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--model", help="model folder or ORG/NAME[@REVISION] (default: the bundled model)")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: the model's tuned one)")
    parser.add_argument("--truth", type=Path, help="ground-truth label NIfTI (labels > 0 = tumor): adds Dice")
    parser.add_argument("--truth-glob", help="ground truth inside each subject folder, e.g. 'OTMultiClass*'")
    parser.add_argument("--no-crop", action="store_true", help="resize whole slices instead of the head's box")
    parser.add_argument("--flair-only", action="store_true",
                        help="use the FLAIR alone even where T1/T1ce are found or given (for comparisons)")
    parser.add_argument("--intensity", choices=RULES, default=None,
                        help="how each channel's intensities become the model's 8-bit slices "
                        "(brainseg.inference.intensity; docs/volumes.md): percentile80 / percentile = "
                        "the 80th / 99th percentile inside the head -> 160, "
                        "nyul = tissue percentiles, whitestripe = the tissue mode, zscore = mean and std inside the "
                        "head, each onto the LGG training slices' landmarks (default: the rule a calibrated model "
                        f"was calibrated under, else {DEFAULT_RULE})")
    add_device_argument(parser)
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="what runs the network: onnx = ONNX Runtime (CPU, fp32), torch = PyTorch, auto = ONNX "
                        "Runtime on the CPU when installed and equal to PyTorch within 1e-4, else PyTorch")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    cohort = parser.add_argument_group(
        "cohorts", "any of these runs the inputs as a cohort (brainseg.cohort.runner, docs/cohorts.md): one row per "
        "scan in a results table, a rerun skips the scans done with the same model/revision/threshold and retries "
        "failed ones")
    cohort.add_argument("--manifest", type=Path, help="CSV (header) or JSON lines listing the scans: 'flair' "
                        "(or 'input'/'path'), optional 'name', 't1', 't1ce', 'truth'")
    cohort.add_argument("--table", type=Path, help="the results table (CSV; default OUT_DIR/results.csv)")
    cohort.add_argument("--workers", type=int, help="scans at a time: processes on this machine, or Ray actors")
    cohort.add_argument("--threads", type=int, help="torch / ONNX Runtime threads per worker (default: this "
                        "machine's cores // --workers; on Ray also the CPUs each actor reserves)")
    cohort.add_argument("--engine", choices=("local", "ray"), help="local processes (default) or Ray "
                        "(pip install 'brainseg[cluster]'): a local Ray unless --address is given")
    cohort.add_argument("--address", help="Ray cluster to join ('auto' or HOST:PORT; --engine ray)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), _run, argv, USER_ERRORS)


def _run(args: argparse.Namespace) -> int:
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise VolumeError(f"--threshold {args.threshold}: give a probability between 0 and 1")
    if args.address and args.engine != "ray":
        raise VolumeError("--address names a Ray cluster: add --engine ray")
    if any(value is not None for value in (args.manifest, args.table, args.workers, args.engine)):
        from brainseg.cohort.runner import run_cohort

        args.workers, args.engine = 1 if args.workers is None else args.workers, args.engine or "local"
        return run_cohort(args)
    if not args.inputs:
        raise VolumeError("give at least one input (a FLAIR file or folder), or a --manifest")
    subjects = find_subjects(args.inputs, args.truth_glob)
    explicit = {"--t1": args.t1, "--t1ce": args.t1ce, "--truth": args.truth}
    given = [flag for flag, value in explicit.items() if value is not None]
    if given and len(subjects) > 1:
        raise VolumeError(f"{', '.join(given)} go with one input, but {len(subjects)} subjects were found: "
                          "run them one at a time (or use --truth-glob for ground truth in subject folders)")
    if subjects and given:
        subjects = [SubjectInputs(subjects[0].name, subjects[0].flair, args.t1 or subjects[0].t1,
                                  args.t1ce or subjects[0].t1ce, args.truth or subjects[0].truth)]
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, backend=args.backend)
    hint = outside_scan_hint(segmenter, subjects)
    if hint:
        print(hint, file=sys.stderr)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results, failed, used_names = [], 0, set()
    subject_bar = tqdm(subjects, desc="subjects", unit="subject", disable=args.quiet or len(subjects) < 2)
    for subject in subject_bar:
        name = _unique(subject.name, used_names)
        try:
            result = _run_subject(segmenter, subject, name, args)
        except VolumeError as exc:
            failed += 1
            prefix = f"{name}: " if len(subjects) > 1 else ""
            tqdm.write(f"error: {prefix}{one_line(exc)}", file=sys.stderr)
            continue
        results.append(result)
        tqdm.write(_describe(result))
    if args.json and results:
        atomic_write_text(args.json, json.dumps(_report(results), indent=2) + "\n")
    return 2 if failed else 0


def outside_scan_hint(segmenter: Segmenter, subjects: list[SubjectInputs]) -> str | None:
    """A note when the bundled U-Net alone (trained on whole-head LGG slices) is about to segment scans (NIfTI,
    DICOM) rather than Kaggle patient folders: the default model was trained for such scans."""
    scans = [s for s in subjects if not is_patient_folder_input(s)]
    if segmenter.name != UNET_MODEL_NAME or not scans:
        return None
    return (f"note: the {UNET_MODEL_NAME} model learned whole-head LGG slices; for skull-stripped or FLAIR-only scans "
            f"from other hospitals, the default model ({DEFAULT_MODEL_NAME}, trained for every input form) segments "
            "better (docs/generalization.md)")


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 2
    while candidate in used:
        candidate, n = f"{name}_{n}", n + 1
    used.add(candidate)
    return candidate


def _run_subject(segmenter: Segmenter, subject: SubjectInputs, name: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    bars: list[tqdm] = []  # opened at the first progress report, so a refused input prints no empty bar

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=name, total=total, unit="slice", leave=False, disable=args.quiet))
        bars[0].n = done
        bars[0].refresh()

    try:
        if is_patient_folder_input(subject) and (subject.t1 or subject.t1ce or subject.truth):
            raise VolumeError(f"{subject.flair.name} is a Kaggle patient folder: its slices hold all three "
                              "channels and its *_mask.tif files the ground truth (no --t1/--t1ce/--truth)")
        run = predict_subject(segmenter, subject, flair_only=args.flair_only, crop=not args.no_crop,
                              intensity=args.intensity, progress=progress)
        prediction, truth = run.prediction, run.truth
        mask_name = name if run.flair is None else f"{name}_mask.nii.gz"
        written = save_mask(prediction, str(args.out_dir / mask_name), args.threshold)
    finally:
        for bar in bars:
            bar.close()
    numbers = _numbers(prediction, name, written, truth, args.threshold, time.perf_counter() - started)
    numbers["backend"] = segmenter.backend
    return numbers


def _numbers(prediction: VolumePrediction, name: str, written: list, truth: np.ndarray | None,
             threshold: float | None, seconds: float) -> dict:
    numbers = prediction.summary(threshold)
    numbers["name"] = name
    numbers["seconds"] = round(seconds, 3)
    numbers["ms_per_slice"] = round(1000 * seconds / max(prediction.n_slices, 1), 2)
    numbers["output"] = str(written[0]) if len(written) == 1 else str(Path(written[0]).parent) if written else None
    if truth is not None:
        score = evaluate_volume(prediction, truth, threshold)
        numbers["dice"] = round(score.dice, 4)
        numbers["truth_voxels"] = score.truth_voxels
        if prediction.voxel_volume_ml is not None:
            numbers["truth_volume_ml"] = round(score.truth_voxels * prediction.voxel_volume_ml, 4)
    return numbers


def _describe(result: dict) -> str:
    volume = f"{result['volume_ml']:.2f} mL" if result["volume_ml"] is not None else f"{result['tumor_voxels']} px"
    largest_name = result["largest_slice_name"] or result["largest_slice"]
    largest = "" if result["largest_slice"] is None else f", largest on slice {largest_name}"
    dice = f", Dice {result['dice']:.3f}" if "dice" in result else ""
    return (f"{result['name']}: {volume} in {result['slices_with_tumor']} of {result['n_slices']} slices{largest}"
            f"{dice} ({result['seconds']:.1f} s) -> {result['output']}")


def _report(results: list[dict]) -> dict:
    """One subject: its numbers; several: ``{"subjects": [...], "n_subjects", "mean_dice" (with ground truth)}``."""
    if len(results) == 1:
        return results[0]
    report: dict = {"n_subjects": len(results), "subjects": results}
    scored = [r["dice"] for r in results if "dice" in r]
    if scored:
        report["mean_dice"] = round(float(np.mean(scored)), 4)
    return report


if __name__ == "__main__":
    sys.exit(main())
