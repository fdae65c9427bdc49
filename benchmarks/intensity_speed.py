"""Cost of each intensity rule on one 240 x 240 x 155 channel (the BraTS grid); the target of issue 33 is <= 0.5 s.

    python -m benchmarks.intensity_speed [--repeats 5]

The volume is synthetic (an ellipsoid of tissue with noise, a bright lesion, zero background), float32 as
``load_volume`` gives it. Timed per rule (median of ``--repeats``): landmarks + map of one channel to uint8
(``Standardizer.to_uint8``), and once the head mask that every rule shares (``head_mask``, unchanged by issue 33).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from brainseg.inference.intensity import RULES, Standardizer, head_mask

SHAPE = (155, 240, 240)  # presented (Z, R, C)


def synthetic_channel(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, r, c = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    inside = ((z - 77) / 70.0) ** 2 + ((r - 120) / 100.0) ** 2 + ((c - 120) / 85.0) ** 2 < 1
    lesion = ((z - 80) / 20.0) ** 2 + ((r - 90) / 25.0) ** 2 + ((c - 150) / 25.0) ** 2 < 1
    volume = np.where(inside, 600.0, 0.0) + np.where(lesion, 900.0, 0.0)
    return (volume + rng.normal(0, 40, SHAPE) * inside).astype(np.float32)


def median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    volume = synthetic_channel()
    head = head_mask(volume)
    print(f"volume {SHAPE[2]} x {SHAPE[1]} x {SHAPE[0]} float32, head {head.mean():.1%} of the voxels")
    print(f"head_mask (shared by every rule): {median_seconds(lambda: head_mask(volume), args.repeats):.3f} s")
    for rule in RULES:
        standardizer = Standardizer.named(rule)
        seconds = median_seconds(lambda s=standardizer: s.to_uint8(volume, head, "flair"), args.repeats)
        print(f"{rule:12s} {seconds:.3f} s per channel")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
