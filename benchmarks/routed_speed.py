"""Per-slice time of the routed default against its members, through ``Segmenter.predict_proba`` (what the app
runs on an upload), on held-out slices in the form that goes home (as is) and one that goes away (FLAIR only).

    python benchmarks/routed_speed.py [--data-dir ../shared/data/lgg-test] [-n 40]

Each figure is the median of ``n`` calls, the models measured back to back in one run (compare ratios).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from brainseg import Segmenter  # noqa: E402
from brainseg.data import load_slices, scan_dataset  # noqa: E402
from brainseg.forms import present  # noqa: E402


def median_ms(segmenter: Segmenter, images: np.ndarray, repeats: int) -> float:
    """Median milliseconds of one ``predict_proba`` call, cycling through ``images``."""
    for image in images[:3]:
        segmenter.predict_proba(image)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        segmenter.predict_proba(images[i % len(images)])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "lgg-test"))
    parser.add_argument("-n", "--repeats", type=int, default=40)
    args = parser.parse_args(argv)
    records = [r for patient in scan_dataset(args.data_dir) for r in patient.slices]
    images, masks = load_slices(records)
    has_tumor = masks.any(axis=(1, 2))
    tumor, tumor_masks = images[has_tumor], masks[has_tumor]
    forms = {"as is (goes home)": tumor, "FLAIR only (goes away)": present("flair_only", tumor, tumor_masks)[0]}
    models = {name: Segmenter.from_pretrained(name, device="cpu") for name in ("routed", "unet", "robust-ensemble")}
    print("| model (backend) | " + " | ".join(f"ms per slice, {form}" for form in forms) + " |")
    print("|---|" + "---|" * len(forms))
    for name, segmenter in models.items():
        cells = [f"{median_ms(segmenter, batch, args.repeats):.1f}" for batch in forms.values()]
        print(f"| `{name}` ({segmenter.backend}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
