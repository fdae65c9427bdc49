"""Cohorts: many scans into one results table, resumable, on one machine's processes or on Ray.

``brainseg predict [INPUTS] --out-dir DIR (--manifest FILE | --workers N | --engine ray | --table FILE)``:

- the scans come from a manifest (CSV with a header, or JSON lines: ``flair`` (or ``input``/``path``), optional
  ``name``, ``t1``, ``t1ce``, ``truth``; relative paths are relative to the manifest) and/or the inputs (anything
  ``brainseg predict`` takes, and BIDS trees: ``sub-*/[ses-*/]anat/*FLAIR.nii[.gz]``); every path is made
  absolute (Ray actors do not share the command's working folder);
- each finished scan is one row of ``DIR/results.csv`` (or ``--table``), the whole table rewritten atomically
  after every row: a reader (or a killed run) only ever sees a complete table with one row per scan;
- a rerun skips the scans whose row says ``ok`` with the same input, model, revision, threshold and intensity
  rule (and whose mask is there) and retries the failed ones;
- a lock beside the table refuses a second run on the same table; stale temporary files of a killed run are
  removed at the start (masks are written atomically: a killed run never leaves a half-written mask).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import fcntl
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from brainseg.cohort.worker import WorkerSettings, mask_path, run_local
from brainseg.config import WEIGHTS_FILE, ModelConfig
from brainseg.fileio import atomic_write_text
from brainseg.inference.backends import file_sha256
from brainseg.inference.intensity import model_rule
from brainseg.io.hub import resolve_model
from brainseg.io.subjects import SubjectInputs, find_subjects
from brainseg.io.volumes import VolumeError, subject_name

COLUMNS = ("name", "status", "error", "volume_ml", "volume_strict_ml", "volume_generous_ml", "tumor_voxels",
           "slices_with_tumor", "n_slices", "laterality", "quality", "dice", "mask", "input", "seconds", "model",
           "revision", "threshold", "intensity", "backend", "worker", "finished")
MANIFEST_KEYS = {"flair": ("flair", "input", "path"), "name": ("name", "id", "subject")}
BIDS_FLAIR = re.compile(r"FLAIR\.nii(\.gz)?$")


# ------------------------------------------------------------------------------------------------ scans
def read_manifest(path: str | Path) -> list[SubjectInputs]:
    """The scans a CSV (header row) or JSON-lines manifest lists; relative paths are taken from its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise VolumeError(f"--manifest {path}: cannot read it ({exc})") from None
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                records.append(json.loads(line)) if line.strip() else None
            except json.JSONDecodeError as exc:
                raise VolumeError(f"--manifest {path.name}: line {number} is not JSON ({exc.msg})") from None
    else:
        records = list(csv.DictReader(io.StringIO(text)))
    return [_manifest_scan(record, path, number) for number, record in enumerate(records, 1)]


def _manifest_scan(record: object, manifest: Path, number: int) -> SubjectInputs:
    if not isinstance(record, dict):
        raise VolumeError(f"--manifest {manifest.name}: entry {number} is not an object with a 'flair' field")
    record = {str(k).strip().lower(): v for k, v in record.items() if k is not None}
    flair = next((record[k] for k in MANIFEST_KEYS["flair"] if record.get(k)), None)
    if not flair:
        raise VolumeError(f"--manifest {manifest.name}: entry {number} has no 'flair' (or 'input'/'path') value; "
                          "give one column 'flair' with each scan's FLAIR file or folder")

    def resolve(value: object) -> Path | None:
        return manifest.parent / str(value).strip() if value else None

    name = next((str(record[k]).strip() for k in MANIFEST_KEYS["name"] if record.get(k)), None)
    return SubjectInputs(name or subject_name(str(flair).strip()), resolve(flair), resolve(record.get("t1")),
                         resolve(record.get("t1ce")), resolve(record.get("truth"))).absolute()


def discover(inputs: Iterable[str | Path], truth_glob: str | None = None) -> list[SubjectInputs]:
    """The scans in the command line's inputs: a BIDS tree, or what ``brainseg predict`` finds in them (with
    ``truth_glob``: each subject folder's ground truth)."""
    scans: list[SubjectInputs] = []
    for raw in inputs:
        path = Path(raw)
        bids = sorted(path.glob("sub-*/anat/*FLAIR.nii*")) + sorted(path.glob("sub-*/ses-*/anat/*FLAIR.nii*"))
        bids = [p for p in bids if BIDS_FLAIR.search(p.name)]
        if path.is_dir() and bids:
            scans.extend(_bids_scan(flair) for flair in bids)
            continue
        scans.extend(subject.absolute() for subject in find_subjects([path], truth_glob))
    return scans


def _bids_scan(flair: Path) -> SubjectInputs:
    """A BIDS FLAIR with the same entities' ``T1w`` (pre-contrast) and ``ce-*_T1w`` (post-contrast) beside it."""
    stem = re.sub(r"_FLAIR\.nii(\.gz)?$", "", flair.name)
    entities = [e for e in stem.split("_") if e.split("-")[0] in ("sub", "ses", "acq", "run")]
    t1 = [p for p in flair.parent.glob(f"{entities[0]}*_T1w.nii*") if "_ce-" not in p.name]
    t1ce = list(flair.parent.glob(f"{entities[0]}*_ce-*_T1w.nii*"))
    return SubjectInputs("_".join(entities) or stem, flair, t1[0] if len(t1) == 1 else None,
                         t1ce[0] if len(t1ce) == 1 else None).absolute()


def unique_names(scans: list[SubjectInputs]) -> list[SubjectInputs]:
    """The scans with names made unique (``name``, ``name_2``, ...) in manifest order."""
    used: set[str] = set()
    result = []
    for scan in scans:
        candidate, n = scan.name, 2
        while candidate in used:
            candidate, n = f"{scan.name}_{n}", n + 1
        used.add(candidate)
        result.append(dataclasses.replace(scan, name=candidate))
    return result


# ------------------------------------------------------------------------------------------------ table
@dataclass
class ResultsTable:
    """One row per scan name, the whole CSV rewritten atomically after each row (read back on a rerun)."""

    path: Path
    rows: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> ResultsTable:
        path = Path(path)
        table = cls(path)
        if path.exists():
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    if row.get("name"):
                        table.rows[row["name"]] = row
        return table

    def is_done(self, scan: SubjectInputs, settings: WorkerSettings) -> bool:
        """True when the scan's row says ok for the same input and settings and its mask is still there."""
        row = self.rows.get(scan.name)
        if not row or row.get("status") != "ok" or row.get("input") != str(scan.flair):
            return False
        same = (row.get("model") == settings.model.source and row.get("revision") == settings.revision
                and row.get("intensity") == settings.intensity
                and _same_float(row.get("threshold"), settings.threshold))
        return same and mask_path(settings, scan).exists()

    def record(self, row: dict) -> None:
        self.rows[str(row["name"])] = {key: _cell(row.get(key)) for key in COLUMNS}
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows.values())
        atomic_write_text(self.path, buffer.getvalue())


def _cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _same_float(text: str | None, value: float) -> bool:
    try:
        return math.isclose(float(text or "nan"), value, rel_tol=1e-6)
    except ValueError:
        return False


def lock(path: Path) -> int:
    """Hold an exclusive lock on ``path`` (released when the process ends, even killed); refuse if held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise VolumeError(f"another run is writing {path.with_suffix('')}: wait for it to end, or give this run "
                          "another --out-dir / --table") from None
    return handle


def remove_stale_temporaries(out: Path, table: Path) -> int:
    """Delete the temporary files a killed run left (``fileio.atomic_write``'s ``.NAME.*.tmp``): masks, table."""
    stale = [*out.glob(".*.tmp"), *out.glob("*/.*_mask.png.*.tmp"), *table.parent.glob(f".{table.name}.*.tmp")]
    for path in set(stale):
        path.unlink(missing_ok=True)
    return len(set(stale))


# ------------------------------------------------------------------------------------------------ run
def settings_from_args(args: argparse.Namespace, workers: int) -> WorkerSettings:
    """The workers' settings: the model resolved once here, its revision (Hub commit or weights' sha256 prefix)."""
    resolved = resolve_model(args.model)
    config = ModelConfig.load(resolved.folder)
    threshold = args.threshold if args.threshold is not None else config.threshold
    revision = resolved.revision or "sha256:" + file_sha256(resolved.folder / WEIGHTS_FILE)[:12]
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // max(1, workers))  # the cores this run may use
    return WorkerSettings(resolved, os.path.abspath(args.out_dir), float(threshold), revision, args.device,
                          args.backend, not args.no_crop, args.flair_only,
                          args.intensity or model_rule(config), threads)


def run_cohort(args: argparse.Namespace) -> int:
    """The cohort mode of ``brainseg predict``: exit status 0 when every scan is ok, 2 when some failed."""
    for flag, value in (("--t1", args.t1), ("--t1ce", args.t1ce), ("--truth", args.truth), ("--json", args.json)):
        if value is not None:
            raise VolumeError(f"{flag} goes with one scan; in a cohort give t1/t1ce/truth columns in the --manifest "
                              "(the numbers are in the results table)")
    for flag, number in (("--workers", args.workers), ("--threads", args.threads)):
        if number is not None and number < 1:
            raise VolumeError(f"{flag} {number}: give 1 or more")
    scans = (read_manifest(args.manifest) if args.manifest else []) + discover(args.inputs, args.truth_glob)
    if not scans:
        raise VolumeError("no scans: give a --manifest or inputs")
    scans = unique_names(scans)
    table_path = args.table or args.out_dir / "results.csv"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    held = lock(table_path.with_name(table_path.name + ".lock"))
    try:
        remove_stale_temporaries(args.out_dir, table_path)
        settings = settings_from_args(args, args.workers)
        table = ResultsTable.open(table_path)
        todo = [scan for scan in scans if not table.is_done(scan, settings)]
        skipped = len(scans) - len(todo)
        print(f"{len(scans)} scans: {skipped} done before (skipped), {len(todo)} to run with {settings.model.source} "
              f"({settings.revision}), threshold {settings.threshold:g}, engine {args.engine}, {args.workers} "
              f"worker(s) -> {table_path}", file=sys.stderr)
        started = time.perf_counter()
        rows = _engine_rows(args, todo, settings)
        ok, failed, seconds = _collect(rows, table, len(todo), args.quiet)
        print(summary(ok, failed, skipped, time.perf_counter() - started, seconds), file=sys.stderr)
    finally:
        os.close(held)
    return 2 if failed else 0


def _engine_rows(args: argparse.Namespace, todo: list[SubjectInputs], settings: WorkerSettings) -> Iterator[dict]:
    if not todo:
        return iter(())
    if args.engine == "ray":
        from brainseg.cohort.ray_engine import run_ray  # Ray is an optional extra, imported only when asked for

        return run_ray(todo, settings, args.workers, args.address)
    return run_local(todo, settings, args.workers)


def _collect(rows: Iterator[dict], table: ResultsTable, total: int, quiet: bool) -> tuple[int, int, list[float]]:
    """Record each row as it comes; a progress bar with the ETA; error rows printed as they come."""
    ok, failed, seconds = 0, 0, []
    with tqdm(total=total, desc="scans", unit="scan", disable=quiet or total == 0, dynamic_ncols=True) as bar:
        for row in rows:
            table.record(row)
            seconds.append(float(row["seconds"]))
            if row["status"] == "ok":
                ok += 1
            else:
                failed += 1
                tqdm.write(f"error: {row['name']}: {row['error']}", file=sys.stderr)
            bar.set_postfix(ok=ok, failed=failed, refresh=False)
            bar.update(1)
    return ok, failed, seconds


def summary(ok: int, failed: int, skipped: int, wall_s: float, seconds: list[float]) -> str:
    """The run in one line: scans ok / failed / skipped, wall time, mean seconds per scan, scans per hour."""
    done = ok + failed
    per_scan = f", {sum(seconds) / len(seconds):.2f} s per scan in a worker" if seconds else ""
    rate = f", {3600 * done / wall_s:.0f} scans/hour" if done and wall_s > 0 else ""
    return f"done: {ok} ok, {failed} failed, {skipped} skipped in {wall_s:.1f} s{per_scan}{rate}"
