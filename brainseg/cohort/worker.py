"""One cohort worker: the model loaded once, then one scan at a time turned into one results-table row.

A worker never raises for a bad scan: whatever goes wrong (an unreadable file, a 2D image, a missing path) becomes
a row with ``status="error"`` and the reason in one line, so one scan never ends a run of thousands. The same
:class:`ScanWorker` runs in the command's own process (``--workers 1``), in each process of a local pool
(``--workers N``, :func:`run_local`) and in each Ray actor (:mod:`brainseg.cohort.ray_engine`).
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from brainseg.evaluation.volumes import evaluate_volume
from brainseg.inference import quality
from brainseg.inference.intensity import DEFAULT_RULE, head_mask
from brainseg.inference.segmenter import Segmenter
from brainseg.inference.volume import VolumePrediction, predict_subject, save_mask
from brainseg.io.hub import ResolvedModel
from brainseg.io.subjects import SubjectInputs, is_patient_folder_input
from brainseg.views import report
from brainseg.views.planes import grayscale


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs, picklable: the model's files, where masks go and how scans are run."""

    model: ResolvedModel
    out: str
    threshold: float  # the threshold the run uses (the model's own when none was given)
    revision: str  # the Hub commit, or the weights' sha256 prefix for a local or bundled model
    device: str = "cpu"
    backend: str = "auto"
    crop: bool = True
    flair_only: bool = False
    intensity: str = DEFAULT_RULE  # the intensity rule (brainseg.inference.intensity)
    threads: int = 1  # torch (and ONNX Runtime) threads in this worker


def mask_path(settings: WorkerSettings, scan: SubjectInputs) -> Path:
    """Where a scan's mask goes: ``OUT/<name>_mask.nii.gz``, or the folder ``OUT/<name>`` for a Kaggle folder."""
    if is_patient_folder_input(scan):
        return Path(settings.out) / scan.name
    return Path(settings.out) / f"{scan.name}_mask.nii.gz"


def one_line(exc: BaseException) -> str:
    """An exception as one line: its text without line breaks, or its type's name."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, (ValueError, OSError)) or not text else text


class ScanWorker:
    """The model loaded once; :meth:`run` turns one scan into one results-table row (never raises for a scan)."""

    def __init__(self, settings: WorkerSettings) -> None:
        torch.set_num_threads(max(1, settings.threads))  # before the model: ONNX Runtime takes the same count
        self.settings = settings
        self.segmenter = Segmenter.from_resolved(settings.model, device=settings.device, backend=settings.backend)
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, scan: SubjectInputs) -> dict:
        started = time.perf_counter()
        row = {"name": scan.name, "input": str(scan.flair), "model": self.settings.model.source,
               "revision": self.settings.revision, "threshold": self.settings.threshold,
               "intensity": self.settings.intensity, "backend": self.segmenter.backend, "worker": self.where}
        try:
            row.update(self._segment(scan), status="ok", error="")
        except Exception as exc:  # a bad scan is a row with its reason, never the end of the run
            row.update(status="error", error=one_line(exc))
        row["seconds"] = round(time.perf_counter() - started, 3)
        row["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return row

    def _segment(self, scan: SubjectInputs) -> dict:
        settings = self.settings
        run = predict_subject(self.segmenter, scan, flair_only=settings.flair_only, crop=settings.crop,
                              intensity=settings.intensity)
        prediction, truth = run.prediction, run.truth
        flair_data = None if run.flair is None else run.flair.data
        written = save_mask(prediction, str(mask_path(settings, scan)), settings.threshold)
        numbers = describe(prediction, settings.threshold, flair_data)
        numbers["mask"] = str(written[0]) if len(written) == 1 else str(mask_path(settings, scan))
        if truth is not None:
            numbers["dice"] = round(evaluate_volume(prediction, truth, settings.threshold).dice, 4)
        return numbers


def describe(prediction: VolumePrediction, threshold: float, flair_data: np.ndarray | None = None) -> dict:
    """The table's numbers of one prediction: volume (and at thresholds 0.7 / 0.3), slices with tumor, laterality
    (:func:`brainseg.views.report.laterality`, the head's midline) and the scan check's flag codes
    (:mod:`brainseg.inference.quality`, "ok" when none; empty without the raw FLAIR, i.e. for Kaggle folders), as
    the Volume tab's result card has them."""
    mask = prediction.presented_mask(threshold)
    voxel_ml = prediction.voxel_volume_ml
    head = head_mask(grayscale(prediction.images))
    midline = float(np.argwhere(head)[:, 2].mean()) if head.any() else mask.shape[2] / 2
    numbers = {"volume_ml": None, "volume_strict_ml": None, "volume_generous_ml": None,
               "tumor_voxels": int(mask.sum()), "slices_with_tumor": int(mask.any(axis=(1, 2)).sum()),
               "n_slices": prediction.n_slices, "laterality": report.laterality(mask, midline), "quality": ""}
    if voxel_ml is not None:
        strict, generous = (round(int(prediction.presented_mask(t).sum()) * voxel_ml, 4) for t in reversed(report.BAND))
        numbers.update(volume_ml=round(numbers["tumor_voxels"] * voxel_ml, 4), volume_strict_ml=strict,
                       volume_generous_ml=generous)
        if flair_data is not None:
            facts = quality.scan_facts(flair_data, tuple(dict.fromkeys(prediction.channels)),
                                       int(head.any(axis=(1, 2)).sum()), prediction.geometry.presented_spacing[0])
            flags = quality.assess(facts, numbers["volume_ml"], strict, generous)
            numbers["quality"] = ";".join(flag.code for flag in flags) or "ok"
    return numbers


# ------------------------------------------------------------------------------------------------ local pool
_PROCESS_WORKER: dict[str, ScanWorker] = {}  # one per pool process, set by its initializer (never in the parent)


def _init_process(settings: WorkerSettings) -> None:
    _PROCESS_WORKER["worker"] = ScanWorker(settings)


def _run_in_process(scan: SubjectInputs) -> dict:
    return _PROCESS_WORKER["worker"].run(scan)


def run_local(scans: list[SubjectInputs], settings: WorkerSettings, workers: int) -> Iterator[dict]:
    """Rows as scans finish: in this process (``workers == 1``) or in ``workers`` spawned processes, each holding
    the model once. At most ``2 * workers`` scans are queued at a time, so a stop loses little work."""
    if workers <= 1:
        worker = ScanWorker(settings)
        yield from (worker.run(scan) for scan in scans)
        return
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_process, initargs=(settings,)) as pool:
        yield from _bounded(pool.submit, _run_in_process, scans, 2 * workers)


def _bounded(submit: Callable[..., Future], function: Callable, scans: list[SubjectInputs],
             depth: int) -> Iterator[dict]:
    """``function(scan)`` for every scan through ``submit``, at most ``depth`` in flight, results as they finish."""
    pending: dict[Future, SubjectInputs] = {}
    queue = iter(scans)
    for scan in queue:
        pending[submit(function, scan)] = scan
        if len(pending) >= depth:
            break
    while pending:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            scan = pending.pop(future)
            try:
                yield future.result()
            except BrokenProcessPool as exc:
                raise OSError(f"a worker process died while running {scan.name} (out of memory? try fewer "
                              f"--workers); rerun the same command to go on: {one_line(exc)}") from None
            next_scan = next(queue, None)
            if next_scan is not None:
                pending[submit(function, next_scan)] = next_scan
