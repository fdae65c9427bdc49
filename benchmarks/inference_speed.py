"""Inference speed on this CPU in one table, each figure next to its reference from the same run.

    python benchmarks/inference_speed.py [--data-dir ../shared/data/lgg-test] [--model unet|segformer-b0|FOLDER] [-n 30]
        [--app-repeats 30] [--moves 40] [--no-app]

Rows: the CPU (name, flags, threads); the network forward for one 256x256 held-out slice in PyTorch eager
fp32 and in ONNX Runtime (median of ``-n`` after warm-up, taking turns in blocks so both see the same load);
bf16 autocast where the CPU has native bf16 (AMX / AVX-512 BF16), else "not measured"; whether ONNX and
bf16 keep the masks (model threshold + post-processing) on the held-out slices; a 155-slice volume batch
(a 240x240x155 volume resized to 256x256) against 155 x the single-slice forward. Everything runs in one
worker thread, as in the app. Only the network forward is timed: preprocessing and drawing are the same
for every backend. :func:`app_rows` adds the app as a user meets it (``benchmarks/app_latency.py``): ``app.py``
started with its default backend and precision, HTTP upload -> overlay against 1.5 x that backend's forward
+ 30 ms, and threshold moves in headless Chromium against 30 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from brainseg.config import ModelConfig  # noqa: E402
from brainseg.cpu import CpuInfo, read_cpu_info  # noqa: E402
from brainseg.inference.backends import AUTO_TOLERANCE, OnnxRunner, ensure_onnx  # noqa: E402
from brainseg.inference.postprocess import binarize  # noqa: E402
from brainseg.inference.preprocess import uint8_batch_to_input  # noqa: E402
from brainseg.inference.segmenter import load_model  # noqa: E402
from brainseg.io.dataset import load_slices, scan_dataset  # noqa: E402
from brainseg.io.hub import ResolvedModel, resolve_model  # noqa: E402

VOLUME_SLICES = 155
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Row:
    """One line of the table: a measured value next to its same-run reference, their ratio and the target."""

    measurement: str
    value: str
    reference: str = ""
    ratio: str = ""
    target: str = ""


def print_table(rows: list[Row]) -> None:
    """Markdown table, ready to paste into the README."""
    header = Row("measurement", "value", "reference (same run)", "ratio", "target")
    lines = [[getattr(r, f) for f in ("measurement", "value", "reference", "ratio", "target")] for r in [header, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    for n, line in enumerate(lines):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


# ---------------------------------------------------------------------------------------------- forwards


def torch_forward(model: torch.nn.Module, bf16: bool = False) -> Forward:
    """The PyTorch path as the Segmenter runs it on CPU: channels-last, inference mode, optional bf16 autocast."""
    model = model.to(memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(batch.contiguous(memory_format=torch.channels_last)).float()

    return forward


def batched(forward: Forward, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``forward`` over ``inputs`` in chunks of ``batch_size`` (what a volume goes through)."""
    return torch.cat([forward(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def timed_ms(call: Callable[..., object], *args: object) -> float:
    """Milliseconds ``call(*args)`` takes."""
    started = time.perf_counter()
    call(*args)
    return 1000 * (time.perf_counter() - started)


def interleaved_medians(forwards: dict[str, Callable[[int], object]], repeats: int, warmup: int,
                        block: int = 6) -> dict[str, float]:
    """Median milliseconds of each ``forwards[name](i)`` over ``repeats`` calls, the backends taking turns in
    blocks of ``block`` consecutive calls so they share the same load.

    The first call of each block is not counted: it runs while the previous backend's worker threads still
    spin (ONNX Runtime's do after every run), which on 2 cores doubled the next PyTorch call when the two
    alternated call by call.
    """
    samples: dict[str, list[float]] = {name: [] for name in forwards}
    for call in forwards.values():
        for i in range(warmup):
            call(i)
    i = 0
    while any(len(values) < repeats for values in samples.values()):
        for name, call in forwards.items():
            for position in range(block):
                elapsed = timed_ms(call, i)
                i += 1
                if position > 0 and len(samples[name]) < repeats:
                    samples[name].append(elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}


def masks_agree(proba: np.ndarray, reference: np.ndarray, config: ModelConfig) -> tuple[int, int]:
    """(slices whose masks are identical, slices) with the model's threshold and post-processing."""
    same = sum(np.array_equal(binarize(a, config.threshold, config.min_component_px),
                              binarize(b, config.threshold, config.min_component_px))
               for a, b in zip(proba, reference))
    return same, len(proba)


def probabilities(forward: Forward, inputs: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    return torch.sigmoid(batched(forward, inputs, batch_size))[:, 0].numpy()


# ---------------------------------------------------------------------------------------------- rows


def cpu_rows(cpu: CpuInfo) -> list[Row]:
    import onnxruntime

    return [
        Row("CPU", cpu.name, f"{cpu.logical_cores} logical cores, torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()}) x{torch.get_num_threads()} threads, "
            f"onnxruntime {onnxruntime.__version__}"),
        Row("CPU flags", " ".join(cpu.speed_flags()) or "none of " + "/".join(("avx2", "avx512f", "amx_bf16")),
            "native bf16: " + ("yes" if cpu.native_bf16 else "no (bf16 would be emulated)")),
        Row("load average at start", " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)",
            "other processes share these cores: compare ratios, not absolute times"),
    ]


def forward_rows(config: ModelConfig, fp32: Forward, onnx: Forward, bf16: Forward | None,
                 inputs: torch.Tensor, repeats: int) -> tuple[list[Row], dict[str, float]]:
    """Single-slice forward times and mask agreement; returns the rows and the median ms per backend
    (``torch``, ``onnx``, and ``bf16`` when measured)."""
    slices = [inputs[i : i + 1] for i in range(len(inputs))]
    forwards: dict[str, Callable[[int], object]] = {
        "torch": lambda i: fp32(slices[i % len(slices)]),
        "onnx": lambda i: onnx(slices[i % len(slices)]),
    }
    if bf16 is not None:
        forwards["bf16"] = lambda i: bf16(slices[i % len(slices)])
    ms = interleaved_medians(forwards, repeats, warmup=3)

    reference = probabilities(fp32, inputs)
    onnx_proba = probabilities(onnx, inputs)
    same, total = masks_agree(onnx_proba, reference, config)
    speedup = ms["torch"] / ms["onnx"]
    rows = [
        Row("forward, 1 slice: ONNX Runtime fp32", f"{ms['onnx']:.1f} ms", f"PyTorch eager fp32 {ms['torch']:.1f} ms",
            f"{speedup:.2f}x faster", f">= 2x faster: {'met' if speedup >= 2 else 'NOT met'}"),
        Row(f"ONNX vs PyTorch on {total} held-out slices", f"max abs diff {np.abs(onnx_proba - reference).max():.1e}",
            f"tolerance {AUTO_TOLERANCE:.0e}", f"masks equal on {same}/{total} slices", "auto picks ONNX if within"),
    ]
    if bf16 is None:
        rows.append(Row("forward, 1 slice: PyTorch bf16 autocast", "not measured: no native bf16 on this CPU",
                        f"PyTorch eager fp32 {ms['torch']:.1f} ms", "", "fp32"))
    else:
        bf16_proba = probabilities(bf16, inputs)
        same16, _ = masks_agree(bf16_proba, reference, config)
        ratio = ms["bf16"] / ms["torch"]
        keep = ratio < 1 and same16 == total
        rows += [
            Row("forward, 1 slice: PyTorch bf16 autocast", f"{ms['bf16']:.1f} ms",
                f"PyTorch eager fp32 {ms['torch']:.1f} ms", f"{ratio:.2f}x the time",
                "bf16 if faster and masks equal: " + ("bf16" if keep else "fp32")),
            Row(f"bf16 vs fp32 on {total} held-out slices", f"max abs diff {np.abs(bf16_proba - reference).max():.1e}",
                "", f"masks equal on {same16}/{total} slices", "all equal"),
        ]
    return rows, ms


def volume_rows(fp32: Forward, onnx: Forward, inputs: torch.Tensor, batch_size: int, repeats: int) -> list[Row]:
    """A 155-slice batch against 155 x the single-slice forward of the same backend.

    Each round times 10 single slices then the volume, back to back, so both see the same load; the
    reported ratio is the median of the rounds' ratios.
    """
    volume = inputs[np.arange(VOLUME_SLICES) % len(inputs)]
    rows = []
    for forward, label in ((fp32, "PyTorch eager fp32"), (onnx, "ONNX Runtime fp32")):
        forward(volume[:1])  # warm-up
        batched(forward, volume[:batch_size], batch_size)
        single_ms, volume_ms = [], []
        for _ in range(repeats):
            single_ms.append(statistics.median(timed_ms(forward, volume[i][None]) for i in range(10)))
            volume_ms.append(timed_ms(batched, forward, volume, batch_size))
        ratio = statistics.median(v / (VOLUME_SLICES * s) for v, s in zip(volume_ms, single_ms))
        single, total = statistics.median(single_ms), statistics.median(volume_ms)
        rows.append(Row(f"volume {VOLUME_SLICES} slices: {label} (batch {batch_size})", f"{total / 1000:.2f} s",
                        f"{VOLUME_SLICES} x {single:.1f} ms = {VOLUME_SLICES * single / 1000:.2f} s",
                        f"{ratio:.2f}x", f"<= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'}"))
    return rows


BROWSER_MOVE_TARGET_MS = 30.0


def app_backend(model: str) -> tuple[str, str, int]:
    """(backend name, its one-line reason, network passes per slice) of ``app.py`` started with its defaults.

    The same choice the app makes at start-up (:func:`brainseg.app.models.load_started_model`, same cache and
    probe): ``auto`` is decided by measurement, so it is made here again rather than assumed.
    """
    from brainseg.app.models import DEFAULT_BACKEND, DEFAULT_PRECISION, load_started_model

    segmenter, _ = load_started_model(model, DEFAULT_PRECISION, DEFAULT_BACKEND)
    return segmenter.backend, segmenter.backend_reason, 2 if segmenter.config.flip_tta else 1


def app_rows(args: argparse.Namespace, forward_ms: dict[str, float]) -> list[Row]:
    """HTTP (upload -> overlay, ``/threshold``) and browser (threshold move) timings of ``app.py`` served with
    its default backend, next to that backend's single-slice forward (``forward_ms``) from this run."""
    from benchmarks.app_latency import measure_app

    backend, reason, passes = app_backend(args.model)
    result = measure_app(args.data_dir, repeats=args.app_repeats, moves=args.moves, model=args.model)
    label = {"onnx": "ONNX Runtime", "torch": "PyTorch eager fp32"}[backend]
    forward = passes * forward_ms[backend]
    budget = 1.5 * forward + 30
    upload = result["http"]["upload_to_overlay"]["p50_ms"]
    threshold_http = result["http"]["threshold_change"]["p50_ms"]
    forward_text = f"{label} forward {forward:.1f} ms" + (" (flip TTA: 2 passes)" if passes == 2 else "")
    rows = [
        Row("app.py backend (its default)", backend, reason),
        Row("upload -> overlay p50, HTTP", f"{upload:.1f} ms", f"1.5 x {forward_text} + 30 ms = {budget:.0f} ms",
            f"{upload / budget:.2f}x the budget", f"<= 1.0x: {'met' if upload <= budget else 'NOT met'}"),
        Row("threshold change p50, HTTP `/threshold` (slider release)", f"{threshold_http:.1f} ms",
            f"upload -> overlay {upload:.1f} ms", f"{threshold_http / upload:.2f}x", "no model run"),
    ]
    if "browser" not in result:
        rows.append(Row("threshold move p50, browser", f"not measured: {result.get('browser_error', '?')}", "", "",
                        f"<= {BROWSER_MOVE_TARGET_MS:.0f} ms"))
        return rows
    browser = result["browser"]
    move, frame = browser["move_drawn"]["p50_ms"], browser["move_frame"]["p50_ms"]
    rows += [
        Row("threshold move p50, browser: input -> overlay drawn", f"{move:.1f} ms (n={browser['move_drawn']['n']})",
            f"HTTP `/threshold` {threshold_http:.1f} ms", f"{move / threshold_http:.2f}x",
            f"<= {BROWSER_MOVE_TARGET_MS:.0f} ms: {'met' if move <= BROWSER_MOVE_TARGET_MS else 'NOT met'}"),
        Row("threshold move p50, browser: input -> next frame", f"{frame:.1f} ms",
            f"HTTP `/threshold` {threshold_http:.1f} ms", f"{frame / threshold_http:.2f}x",
            f"<= {BROWSER_MOVE_TARGET_MS:.0f} ms: {'met' if frame <= BROWSER_MOVE_TARGET_MS else 'NOT met'}"),
        Row("slider release p50, browser: pointerup -> server overlay", f"{browser['release']['p50_ms']:.1f} ms",
            f"HTTP `/threshold` {threshold_http:.1f} ms", "", ""),
    ]
    return rows


# ---------------------------------------------------------------------------------------------- main


def onnx_forward(resolved: ResolvedModel, config: ModelConfig, model: torch.nn.Module,
                 cache_dir: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's forward in ONNX Runtime (its exported graph)."""
    return OnnxRunner(ensure_onnx(resolved.folder, model, config.input_size, cache_dir))


def held_out_inputs(data_dir: str, config: ModelConfig, limit: int) -> torch.Tensor:
    """Model inputs of the held-out slices (every patient's, in order; ``limit`` > 0 keeps that many)."""
    records = [r for p in scan_dataset(data_dir) for r in p.slices]
    if limit > 0:
        records = records[:: max(1, len(records) // limit)][:limit]
    images, _ = load_slices(records)
    if images.shape[1:3] != (config.input_size, config.input_size):
        raise SystemExit(f"held-out slices are {images.shape[1:3]}, the model takes {config.input_size}")
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    return uint8_batch_to_input(batch, config.normalize).contiguous()


def measure(args: argparse.Namespace) -> list[Row]:
    cpu = read_cpu_info()
    resolved = resolve_model(args.model)
    config, model = load_model(resolved)
    model.eval()
    inputs = held_out_inputs(args.data_dir, config, args.slices)
    onnx = onnx_forward(resolved, config, model, args.cache_dir)
    fp32 = torch_forward(model)
    bf16 = torch_forward(model, bf16=True) if cpu.bf16_worth_measuring or args.force_bf16 else None
    rows = cpu_rows(cpu)
    forward, forward_ms = forward_rows(config, fp32, onnx, bf16, inputs, args.repeats)
    rows += forward
    rows += volume_rows(fp32, onnx, inputs, args.volume_batch, args.volume_repeats)
    if args.app:
        rows += app_rows(args, forward_ms)
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "lgg-test"))
    parser.add_argument("--model", default=str(REPO / "assets" / "model"),
                        help="model folder, bundled name (unet, segformer-b0, ...) or ORG/NAME (default: bundled)")
    parser.add_argument("-n", "--repeats", type=int, default=30, help="timed single-slice forwards per backend")
    parser.add_argument("--slices", type=int, default=0, help="held-out slices for the agreement rows (0: all)")
    parser.add_argument("--volume-batch", type=int, default=32, help="batch size for the 155-slice volume")
    parser.add_argument("--volume-repeats", type=int, default=3)
    parser.add_argument("--force-bf16", action="store_true", help="measure bf16 even without native bf16")
    parser.add_argument("--cache-dir", default=None, help="ONNX cache (default: ~/.cache/brainseg/onnx)")
    parser.add_argument("--app-repeats", type=int, default=30, help="HTTP uploads and threshold changes")
    parser.add_argument("--moves", type=int, default=40, help="threshold moves in the browser")
    parser.add_argument("--app", action=argparse.BooleanOptionalAction, default=True,
                        help="also serve app.py and time it over HTTP and in Chromium")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    with ThreadPoolExecutor(1) as pool:  # like the app: the model runs in a worker thread
        rows = pool.submit(measure, args).result()
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
