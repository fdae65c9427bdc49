"""Adapt a model to a new site from a few labelled scans: ``brainseg calibrate --model NAME|FOLDER
--scans DIR [--truth-glob PATTERN] --out-dir FOLDER``.

Runs the model once per scan, chooses the threshold and minimum component size that maximise mean 3D Dice over
the scans (:mod:`brainseg.calibration.fit`), reports by leave-one-scan-out what that is worth, and writes a new model
folder (the source's files, ``config.json`` with the chosen values and a ``calibration`` record) that loads
wherever a model folder loads. Exit status: 0 written; 2 a user error (too few or unlabelled scans, a bad
folder or model: one ``error:`` line); 3 leave-one-out says calibration does not help (nothing written).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from brainseg.calibration.finetune import (
    PARTS,
    FineTuneSettings,
    features_and_tables,
    fine_tune_and_choose,
    fine_tune_leave_one_out,
    settings_record,
)
from brainseg.calibration.fit import (
    DEFAULT_MIN_GAIN,
    CalibrationError,
    Choice,
    Grid,
    ScanTable,
    calibrated_config,
    choice_dict,
    choose,
    find_scans,
    leave_one_out,
    scan_tables,
    write_calibrated,
)
from brainseg.evaluation.external import ALL_CHANNELS, FLAIR_ONLY
from brainseg.fileio import atomic_write_text
from brainseg.inference.backends import BACKENDS, BackendError
from brainseg.inference.intensity import DEFAULT_RULE, RULES, model_rule
from brainseg.inference.segmenter import Segmenter
from brainseg.io.hub import ModelLoadError, resolve_model
from brainseg.io.volumes import VolumeError

USER_ERRORS = (CalibrationError, VolumeError, ModelLoadError, BackendError, OSError)
NO_GAIN_STATUS = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainseg calibrate",
        description="Calibrate a model's threshold and minimum component size to a site's labelled scans; reports "
        "leave-one-scan-out 3D Dice and writes a calibrated model folder only when that says it helps.")
    parser.add_argument("--model", help="model to calibrate: bundled name, folder or ORG/NAME[@REV] (default: the "
                        "bundled default)")
    parser.add_argument("--scans", required=True, type=Path,
                        help="folder with one sub-folder per labelled scan (NIfTI FLAIR [+ T1/T1c] + label NIfTI, "
                        "or Kaggle patient folders)")
    parser.add_argument("--truth-glob", help="the label file in each scan folder, e.g. 'OTMultiClass*' (labels > 0 "
                        "= tumor; default: the first of OTMultiClass*, *seg*, *label* found in every folder)")
    parser.add_argument("--out-dir", required=True, type=Path, help="new folder for the calibrated model")
    parser.add_argument("--flair-only", action="store_true",
                        help="calibrate for FLAIR alone (T1/T1c ignored), as predict --flair-only runs")
    parser.add_argument("--intensity", choices=RULES, default=None,
                        help="the intensity rule the scans run under (brainseg.inference.intensity; default as "
                        f"predict: a calibrated model's own, else {DEFAULT_RULE}); the calibrated model records it "
                        "and predict, cohorts and the app then run it under that rule")
    parser.add_argument("--min-gain", type=float, default=DEFAULT_MIN_GAIN,
                        help=f"leave-one-out mean 3D Dice gain needed to write the folder (default {DEFAULT_MIN_GAIN})")
    parser.add_argument("--fine-tune", nargs="?", const=FineTuneSettings.part, choices=PARTS,
                        help="also train the network's last part on the scans' slices before choosing the threshold "
                        f"(head: the 1x1 head; last-block: the last decoder block + head; default "
                        f"{FineTuneSettings.part}); leave-one-out fine-tunes without the held-out scan")
    parser.add_argument("--fine-tune-steps", type=int, default=FineTuneSettings.steps,
                        help=f"Adam steps of the fine-tune (default {FineTuneSettings.steps}; seeded)")
    parser.add_argument("--json", type=Path, help="write the report here (also when calibration is refused)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="what runs the network (as predict)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return run(args, "brainseg calibrate " + shlex.join(argv))
    except USER_ERRORS as exc:
        print(f"error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, command: str) -> int:
    """The whole calibration; returns the exit status."""
    started = time.perf_counter()
    subjects = find_scans(args.scans, args.truth_glob)
    resolved = resolve_model(args.model)
    settings = FineTuneSettings(args.fine_tune, args.fine_tune_steps) if args.fine_tune else None
    segmenter = Segmenter.from_resolved(resolved, device=args.device, backend="torch" if settings else args.backend)
    start = (segmenter.config.threshold, segmenter.config.min_component_px)
    args.intensity = args.intensity or model_rule(segmenter.config)
    grid = Grid().including(*start)
    print(f"calibrating {segmenter.description} (threshold {start[0]:g}, min. component {start[1]} px) on "
          f"{len(subjects)} scans of {args.scans} (intensity rule {args.intensity})", file=sys.stderr)
    if settings:
        scans, tables = features_and_tables(segmenter, subjects, settings.part, grid, flair_only=args.flair_only,
                                            intensity=args.intensity, on_scan=_print_scan(grid, start))
    else:
        tables = scan_tables(segmenter, subjects, grid, flair_only=args.flair_only, intensity=args.intensity,
                             on_scan=_print_scan(grid, start))
    searched = time.perf_counter()
    loo = leave_one_out(tables, grid, start)
    choice = choose(tables, grid, start)
    predict_seconds = sum(table.predict_seconds for table in tables)
    report = _report(args, command, segmenter, tables, loo, choice, start, grid)
    tuned = None
    if settings:
        print(loo_table(loo), file=sys.stderr)
        tuned, choice = _fine_tune(segmenter, scans, settings, grid, start, report)
        loo = report["record"]["leave_one_out"]
    total = time.perf_counter() - started
    report["seconds"] = {"predict": round(predict_seconds, 2), "total": round(total, 2),
                         "choice_and_leave_one_out": round(time.perf_counter() - searched, 3),
                         "ratio_to_predict": round(total / max(predict_seconds, 1e-9), 2)}
    print(loo_table(loo), file=sys.stderr)
    helps = loo["gain"] >= args.min_gain
    report["written"] = str(args.out_dir) if helps else None
    if helps:
        config = calibrated_config(segmenter.config, choice, report["record"])
        write_calibrated(resolved.folder, args.out_dir, config, report, tuned)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if not helps:
        print(f"error: leave-one-scan-out says calibration does not help on these scans (mean 3D Dice "
              f"{loo['uncalibrated_mean']:.4f} -> {loo['calibrated_mean']:.4f}, gain {loo['gain']:+.4f} < "
              f"--min-gain {args.min_gain}): the model is kept as it is, nothing written", file=sys.stderr)
        return NO_GAIN_STATUS
    print(f"threshold {start[0]:g} -> {choice.threshold:g}, min. component {start[1]} -> {choice.min_component_px} "
          f"px; wrote {args.out_dir} ({report['seconds']['total']:.1f} s, of which {predict_seconds:.1f} s "
          "running the model)", file=sys.stderr)
    return 0


def _fine_tune(segmenter: Segmenter, scans: list, settings: FineTuneSettings, grid: Grid, start: tuple[float, int],
               report: dict[str, Any]):
    """Leave-one-out of fine-tune + threshold, then both on all scans; the report's record says what was done
    (its ``leave_one_out`` becomes the fine-tune's, the threshold-only one is kept beside it)."""
    began = time.perf_counter()
    print(f"fine-tuning the {settings.part} ({settings.steps} steps) by leave-one-scan-out:", file=sys.stderr)
    loo = fine_tune_leave_one_out(segmenter.model, scans, settings, grid, start, on_fold=_print_fold)
    loo_seconds = time.perf_counter() - began
    alone = report["record"]["leave_one_out"]
    if loo["calibrated_mean"] < alone["calibrated_mean"]:
        print(f"note: by leave-one-scan-out the fine-tune does worse than the threshold alone (mean 3D Dice "
              f"{loo['calibrated_mean']:.4f} vs {alone['calibrated_mean']:.4f}): consider calibrating without "
              "--fine-tune", file=sys.stderr)
    tuned, choice = fine_tune_and_choose(segmenter.model, scans, settings, grid, start)
    record = report["record"]
    record["threshold_only_leave_one_out"] = record["leave_one_out"]
    record["leave_one_out"] = loo
    record["chosen_on_all"] = choice_dict(choice)
    record["fine_tune"] = {**settings_record(segmenter.model, settings),
                           "seconds": round(time.perf_counter() - began - loo_seconds, 1),
                           "leave_one_out_seconds": round(loo_seconds, 1)}
    return tuned, choice


def _print_fold(row: dict[str, Any]) -> None:
    print(f"  without {row['name']}: 3D Dice {row['uncalibrated']:.4f} -> {row['calibrated']:.4f} (fine-tuned, "
          f"threshold {row['threshold']:g} / {row['min_component_px']} px; {row['fine_tuned_own']:.4f} at the "
          f"model's own; {row['seconds']:.0f} s)", file=sys.stderr)


def _print_scan(grid: Grid, start: tuple[float, int]):
    def show(table: ScanTable) -> None:
        dice = table.dice()
        print(f"  {table.name}: {table.truth_voxels} labelled voxels, 3D Dice {dice[grid.index(*start)]:.4f} at the "
              f"model's threshold, best {dice.max():.4f} ({table.predict_seconds:.1f} s)", file=sys.stderr)
    return show


def _report(args: argparse.Namespace, command: str, segmenter: Segmenter, tables: list[ScanTable],
            loo: dict[str, Any], choice: Choice, start: tuple[float, int], grid: Grid) -> dict[str, Any]:
    """The JSON report; its ``record`` (what the calibrated config keeps) is the short form."""
    record = {
        "source": segmenter.description,
        "source_threshold": start[0],
        "source_min_component_px": start[1],
        "scans_folder": args.scans.name,
        "scans": [table.name for table in tables],
        "n_scans": len(tables),
        "channels": FLAIR_ONLY if args.flair_only else ALL_CHANNELS,
        "intensity": args.intensity,
        "chosen_on_all": choice_dict(choice),
        "leave_one_out": loo,
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return {"record": record, "grid": {"thresholds": list(grid.thresholds), "min_component_px": list(grid.min_sizes)}}


def loo_table(loo: dict[str, Any]) -> str:
    """The leave-one-scan-out result as Markdown: per scan, Dice before and after, the values chosen without it."""
    lines = ["| held-out scan | uncalibrated 3D Dice | calibrated (chosen on the others) | threshold | min. px |",
             "|---|---:|---:|---:|---:|"]
    for row in loo["per_scan"]:
        lines.append(f"| {row['name']} | {row['uncalibrated']:.4f} | {row['calibrated']:.4f} | {row['threshold']:g} "
                     f"| {row['min_component_px']} |")
    lines.append(f"| **mean** | **{loo['uncalibrated_mean']:.4f}** | **{loo['calibrated_mean']:.4f}** "
                 f"({loo['gain']:+.4f}) | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
