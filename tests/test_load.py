"""Issue 5, load: ``app.py`` on 127.0.0.1 under concurrent ``gradio_client`` users.

USERS users x REQUESTS requests each (uploads of several real slices, in 8-bit TIFF, grayscale PNG
and 16-bit TIFF, mixed with threshold changes): no errors, every mask equal to a direct brainseg call,
p50/p95 latency reported, and the server's resident memory after the run within 200 MB of after warm-up.

    BRAINSEG_LOAD_USERS=8 BRAINSEG_LOAD_REQUESTS=25 pytest -s tests/test_load.py   # defaults
    BRAINSEG_LOAD_REPORT=load.json ...                                           # also write the figures
"""
from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
import tifffile
from demo_server import DemoServer, read_png, require_test_data
from PIL import Image

from brainseg.io.dataset import read_image, read_mask, scan_dataset
from brainseg.io.slices import decode_image

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
USERS = int(os.environ.get("BRAINSEG_LOAD_USERS", "8"))
REQUESTS = int(os.environ.get("BRAINSEG_LOAD_REQUESTS", "25"))
MEMORY_SLACK_MB = 200
WARMUP_REQUESTS = 5
THRESHOLDS = (0.2, 0.35, 0.5, 0.65, 0.8)
# a pixel this close to the threshold may flip between processes (thread count changes float sums)
BOUNDARY = 1e-4


@dataclass
class Upload:
    """A file to upload and the probability map a direct ``Segmenter`` call gives for it."""

    path: Path
    proba: np.ndarray


@dataclass
class UserLog:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"segment": [], "threshold": []})
    errors: list[str] = field(default_factory=list)


def make_uploads(folder: Path, segmenter) -> list[Upload]:
    """Four real slices (two with tumor), one as a grayscale PNG and one as a 16-bit TIFF (in tmp only)."""
    records = [r for p in scan_dataset(require_test_data()) for r in p.slices if r.mask_path]
    records.sort(key=lambda r: int(read_mask(r.mask_path).sum()))
    picks = [records[-1], records[len(records) // 2], records[-len(records) // 10], records[0]]
    paths = [picks[0].image_path, picks[1].image_path]
    gray = folder / "flair only.png"
    Image.fromarray(read_image(picks[2].image_path)[:, :, 1]).save(gray)
    wide = folder / "slice16.tif"
    tifffile.imwrite(wide, read_image(picks[3].image_path).astype(np.uint16) * 257, photometric="rgb")
    paths += [gray, wide]
    return [Upload(p, segmenter.predict_proba(decode_image(p))) for p in paths]


def check_mask(png: str, upload: Upload, threshold: float, segmenter) -> str | None:
    """None when the app's mask equals the direct call's (up to pixels on the threshold itself)."""
    got = read_png(png) == 255
    expected = segmenter.to_mask(upload.proba, threshold)
    differ = (got != expected) & (np.abs(upload.proba - threshold) > BOUNDARY)
    if got.shape != expected.shape or differ.any():
        return f"{upload.path.name} at {threshold}: {int(differ.sum())} pixels differ"
    return None


def run_user(url: str, seed: int, uploads: list[Upload], segmenter, requests: int = REQUESTS) -> UserLog:
    """One client session: uploads and threshold changes (the first request always uploads)."""
    from gradio_client import Client, handle_file

    rng, log = random.Random(seed), UserLog()
    client, current = Client(url, verbose=False), None
    for i in range(requests):
        threshold = rng.choice(THRESHOLDS)
        kind = "segment" if current is None or rng.random() < 0.5 else "threshold"
        started = time.perf_counter()
        try:
            if kind == "segment":
                current = rng.choice(uploads)
                out = client.predict(handle_file(str(current.path)), threshold, segmenter.config.normalize, None,
                                     api_name="/segment")
            else:
                out = client.predict(threshold, api_name="/threshold")
            log.latencies[kind].append(time.perf_counter() - started)
            if problem := check_mask(out[0], current, threshold, segmenter):
                log.errors.append(f"user {seed} request {i} ({kind}): {problem}")
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            log.errors.append(f"user {seed} request {i} ({kind}): {type(exc).__name__}: {exc}")
    return log


def run_users(url: str, uploads: list[Upload], segmenter, seeds: range, requests: int) -> list[UserLog]:
    """One concurrent user per seed."""
    with ThreadPoolExecutor(len(seeds)) as pool:
        return list(pool.map(lambda seed: run_user(url, seed, uploads, segmenter, requests), seeds))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def rss_mb(process: psutil.Process) -> float:
    """Resident memory of the server and its children (MB)."""
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 1e6


def test_concurrent_users_get_correct_masks_and_memory_stays_flat() -> None:
    from brainseg.app.models import DEFAULT_PRECISION, load_started_model

    segmenter = load_started_model(None, DEFAULT_PRECISION)[0]
    folder = Path(tempfile.mkdtemp(prefix="brainseg-load-"))
    uploads = make_uploads(folder, segmenter)
    server = DemoServer.start(folder / "app.log")
    try:
        process = psutil.Process(server.process.pid)
        # warm-up, as concurrent as the run: model, caches, and every worker thread's malloc arena
        warm = run_users(server.url, uploads, segmenter, seeds=range(-USERS, 0), requests=WARMUP_REQUESTS)
        assert not [e for log in warm for e in log.errors], warm
        before = rss_mb(process)
        started = time.perf_counter()
        logs = run_users(server.url, uploads, segmenter, seeds=range(USERS), requests=REQUESTS)
        wall = time.perf_counter() - started
        after = rss_mb(process)
    finally:
        server.stop()

    errors = [e for log in logs for e in log.errors]
    every = [t for log in logs for ts in log.latencies.values() for t in ts]
    report = {
        "users": USERS, "requests_per_user": REQUESTS, "errors": len(errors), "wall_s": round(wall, 1),
        "throughput_rps": round(len(every) / wall, 2),
        "p50_s": round(statistics.median(every), 3) if every else None, "p95_s": round(percentile(every, 95), 3),
        "rss_after_warmup_mb": round(before), "rss_after_run_mb": round(after), "rss_growth_mb": round(after - before),
    }
    for kind in ("segment", "threshold"):
        times = [t for log in logs for t in log.latencies[kind]]
        report[kind] = {"n": len(times), "p50_s": round(percentile(times, 50), 3),
                        "p95_s": round(percentile(times, 95), 3)}
    print("\nload test:", json.dumps(report))
    if path := os.environ.get("BRAINSEG_LOAD_REPORT"):
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
    assert not errors, errors[:10]
    assert len(every) == USERS * REQUESTS
    assert after - before < MEMORY_SLACK_MB, report
