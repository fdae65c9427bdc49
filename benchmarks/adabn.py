"""Per-scan adaptation without labels, measured: AdaBN (BatchNorm statistics re-estimated on the scan itself).

    python -m benchmarks.adabn --model unet-generalist --scans ../shared/data/external-brats2013 \
        --truth-glob 'OTMultiClass*' [--flair-only] [--json out.json]

For each labelled scan: the volume pipeline as ``brainseg predict`` runs it (3D Dice at the model's own
threshold), then again after every BatchNorm layer's running mean and variance were replaced by the statistics of
this scan's own model-input slices (the slices that hold head, cropped and resized as the pipeline shows them;
flip TTA's mirrored slices included when the model uses it). No label is used for the adaptation; the labels only
score it. A measurement, not a feature: ``predict`` gets an ``--adapt`` option only if this pays
(docs/calibration.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainseg.calibration.fit import find_scans, predict_scan
from brainseg.evaluation.volumes import evaluate_volume
from brainseg.inference.preprocess import uint8_batch_to_input
from brainseg.inference.segmenter import Segmenter


def adapted(segmenter: Segmenter, slices: np.ndarray, batch_size: int = 16) -> Segmenter:
    """A copy of ``segmenter`` (PyTorch) whose BatchNorm statistics are those of ``slices`` (N, S, S, 3 uint8)."""
    model = copy.deepcopy(segmenter.model).float()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("the model has no BatchNorm layer: AdaBN does not apply")
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch below
        norm.train()
    with torch.no_grad():
        for start in range(0, len(slices), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(slices[start:start + batch_size])).permute(0, 3, 1, 2)
            batch = uint8_batch_to_input(chunk, segmenter.config.normalize).to(segmenter.device)
            model(batch)
            if segmenter.config.flip_tta:
                model(batch.flip(-1))
    model.eval()
    return Segmenter(model, segmenter.config, source=f"{segmenter.source} + AdaBN", device=str(segmenter.device),
                     backend="torch")


def measure(model: str, scans: Path, truth_glob: str | None, flair_only: bool) -> dict:
    segmenter = Segmenter.from_pretrained(model, backend="torch")
    rows = []
    for subject in find_scans(scans, truth_glob):
        prediction, truth = predict_scan(segmenter, subject, flair_only)
        shown = prediction.images[prediction.images.reshape(prediction.n_slices, -1).max(axis=1) > 0]
        before = evaluate_volume(prediction, truth).dice
        after_prediction, _ = predict_scan(adapted(segmenter, prediction.box.extract(shown)), subject, flair_only)
        after = evaluate_volume(after_prediction, truth).dice
        rows.append({"name": subject.name, "dice": round(before, 4), "dice_adabn": round(after, 4)})
        print(f"{subject.name}: 3D Dice {before:.4f} -> {after:.4f} with AdaBN", file=sys.stderr)
    return {"model": model, "scans": str(scans), "flair_only": flair_only, "threshold": segmenter.config.threshold,
            "subjects": rows, "mean_dice": round(float(np.mean([r["dice"] for r in rows])), 4),
            "mean_dice_adabn": round(float(np.mean([r["dice_adabn"] for r in rows])), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adabn", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet-generalist")
    parser.add_argument("--scans", required=True, type=Path)
    parser.add_argument("--truth-glob")
    parser.add_argument("--flair-only", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = measure(args.model, args.scans, args.truth_glob, args.flair_only)
    print(f"mean 3D Dice {result['mean_dice']:.4f} -> {result['mean_dice_adabn']:.4f} with AdaBN", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
