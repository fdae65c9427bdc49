"""Cohort throughput: the same 20 scans through ``brainseg predict`` with 1 process, N processes and Ray.

    python benchmarks/cohort_speed.py [--scans ../shared/data/external-brats2013] [--copies 4] [--model unet]
        [--runs local:1,local:2,ray:2] [--table-rows 10000]

The scans are the BRATS 2013 subject folders (FLAIR + T1c, each listed ``--copies`` times under its own name, so
5 x 4 = 20 scans of real size). Each configuration is one fresh ``brainseg predict --manifest`` process
into its own output folder, timed from start to exit (imports, model loads, Ray start-up included), with the peak
resident memory of its whole process tree (Ray's own processes included) sampled every 0.2 s. A one-scan run first
fills the ONNX cache so no configuration pays the export. Also times one results-table rewrite at ``--table-rows``
rows (the table is rewritten after each scan). Prints Markdown tables; compare ratios on one machine.
"""
from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from brainseg.cohort.runner import COLUMNS, ResultsTable  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def write_manifest(scans: Path, copies: int, path: Path) -> int:
    """A manifest listing each subject folder's FLAIR and T1c ``copies`` times; returns the number of rows."""
    rows = []
    for folder in sorted(p for p in scans.iterdir() if p.is_dir()):
        flair, t1ce = sorted(folder.glob("Flair*.nii*")), sorted(folder.glob("T1c*.nii*"))
        for copy in range(copies):
            rows.append({"name": f"{folder.name}_{copy}", "flair": str(flair[0]),
                         "t1ce": str(t1ce[0]) if t1ce else ""})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["name", "flair", "t1ce"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(manifest: Path, out: Path, model: str, engine: str, workers: int) -> dict:
    command = [sys.executable, "-m", "brainseg.cli.predict", "--manifest", str(manifest), "--out-dir", str(out),
               "--model", model, "--engine", engine, "--workers", str(workers), "--quiet"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        peak = max(peak, tree_rss(watched))
        time.sleep(0.2)
    wall = time.perf_counter() - started
    stderr = process.stderr.read()
    summary = next((line for line in stderr.splitlines() if line.startswith("done:")), "")
    if not summary:
        raise SystemExit(f"{engine}:{workers} failed:\n{stderr[-3000:]}")
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ok = [row for row in rows if row["status"] == "ok"]
    per_scan = sum(float(row["seconds"]) for row in ok) / max(len(ok), 1)
    in_run = float(re.search(r"in ([\d.]+) s", summary).group(1))
    return {"config": f"{engine}:{workers}", "scans": len(rows), "ok": len(ok), "wall_s": wall, "run_s": in_run,
            "per_scan_s": per_scan, "peak_rss_gb": peak / 2**30, "scans_per_hour": 3600 * len(rows) / wall}


def table_rewrite_ms(rows: int, folder: Path) -> float:
    """One ``ResultsTable.record`` (the whole CSV rewritten atomically, fsync included) at ``rows`` rows."""
    table = ResultsTable(folder / "big.csv")
    example = {key: "x" * 12 for key in COLUMNS}
    for i in range(rows - 1):
        table.rows[f"scan{i}"] = dict(example, name=f"scan{i}")
    started = time.perf_counter()
    table.record(dict(example, name="last"))
    return 1000 * (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=Path, default=SHARED / "external-brats2013")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--runs", default="local:1,local:2,ray:2")
    parser.add_argument("--table-rows", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cohort-speed-") as tmp:
        tmp_path = Path(tmp)
        n = write_manifest(args.scans, args.copies, tmp_path / "manifest.csv")
        warm = tmp_path / "warm.csv"
        warm.write_text("\n".join((tmp_path / "manifest.csv").read_text().splitlines()[:2]) + "\n")
        run(warm, tmp_path / "warm", args.model, "local", 1)
        results = []
        for spec in args.runs.split(","):
            engine, workers = spec.split(":")
            results.append(run(tmp_path / "manifest.csv", tmp_path / spec.replace(":", "-"), args.model, engine,
                               int(workers)))
            print(f"{spec}: {results[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
        rewrite = table_rewrite_ms(args.table_rows, tmp_path)
    base = results[0]["wall_s"]
    print(f"{n} scans ({args.scans.name}, x{args.copies}), model {args.model}, {psutil.cpu_count()} CPUs\n")
    print("| run | scans ok | wall s (start to exit) | in-run s | s per scan in a worker | scans/hour | "
          "vs first | peak RSS GiB (process tree) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['ok']}/{r['scans']} | {r['wall_s']:.1f} | {r['run_s']:.1f} | "
              f"{r['per_scan_s']:.2f} | {r['scans_per_hour']:.0f} | {base / r['wall_s']:.2f}x | "
              f"{r['peak_rss_gb']:.2f} |")
    print(f"\nresults-table rewrite at {args.table_rows} rows: {rewrite:.1f} ms")


if __name__ == "__main__":
    main()
