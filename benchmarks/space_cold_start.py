"""Cold start of the exported Space, as a Space starts: fresh venv, ``pip install -r requirements.txt`` only, then
``python app.py`` in the folder ``brainseg space export`` wrote.

    python -m benchmarks.space_cold_start [--model NAME] [--sources bundled hub] [--venv PATH] [--json out.json]

(from the repository root). ``bundled``: the export ships the model's weights (Git LFS); ``hub``: the export names
a Hub model that the local Hub stand-in (``tests/hub_standin.py``, ``HF_ENDPOINT``) serves from the same folder,
downloaded at start. Each start has an empty Hugging Face and ONNX cache. Times run from ``python app.py`` to the
server answering, to the first ``/segment`` answer (a held-out slice), then one ``/segment_volume`` (the same
patient's FLAIR stack as NIfTI); memory is the server's RSS after the volume and its peak. ``--venv`` reuses a venv
made by an earlier run (only what ``requirements.txt`` added since is installed). Default model: the app's default.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' stand-ins and scan writer (volume_synth)

from demo_server import free_port  # noqa: E402
from hub_standin import FakeHub  # noqa: E402
from space_standin import cold_start, space_venv, write_test_scan  # noqa: E402

from brainseg.io.hub import DEFAULT_MODEL_NAME, bundled_models  # noqa: E402
from brainseg.publishing.space import export_space  # noqa: E402

LGG_TEST_DIR = REPO.parent / "shared" / "data" / "lgg-test"
PATIENT = "TCGA_HT_8114_19981030"  # 22 slices, a large tumor
HUB_REPO = "brainseg-bench/space-model"


def start_once(source: str, model: str, python: Path, work: Path, slice_path: Path, flair: Path) -> dict:
    """Export (bundled weights, or the Hub model served by the stand-in) and time one cold start."""
    env = {"HF_HOME": str(work / f"hf-{source}"), "BRAINSEG_CACHE": str(work / f"cache-{source}")}
    hub = None
    if source == "hub":
        hub = FakeHub().start()
        hub.add_folder(HUB_REPO, bundled_models()[model])
        env["HF_ENDPOINT"] = hub.endpoint
    try:
        export_start = time.perf_counter()
        space = export_space(work / f"space-{source}", HUB_REPO if hub else model)
        export_s = time.perf_counter() - export_start
        measured = cold_start(space.folder, python, slice_path, flair, free_port(), work / f"app-{source}.log", env)
    finally:
        if hub is not None:
            hub.stop()
    return {"export_s": export_s, "committed_kb": space.total_bytes / 1024, **measured.as_dict()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="a bundled model (default: the app's default)")
    parser.add_argument("--sources", nargs="+", choices=("bundled", "hub"), default=["bundled", "hub"])
    parser.add_argument("--venv", type=Path, default=None, help="reuse this venv (made by an earlier run)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="brainseg-space-"))
    result: dict = {"model": args.model, "cpus": os.cpu_count(), "install_s": None, "starts": {}}
    python, result["install_s"] = space_venv(args.venv or work / "venv", REPO / "requirements.txt")
    print(f"venv: {python.parent.parent} (pip install -r requirements.txt: {result['install_s']:.0f} s)", flush=True)
    slice_path, flair = write_test_scan(LGG_TEST_DIR, PATIENT, work / "scan")
    for source in args.sources:
        result["starts"][source] = start_once(source, args.model, python, work, slice_path, flair)
        print(json.dumps({source: result["starts"][source]}), flush=True)

    print("| weights | export s | to server up s | to first /segment s | one /segment_volume s | RSS after volume MB "
          "| peak RSS MB | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for source, m in result["starts"].items():
        print(f"| {source} | {m['export_s']:.1f} | {m['ready_s']:.1f} | {m['first_segment_s']:.1f} | "
              f"{m['volume_s']:.1f} | {m['rss_mb_after_volume']:.0f} | {m['peak_rss_mb']:.0f} | "
              f"{m['load_average']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
