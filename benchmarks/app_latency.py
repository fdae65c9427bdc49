"""Latency of the demo through its real HTTP API: upload -> overlay, and a threshold change.

    python -m benchmarks.app_latency --data-dir ../shared/data/lgg-test [--url http://127.0.0.1:7860] [-n 50]

(from the repository root: it imports ``app`` and the tests' launcher). Without ``--url`` it starts
``app.py`` on 127.0.0.1 itself, with the tests' :class:`DemoServer`. One "upload -> overlay" request is what the
browser does after a file is chosen: POST the file to ``/gradio_api/upload``, join the queue for
``segment``, read the server-sent events until it completes, GET the overlay PNG. One "threshold
change" is the same for ``threshold`` (same session, no model run). ``http`` speaks that protocol
directly (httpx); ``gradio_client`` does the same calls through ``gradio_client.Client.predict``, which
adds its own overhead. ``in_process`` is the cost of each step (decode, model, drawing) without HTTP.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from brainseg.data import scan_dataset
from tests.demo_server import REPO, DemoServer


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    data = np.asarray(samples_ms)
    return {"p50_ms": round(float(np.percentile(data, 50)), 1), "p95_ms": round(float(np.percentile(data, 95)), 1),
            "mean_ms": round(float(data.mean()), 1), "n": len(data)}


def fetch(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as response:
        return len(response.read())


class QueueClient:
    """The browser's side of Gradio's HTTP API: upload, join the queue, read the event stream."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=60)
        self.session = uuid.uuid4().hex
        config = self.http.get(self.url + "/config").json()
        kinds = {c["id"]: c["type"] for c in config["components"]}
        self.endpoints = {d["api_name"]: (i, [kinds[c] for c in d["inputs"]])
                          for i, d in enumerate(config["dependencies"]) if d.get("api_name")}

    def upload(self, path: Path) -> dict:
        with path.open("rb") as handle:
            server_path = self.http.post(self.url + "/gradio_api/upload", files={"files": handle}).json()[0]
        return {"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def call(self, api_name: str, *args) -> list:
        """Run ``api_name`` with ``args`` (State inputs are filled in as the browser does) -> outputs."""
        fn_index, kinds = self.endpoints[api_name]
        values = iter(args)
        data = [None if kind == "state" else next(values) for kind in kinds]
        self.http.post(self.url + "/gradio_api/queue/join", json={
            "data": data, "fn_index": fn_index, "session_hash": self.session, "event_data": None, "trigger_id": None,
        }).raise_for_status()
        with self.http.stream("GET", self.url + "/gradio_api/queue/data", params={"session_hash": self.session}) as r:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(f"{api_name} failed: {message}")
                    return message["output"]["data"]
        raise RuntimeError(f"{api_name}: the event stream ended early")

    def fetch(self, file_data: dict) -> int:
        return len(self.http.get(file_data["url"]).content)


def measure(segment, rethreshold, slices: list[tuple[Path, Path]], repeats: int) -> dict[str, dict[str, float]]:
    """Time ``segment(path)`` and ``rethreshold(value)`` alternately; the first two rounds are warm-up."""
    upload_ms, threshold_ms = [], []
    thresholds = np.linspace(0.1, 0.9, 9)
    for i in range(repeats + 2):
        started = time.perf_counter()
        segment(slices[i % len(slices)][0])
        elapsed = 1000 * (time.perf_counter() - started)
        started = time.perf_counter()
        rethreshold(float(thresholds[i % len(thresholds)]))
        live_elapsed = 1000 * (time.perf_counter() - started)
        if i >= 2:
            upload_ms.append(elapsed)
            threshold_ms.append(live_elapsed)
    return {"upload_to_overlay": percentiles(upload_ms), "threshold_change": percentiles(threshold_ms)}


def http_latency(url: str, slices: list[tuple[Path, Path]], repeats: int) -> dict[str, dict[str, float]]:
    client = QueueClient(url)
    return measure(
        lambda path: client.fetch(client.call("segment", client.upload(path), 0.5, True, None)[2]),
        lambda value: client.fetch(client.call("threshold", value)[2]),
        slices, repeats,
    )


def gradio_client_latency(url: str, slices: list[tuple[Path, Path]], repeats: int) -> dict[str, dict[str, float]]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    return measure(
        lambda path: fetch(client.predict(handle_file(str(path)), 0.5, True, None, api_name="/segment")[2]["url"]),
        lambda value: fetch(client.predict(value, api_name="/threshold")[2]["url"]),
        slices, repeats,
    )


def latencies(url: str, slices: list[tuple[Path, Path]], repeats: int) -> dict[str, dict[str, dict[str, float]]]:
    return {"http": http_latency(url, slices, repeats), "gradio_client": gradio_client_latency(url, slices, repeats)}


def in_process(slices: list[tuple[Path, Path]], precision: str, model: str | None) -> dict[str, dict[str, float]]:
    """The same steps without HTTP: where the time goes.

    Like the app, the model is loaded in the main thread and run in a worker thread (on a CPU shared
    with other work, torch in the main thread can be several times slower).
    """
    from brainseg import Segmenter

    segmenter = Segmenter.from_pretrained(model, bf16=precision == "bf16")
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_steps, segmenter, slices).result()


def _steps(segmenter, slices: list[tuple[Path, Path]]) -> dict[str, dict[str, float]]:
    from brainseg.imaging import decode_image, encode_png
    from brainseg.overlay import probability_heatmap, render_views

    # threshold_redraw: mask + overlay drawn and PNG-encoded, what one threshold change costs the server
    steps: dict[str, list[float]] = {"decode": [], "model": [], "heatmap": [], "threshold_redraw": []}
    for i, (path, _) in enumerate(slices + slices[:2]):
        t0 = time.perf_counter()
        image = decode_image(path)
        t1 = time.perf_counter()
        proba = segmenter.predict_proba(image)
        t2 = time.perf_counter()
        probability_heatmap(proba, image)
        t3 = time.perf_counter()
        views = render_views(image, segmenter.to_mask(proba, 0.4))
        encode_png(views.overlay), encode_png(views.mask)
        t4 = time.perf_counter()
        if i >= 2:
            for key, ms in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                steps[key].append(1000 * ms)
    return {key: percentiles(values) for key, values in steps.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "lgg-test"))
    parser.add_argument("--url", default=None, help="a running app (default: start app.py here)")
    parser.add_argument("-n", "--repeats", type=int, default=50)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="passed to app.py")
    parser.add_argument("--model", default=None, help="passed to app.py")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    records = [r for p in scan_dataset(args.data_dir) for r in p.slices if r.mask_path]
    step = max(1, len(records) // args.repeats)
    slices = [(r.image_path, r.mask_path) for r in records[::step]][: args.repeats]
    extra = ["--precision", args.precision] if args.precision else []
    extra += ["--model", args.model] if args.model else []
    if args.url is None:
        log = Path(tempfile.mkdtemp(prefix="brainseg-bench-")) / "app.log"
        with DemoServer.start(log, "--data-dir", args.data_dir, *extra) as server:
            result = latencies(server.url, slices, args.repeats)
    else:
        result = latencies(args.url, slices, args.repeats)
    if args.url is None:
        from app import DEFAULT_PRECISION

        result["in_process"] = in_process(slices, args.precision or DEFAULT_PRECISION, args.model)
    result["cpu_count"] = os.cpu_count()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
