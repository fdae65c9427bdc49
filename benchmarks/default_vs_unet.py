"""The default model against the bundled U-Net, in one run: network time per slice and a whole scan end to end.

    python benchmarks/default_vs_unet.py [--scan ../shared/data/external-brats2013/brats_2013_pat0002_1]
        [--data-dir ../shared/data/lgg-test] [--other unet] [-n 30] [--rounds 3]

Per slice: one 256x256 held-out slice through each model's ONNX Runtime graph (what ``--backend auto`` runs on the
CPU), median of ``-n`` after warm-up, the two models taking turns so both see the same load. Per volume:
``brainseg predict SCAN`` in a fresh process per call (read, 155 slices, write the mask), the two
models alternating ``--rounds`` times; the median wall time and the largest peak RSS (the process's own
``ru_maxrss``) per model. Prints one Markdown table; compare the ratio, not the times.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from brainseg.inference.backends import OnnxRunner, ensure_onnx  # noqa: E402
from brainseg.inference.preprocess import preprocess  # noqa: E402
from brainseg.inference.segmenter import load_model  # noqa: E402
from brainseg.io.dataset import load_slices, scan_dataset  # noqa: E402
from brainseg.io.hub import DEFAULT_MODEL_NAME, resolve_model  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def slice_runner(name: str, cache: Path) -> OnnxRunner:
    """The model's ONNX Runtime forward (exported once into ``cache``)."""
    resolved = resolve_model(name)
    config, model = load_model(resolved)
    return OnnxRunner(ensure_onnx(resolved.folder, model.eval(), config.input_size, cache))


def per_slice_ms(names: list[str], batch: torch.Tensor, repeats: int, cache: Path) -> dict[str, float]:
    """Median milliseconds of one forward per model, the models taking turns."""
    runners = {name: slice_runner(name, cache) for name in names}
    for runner in runners.values():
        runner(batch)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner(batch)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def predict_scan(name: str, scan: Path, out: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of ``brainseg predict SCAN --model NAME`` in its own process."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "brainseg.cli.predict", str(scan), "--out-dir", str(out),
                                "--model", name, "--quiet"], cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"brainseg.cli.predict --model {name} failed on {scan}")
    return seconds, usage.ru_maxrss / 1024


def per_volume(names: list[str], scan: Path, rounds: int) -> dict[str, tuple[float, float]]:
    """Median seconds and largest peak RSS per model over ``rounds`` alternating runs."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(rounds):
            for name in names:
                runs[name].append(predict_scan(name, scan, Path(out) / name))
    return {name: (statistics.median(s for s, _ in r), max(m for _, m in r)) for name, r in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=Path, default=SHARED / "external-brats2013" / "brats_2013_pat0002_1")
    parser.add_argument("--data-dir", type=Path, default=SHARED / "lgg-test")
    parser.add_argument("--other", default="unet", help="the model to compare the default with")
    parser.add_argument("-n", type=int, default=30, help="forwards per model for the per-slice time")
    parser.add_argument("--rounds", type=int, default=3, help="whole-scan runs per model")
    args = parser.parse_args(argv)
    names = [DEFAULT_MODEL_NAME, args.other]
    records = [r for p in scan_dataset(args.data_dir) for r in p.slices]
    images, _ = load_slices(records[len(records) // 2: len(records) // 2 + 1])
    batch = preprocess(np.ascontiguousarray(images[0])).unsqueeze(0).numpy()
    with tempfile.TemporaryDirectory() as cache:
        slice_ms = per_slice_ms(names, torch.from_numpy(batch), args.n, Path(cache))
    volume = per_volume(names, args.scan, args.rounds)
    base = names[1]
    print(f"threads {torch.get_num_threads()}, scan {args.scan.name}, {args.rounds} rounds\n")
    print("| model | forward, 1 slice (ONNX Runtime) | ratio | brainseg.cli.predict, whole scan | ratio | peak RSS |")
    print("|---|---|---|---|---|---|")
    for name in names:
        seconds, rss = volume[name]
        print(f"| {name} | {slice_ms[name]:.1f} ms | {slice_ms[name] / slice_ms[base]:.2f}x | {seconds:.2f} s | "
              f"{seconds / volume[base][0]:.2f}x | {rss:.0f} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
