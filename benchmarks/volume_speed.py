"""End-to-end time of ``python -m brainseg.predict`` on one volume, next to the single-slice forward time.

    python -m benchmarks.volume_speed \
        ../shared/data/external-brats2013/brats_2013_pat0001_1/Flair_subtrMeanDivStd.nii.gz

Measures, in one process and one run: the median single-slice ``Segmenter.predict_proba`` time (256 x 256,
one slice at a time, what the app does per upload), the per-slice time of ``predict_proba_batch`` (what the
volume path uses), the CLI's end-to-end seconds (load, orient, window, frame, model, map back, write the
NIfTI mask) and the process's peak resident memory. The target of issue 15: end to end at most 1.3 x
(number of slices x single-slice forward).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainseg import Segmenter
from brainseg.predict import main as predict_main


def median_ms(call, n: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volume", type=Path)
    parser.add_argument("-n", type=int, default=20, help="repetitions of the single-slice forward")
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
        predict_main([str(args.volume), "--out", tmp, "--json", str(report), "--quiet"])
        wall = time.perf_counter() - started
        numbers = json.loads(report.read_text())
    budget = numbers["n_slices"] * single / 1000
    result = {
        "volume": str(args.volume), "input_shape": numbers["input_shape"], "n_slices": numbers["n_slices"],
        "slices_run": numbers["slices_run"], "single_slice_forward_ms": round(single, 1),
        "batched_forward_ms_per_slice": round(batched, 1), "cli_seconds": round(numbers["seconds"], 2),
        "cli_wall_seconds_with_model_load": round(wall, 2), "cli_ms_per_slice": numbers["ms_per_slice"],
        "ratio_to_slices_x_forward": round(numbers["seconds"] / budget, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
