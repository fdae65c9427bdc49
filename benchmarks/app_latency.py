"""Latency of the demo as a user meets it: HTTP upload -> overlay and ``/threshold``, and threshold moves in a browser.

    python -m benchmarks.app_latency --data-dir ../shared/data/lgg-test [--url http://127.0.0.1:7860] [-n 30]
        [--moves 40] [--gradio-client] [--json out.json]

(from the repository root: it imports the tests' launcher). Without ``--url`` it starts ``app.py`` on
127.0.0.1 itself, with the tests' :class:`DemoServer`. One "upload -> overlay" request is what the browser does
after a file is chosen: POST the file to ``/gradio_api/upload``, join the queue for ``segment``, read the
server-sent events until it completes, GET the overlay PNG. One "threshold change" is the same for ``threshold``
(same session, no model run): what every slider move cost before the browser drew the overlay itself. ``http``
speaks that protocol directly (httpx); ``gradio_client`` (``--gradio-client``) does the same calls through
``gradio_client.Client.predict``, which adds its own overhead. ``browser`` drags the threshold slider in headless
Debian Chromium with Playwright and times, in the page, each move (input event -> the live canvas drawn, and ->
the next frame) and each release (-> the server's overlay shown). ``in_process`` is the cost of each step
(decode, model, drawing) without HTTP. :func:`measure_app` returns all of it as a dict, :func:`table` prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import print_and_save
from brainseg.io.dataset import scan_dataset
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
        """Run ``api_name`` with ``args`` (State inputs are filled in as the browser does; inputs past ``args``, such
        as the optional model choice, are left empty: the started model) -> outputs."""
        fn_index, kinds = self.endpoints[api_name]
        values = iter(args)
        data = [None if kind == "state" else next(values, None) for kind in kinds]
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
    from brainseg.io.slices import decode_image, encode_png
    from brainseg.views.overlay import probability_heatmap, render_views

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


# ------------------------------------------------------------------------------------------ browser

CHROMIUM = os.environ.get("BRAINSEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SLIDER = "#threshold input[type=range]"
# Page-side clocks (performance.now(), the events' own timeStamps): a move is the range's `input` event -> the live
# canvas drawn (`brainseg-drawn`, assets/app/threshold.js) and -> the next animation frame; a release is its
# `pointerup` -> the server's new overlay <img> decoded (the `/threshold` round trip as the page sees it).
PROBE_JS = """([slider, overlay]) => {
    const bench = window.__brainsegBench = {moves: [], releases: [], inputAt: null, releaseAt: null};
    const range = document.querySelector(slider);
    range.addEventListener("input", (e) => { bench.inputAt = e.timeStamp; }, true);
    range.addEventListener("pointerup", (e) => { bench.releaseAt = e.timeStamp; }, true);
    document.addEventListener("brainseg-drawn", (e) => {
        const start = bench.inputAt, drawn = performance.now();
        requestAnimationFrame(() => bench.moves.push(
            {drawn: drawn - start, frame: performance.now() - start, area: e.detail.area}));
    });
    const block = document.querySelector(overlay);
    bench.src = block.querySelector("img").src;
    new MutationObserver(() => {
        const img = block.querySelector("img");
        if (!img || img.src === bench.src || bench.releaseAt === null) return;
        const start = bench.releaseAt;
        bench.src = img.src;
        bench.releaseAt = null;
        img.decode().then(() => bench.releases.push(performance.now() - start));
    }).observe(block, {subtree: true, childList: true, attributes: true, attributeFilter: ["src"]});
}"""
# One drag per cycle, alternating directions so every release lands on a different mask than the last one.
DRAGS = ((0.15, 0.35, 0.55, 0.75, 0.9), (0.85, 0.65, 0.45, 0.25, 0.1))


def browser_latency(url: str, image: Path, moves: int = 40, chromium: str = CHROMIUM,
                    timeout_ms: int = 60_000) -> dict[str, dict[str, float]]:
    """Drag the threshold slider in headless Chromium (Playwright, real pointer events) over ``image``.

    Returns percentiles of ``move_drawn`` (input event -> live canvas drawn), ``move_frame`` (-> the next
    animation frame) and ``release`` (pointerup -> the server's redrawn overlay decoded). The first drag is warm-up.
    """
    from playwright.sync_api import sync_playwright

    if not Path(chromium).is_file():
        raise FileNotFoundError(f"Chromium not found at {chromium} (apt-get install chromium, or BRAINSEG_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            page.locator("#slice-file input[type=file]").set_input_files(str(image))
            page.locator("#live-threshold [data-ready=true]").wait_for(state="attached")
            page.locator("#overlay img").wait_for()
            page.evaluate(PROBE_JS, [SLIDER, "#overlay"])
            box = page.locator(SLIDER).bounding_box()
            y = box["y"] + box["height"] / 2

            def x(fraction: float) -> float:
                return box["x"] + fraction * box["width"]

            cycles = 1 + max(1, -(-moves // len(DRAGS[0])))
            for cycle in range(cycles):
                path = DRAGS[cycle % 2]
                page.mouse.move(x(path[0]), y)
                for i, fraction in enumerate(path):
                    done = cycle * len(path) + i + 1
                    if i == 0:
                        page.mouse.down()  # jumps the thumb to the pointer: the drag's first input event
                    else:
                        page.mouse.move(x(fraction), y, steps=1)
                    page.wait_for_function("n => window.__brainsegBench.moves.length >= n", arg=done)
                page.mouse.up()
                page.wait_for_function("n => window.__brainsegBench.releases.length >= n", arg=cycle + 1)
            bench = page.evaluate("() => window.__brainsegBench")
        finally:
            browser.close()
    warm = len(DRAGS[0])
    return {"move_drawn": percentiles([m["drawn"] for m in bench["moves"][warm:]]),
            "move_frame": percentiles([m["frame"] for m in bench["moves"][warm:]]),
            "release": percentiles(bench["releases"][1:])}


# --------------------------------------------------------------------------------------------- main


def pick_slices(data_dir: str | Path, count: int) -> tuple[list[tuple[Path, Path]], Path]:
    """``count`` slices spread over the folder's patients, and the one with the largest ground-truth mask
    (what the browser drags over: every threshold step changes its overlay)."""
    from brainseg.io.dataset import read_mask

    records = [r for p in scan_dataset(data_dir) for r in p.slices if r.mask_path]
    chosen = records[:: max(1, len(records) // count)][:count]
    tumor = max(chosen, key=lambda r: int(read_mask(r.mask_path).sum()))
    return [(r.image_path, r.mask_path) for r in chosen], tumor.image_path


def measure_app(data_dir: str | Path, url: str | None = None, repeats: int = 30, moves: int = 40,
                app_args: tuple[str, ...] = (), gradio_client: bool = False, in_process_steps: bool = False,
                precision: str | None = None, model: str | None = None) -> dict:
    """The app's latencies in one run: HTTP upload -> overlay and ``/threshold`` (``repeats`` each), browser
    threshold moves and releases (``moves``; ``browser_error`` instead when Chromium or Playwright is missing),
    optionally ``gradio_client`` and the in-process steps. Starts ``app.py app_args`` unless ``url`` is given.
    ``ratios``: browser move p50 / HTTP ``/threshold`` p50, the same for the next frame."""
    slices, tumor = pick_slices(data_dir, repeats)
    result: dict = {}

    def run(target: str) -> None:
        result["http"] = http_latency(target, slices, repeats)
        if gradio_client:
            result["gradio_client"] = gradio_client_latency(target, slices, repeats)
        try:
            result["browser"] = browser_latency(target, tumor, moves)
        except (ImportError, FileNotFoundError) as exc:
            result["browser_error"] = str(exc)

    if url is None:
        extra = (*app_args, *(("--precision", precision) if precision else ()), *(("--model", model) if model else ()))
        log = Path(tempfile.mkdtemp(prefix="brainseg-bench-")) / "app.log"
        with DemoServer.start(log, "--data-dir", str(data_dir), *extra) as server:
            run(server.url)
    else:
        run(url)
    if in_process_steps:
        from brainseg.app.models import DEFAULT_PRECISION

        result["in_process"] = in_process(slices, precision or DEFAULT_PRECISION, model)
    if "browser" in result:
        http_p50 = result["http"]["threshold_change"]["p50_ms"]
        result["ratios"] = {f"browser_{key}_over_http_threshold": round(result["browser"][key]["p50_ms"] / http_p50, 3)
                            for key in ("move_drawn", "move_frame")}
    result["cpu_count"] = os.cpu_count()
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return result


def table(result: dict) -> str:
    """The run as a Markdown table: each figure with its p95 and count, the browser next to HTTP."""
    rows = [("upload -> overlay, HTTP", result["http"]["upload_to_overlay"]),
            ("threshold change, HTTP `/threshold` (what each move cost before)", result["http"]["threshold_change"])]
    if "browser" in result:
        browser = result["browser"]
        rows += [("threshold move in the browser: input event -> overlay canvas drawn", browser["move_drawn"]),
                 ("threshold move in the browser: input event -> next animation frame", browser["move_frame"]),
                 ("slider release in the browser: pointerup -> server overlay shown", browser["release"])]
    for name, values in result.get("gradio_client", {}).items():
        rows.append((f"{name.replace('_', ' ')}, gradio_client", values))
    lines = ["| measurement | p50 ms | p95 ms | n |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['p50_ms']} | {v['p95_ms']} | {v['n']} |" for name, v in rows]
    if "ratios" in result:
        ratio = result["ratios"]["browser_move_drawn_over_http_threshold"]
        lines.append(f"\nbrowser move p50 / HTTP threshold p50 = {ratio} (same run; "
                     f"load average {result['load_average'][0]} on {result['cpu_count']} CPUs)")
    elif "browser_error" in result:
        lines.append(f"\nbrowser not measured: {result['browser_error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "lgg-test"))
    parser.add_argument("--url", default=None, help="a running app (default: start app.py here)")
    parser.add_argument("-n", "--repeats", type=int, default=30, help="HTTP requests of each kind")
    parser.add_argument("--moves", type=int, default=40, help="threshold moves in the browser")
    parser.add_argument("--gradio-client", action="store_true", help="also time the same calls via gradio_client")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="passed to app.py")
    parser.add_argument("--model", default=None, help="passed to app.py")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = measure_app(args.data_dir, args.url, args.repeats, args.moves, gradio_client=args.gradio_client,
                         in_process_steps=args.url is None, precision=args.precision, model=args.model)
    print(table(result))
    print_and_save(result, args.json)
    return result


if __name__ == "__main__":
    main()
