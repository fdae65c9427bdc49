"""How far bf16 CPU inference strays from fp32: mask disagreement at a threshold, and speed.

    python -m benchmarks.bf16_agreement --data-dir ../shared/data/lgg-test [--model FOLDER]
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from benchmarks.common import print_and_save
from brainseg import Segmenter
from brainseg.inference.postprocess import binarize
from brainseg.io.dataset import load_slices, scan_dataset


def per_slice_ms(segmenter: Segmenter, images: np.ndarray, n: int) -> float:
    """Median milliseconds of one single-slice ``predict_proba`` call, in a worker thread like the app."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_median_ms, segmenter, images, n).result()


def _median_ms(segmenter: Segmenter, images: np.ndarray, n: int) -> float:
    segmenter.predict_proba(images[0])
    times = []
    for image in images[:n]:
        started = time.perf_counter()
        segmenter.predict_proba(image)
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


def compare(fp32: np.ndarray, bf16: np.ndarray, threshold: float, min_px: int) -> dict[str, float | int]:
    """Pixel and slice level disagreement of the two precisions' masks."""
    a = np.stack([binarize(p, threshold, min_px) for p in fp32])
    b = np.stack([binarize(p, threshold, min_px) for p in bf16])
    differ = a != b
    per_slice = differ.reshape(len(a), -1).sum(axis=1)
    union = int((a | b).sum())
    return {
        "threshold": threshold,
        "min_component_px": min_px,
        "pixels_differing": int(differ.sum()),
        "pixel_disagreement_rate": float(differ.mean()),
        "slices_with_any_difference": int((per_slice > 0).sum()),
        "max_pixels_differing_in_a_slice": int(per_slice.max()),
        "fp32_mask_pixels": int(a.sum()),
        "dice_bf16_vs_fp32": 1.0 if union == 0 else float(2 * (a & b).sum() / (a.sum() + b.sum())),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/lgg-test")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--timing-slices", type=int, default=40)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    records = [r for p in scan_dataset(args.data_dir) for r in p.slices]
    images, _ = load_slices(records)
    fp32 = Segmenter.from_pretrained(args.model, device="cpu", bf16=False)
    bf16 = Segmenter.from_pretrained(args.model, device="cpu", bf16=True)
    proba32 = fp32.predict_proba_batch(images, batch_size=16)
    proba16 = bf16.predict_proba_batch(images, batch_size=16)
    cfg = fp32.config
    result = {
        "model": fp32.source,
        "n_slices": len(images),
        "torch_threads": torch.get_num_threads(),
        "max_abs_probability_difference": float(np.abs(proba32 - proba16).max()),
        "at_0.5": compare(proba32, proba16, 0.5, 0),
        "at_model_postprocessing": compare(proba32, proba16, cfg.threshold, cfg.min_component_px),
        "fp32_ms_per_slice_median": per_slice_ms(fp32, images, args.timing_slices),
        "bf16_ms_per_slice_median": per_slice_ms(bf16, images, args.timing_slices),
    }
    print_and_save(result, args.json)
    return result


if __name__ == "__main__":
    main()
