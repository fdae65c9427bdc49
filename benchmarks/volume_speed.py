"""End-to-end time of one volume through ``brainseg predict`` and through the app's Volume tab,
next to the single-slice forward time, all in one run.

    python -m benchmarks.volume_speed \
        ../shared/data/external-brats2013/brats_2013_pat0001_1/Flair_subtrMeanDivStd.nii.gz [--no-app]

(from the repository root: the app part imports the tests' launcher). Measures: the median single-slice
``Segmenter.predict_proba`` time (256 x 256, one slice at a time, what the app does per upload), the per-slice
time of ``predict_proba_batch`` (what the volume path uses), the CLI's end-to-end seconds (load, orient,
window, frame, model, map back, write the NIfTI mask) and this process's peak resident memory. Then, unless
``--no-app``, ``app.py`` on 127.0.0.1 (a subprocess, the tests' :class:`DemoServer`) and
``/segment_volume`` through gradio_client: the server's end-to-end seconds (read, predict, write the NIfTI
mask and the overlay GIF), the client's wall time (upload, queue, run, download of the mask and GIF), the
server's peak resident memory, and a single-slice ``/segment`` request idle and while the volume runs (it
has its own concurrency group, so it does not wait for the volume). The target of issue 15: end to end at
most 1.3 x (number of slices x single-slice forward).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from brainseg import Segmenter
from brainseg.cli.predict import main as predict_main


def median_ms(call, n: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


class PeakMemory:
    """Polls a process's resident memory (psutil) in a thread; ``peak_mb`` is the largest seen."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        import psutil

        self.process, self.every_s, self.peak = psutil.Process(pid), every_s, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every_s)

    def peak_mb(self) -> int:
        self.stop.set()
        self.thread.join()
        return round(self.peak / 2**20)


def measure_app(volume: Path, slice_: np.ndarray) -> dict:
    """``/segment_volume`` on ``volume`` through gradio_client against app.py started here, and ``/segment``
    on ``slice_`` idle and while the volume runs."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from tests.demo_server import DemoServer

    with tempfile.TemporaryDirectory() as tmp, DemoServer.start(Path(tmp) / "app.log") as server:
        slice_path = Path(tmp) / "slice.png"
        Image.fromarray(slice_).save(slice_path)

        def segment_slice() -> float:
            started = time.perf_counter()
            Client(server.url, verbose=False).predict(handle_file(str(slice_path)), 0.5, True, None,
                                                      api_name="/segment")
            return time.perf_counter() - started

        idle = min(segment_slice() for _ in range(3))  # the first also warms the server up
        memory = PeakMemory(server.process.pid)
        job = Client(server.url, verbose=False).submit(handle_file(str(volume)), None, None, 0.2,
                                                       api_name="/segment_volume")
        started = time.perf_counter()
        while job.status().code.name not in ("PROGRESS", "FINISHED") and time.perf_counter() - started < 120:
            time.sleep(0.05)
        during = [segment_slice() for _ in range(3)] if not job.done() else []
        volume_done_during_slices = job.done()
        numbers = job.result(timeout=600)[1]
        wall = time.perf_counter() - started
        peak = memory.peak_mb()
    return {
        "app_seconds": numbers["seconds"], "app_ms_per_slice": numbers["ms_per_slice"],
        "app_wall_seconds_with_upload_and_download": round(wall, 2), "app_volume_ml": numbers["volume_ml"],
        "app_server_peak_rss_mb": peak, "slice_request_idle_s": round(idle, 3),
        "slice_request_during_volume_s": [round(s, 3) for s in during],
        "volume_finished_before_the_slice_requests": volume_done_during_slices,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volume", type=Path)
    parser.add_argument("-n", type=int, default=20, help="repetitions of the single-slice forward")
    parser.add_argument("--no-app", action="store_true", help="skip the app (CLI and forward times only)")
    args = parser.parse_args(argv)
    segmenter = Segmenter.from_pretrained()
    size = segmenter.config.input_size
    rng = np.random.default_rng(0)
    slice_ = rng.integers(0, 200, (size, size, 3), dtype=np.uint8)
    batch = rng.integers(0, 200, (8, size, size, 3), dtype=np.uint8)
    single = median_ms(lambda: segmenter.predict_proba(slice_), args.n)
    batched = median_ms(lambda: segmenter.predict_proba_batch(batch), max(3, args.n // 4)) / len(batch)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "numbers.json"
        started = time.perf_counter()
        predict_main([str(args.volume), "--out-dir", tmp, "--json", str(report), "--quiet"])
        wall = time.perf_counter() - started
        numbers = json.loads(report.read_text())
    budget = numbers["n_slices"] * single / 1000
    result = {
        "volume": str(args.volume), "input_shape": numbers["input_shape"], "n_slices": numbers["n_slices"],
        "slices_run": numbers["slices_run"], "single_slice_forward_ms": round(single, 1),
        "batched_forward_ms_per_slice": round(batched, 1), "cli_seconds": round(numbers["seconds"], 2),
        "cli_wall_seconds_with_model_load": round(wall, 2), "cli_ms_per_slice": numbers["ms_per_slice"],
        "cli_volume_ml": numbers["volume_ml"],
        "ratio_to_slices_x_forward": round(numbers["seconds"] / budget, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()],
        "backend": getattr(segmenter, "backend", "torch"),
    }
    if not args.no_app:
        app = measure_app(args.volume, slice_)
        app["app_ratio_to_slices_x_forward"] = round(app["app_seconds"] / budget, 2)
        result |= app
        result["load_average_after_app"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
