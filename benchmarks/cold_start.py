"""Cold start of the app's model path per backend, and what serving from onnxruntime alone would save.

    python benchmarks/cold_start.py [--repeats 3] [--json out.json]

Each sample is a fresh Python process (the same interpreter) that times, for one held-out slice:
``import`` -> model loaded -> first probability map, and reports its peak resident memory. Cases:

* ``torch``: ``Segmenter.from_pretrained(None, backend="torch")`` (brainseg imports torch + torchvision);
* ``onnx, graph cached``: ``backend="onnx"`` with the graph already in the cache (every start after the first);
* ``auto, graph cached``: the app's default: ONNX Runtime after checking it against PyTorch on a probe batch;
* ``onnx, first start``: ``backend="onnx"`` with an empty cache (exports the graph once);
* ``onnxruntime alone``: numpy + onnxruntime + the cached graph, preprocessing in numpy, no torch imported:
  the floor a torch-free app could reach.
* ``import app``: the Gradio app module with everything it imports (what any backend adds on top).

The cases run interleaved, ``--repeats`` times each; the table shows the medians. Also prints the installed
size of the packages involved (``site-packages``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO.parent / "shared" / "data" / "lgg-test"
SLICE = DATA_DIR / "TCGA_DU_5871_19941206" / "TCGA_DU_5871_19941206_22.tif"

_REPORT = """
import json, sys
# VmHWM: this process's own peak (ru_maxrss would include the parent's peak, inherited through fork)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import, "first_s": t_first - t_load,
                  "total_s": t_first - t0, "peak_rss_mb": peak_kb / 1024,
                  "torch_imported": "torch" in sys.modules, "backend": backend}))
"""
SEGMENTER = """
import time
t0 = time.perf_counter()
from brainseg import Segmenter
from brainseg.io.slices import decode_image
t_import = time.perf_counter()
segmenter = Segmenter.from_pretrained(None, device="cpu", backend={backend!r})
backend = segmenter.backend
t_load = time.perf_counter()
segmenter.predict_proba(decode_image({slice!r}))
t_first = time.perf_counter()
"""
ONNXRUNTIME_ONLY = """
import time
t0 = time.perf_counter()
import numpy as np
import onnxruntime as ort
from PIL import Image
t_import = time.perf_counter()
session = ort.InferenceSession({graph!r}, providers=["CPUExecutionProvider"])
backend = "onnxruntime alone"
t_load = time.perf_counter()
image = np.asarray(Image.open({slice!r}).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255
image = (image - image.mean(axis=(1, 2, 3), keepdims=True)) / (2 * image.std(axis=(1, 2, 3), ddof=1, keepdims=True))
session.run(None, {{"input": image.astype(np.float32)}})
t_first = time.perf_counter()
"""
APP_IMPORT = """
import time
t0 = time.perf_counter()
import app
t_import = t_load = t_first = time.perf_counter()
backend = "import app"
"""
PACKAGES = ("torch", "torchvision", "nvidia", "triton", "onnxruntime", "onnx", "gradio", "numpy")


def run_case(code: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", code + _REPORT], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def site_packages_sizes() -> dict[str, float]:
    """MB on disk of each of :data:`PACKAGES` under this interpreter's site-packages (absent ones left out)."""
    import site

    root = Path(site.getsitepackages()[0])
    sizes = {}
    for name in PACKAGES:
        folder = root / name
        if folder.is_dir():
            sizes[name] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    return sizes


def main(argv: list[str] | None = None) -> dict:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from brainseg.inference.backends import ensure_onnx
    from brainseg.inference.segmenter import Segmenter

    warm = Segmenter.from_pretrained(None, device="cpu", backend="torch")
    graph = str(ensure_onnx(REPO / "assets" / "model", warm.model, warm.config.input_size))
    cases = {
        "torch": lambda: run_case(SEGMENTER.format(backend="torch", slice=str(SLICE))),
        "onnx, graph cached": lambda: run_case(SEGMENTER.format(backend="onnx", slice=str(SLICE))),
        "auto, graph cached (app default)": lambda: run_case(SEGMENTER.format(backend="auto", slice=str(SLICE))),
        "onnx, first start (exports the graph)": lambda: run_case(
            SEGMENTER.format(backend="onnx", slice=str(SLICE)),
            dict(os.environ, BRAINSEG_CACHE=tempfile.mkdtemp(prefix="brainseg-cold-"))),
        "onnxruntime alone (no torch)": lambda: run_case(ONNXRUNTIME_ONLY.format(graph=graph, slice=str(SLICE))),
        "import app (gradio + brainseg)": lambda: run_case(APP_IMPORT),
    }
    samples: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, case in cases.items():
            samples[name].append(case())

    result = {"load_average": os.getloadavg(), "sizes_mb": site_packages_sizes(), "cases": {}}
    print("| start | import s | load s | first slice s | total s | peak RSS MB | torch imported |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in samples.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("import_s", "load_s", "first_s", "total_s",
                                                                  "peak_rss_mb")}
        med["torch_imported"] = runs[0]["torch_imported"]
        med["backend"] = runs[0]["backend"]
        result["cases"][name] = med
        print(f"| {name} | {med['import_s']:.2f} | {med['load_s']:.2f} | {med['first_s']:.2f} | "
              f"{med['total_s']:.2f} | {med['peak_rss_mb']:.0f} | {'yes' if med['torch_imported'] else 'no'} |")
    print(f"\nmedian of {args.repeats} fresh processes each; load average {result['load_average'][0]:.1f}")
    print("site-packages MB: " + ", ".join(f"{k} {v:.0f}" for k, v in result["sizes_mb"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
