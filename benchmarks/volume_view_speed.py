"""What the Volume tab does after its model run, step by step, on one scan: the server-side seconds of each
redraw the browser waits for (no model run in any of them).

    python -m benchmarks.volume_view_speed \
        ../shared/data/external-brats2013/brats_2013_pat0002_1 [--model unet] [--repeats 3]

(from the repository root; ``SUBJECT`` holds ``Flair_subtrMeanDivStd.nii.gz``, ``T1c_subtrMeanDivStd.nii.gz`` and
``OTMultiClass.nii.gz``). One ``VolumeHandlers.segment_volume`` (the model run, every output and file), then the
median over ``--repeats`` of: a scrubber move and a click (three planes, probability map, caption), the page's
threshold release (card, numbers, area plot, planes: ``rethreshold_view``), the two steps chained after it
(the 3D view: ``scene``; mask, GIF, PDF + JSON: ``files``) and each file alone, the result card alone, and the API's
``/volume_threshold`` (everything at once). Thresholds alternate so no mask comes from the cache.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from brainseg.app.models import ModelRegistry, load_started_model
from brainseg.app.volume_handlers import VolumeHandlers
from brainseg.inference.volume import save_mask
from brainseg.views import volume_export

THRESHOLDS = (0.4, 0.45, 0.55, 0.65, 0.7, 0.75, 0.8, 0.85)


def median_s(step: Callable[[float], object], repeats: int, offset: int) -> float:
    """Median seconds of ``step(threshold)`` over ``repeats`` thresholds no earlier step used."""
    times = []
    for i in range(repeats):
        threshold = THRESHOLDS[(offset + i) % len(THRESHOLDS)]
        started = time.perf_counter()
        step(threshold)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject", type=Path)
    parser.add_argument("--model", default="unet", help="a bundled model's name or a folder (default: unet)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    segmenter, _ = load_started_model(args.model)
    threshold = segmenter.config.threshold
    with tempfile.TemporaryDirectory() as cache:
        handlers = VolumeHandlers(ModelRegistry.around(segmenter, args.model), cache)
        started = time.perf_counter()
        out = handlers.segment_volume(str(args.subject / "Flair_subtrMeanDivStd.nii.gz"), None,
                                      str(args.subject / "T1c_subtrMeanDivStd.nii.gz"), threshold,
                                      str(args.subject / "OTMultiClass.nii.gz"))
        run_s = time.perf_counter() - started
        state = out.state
        point = (out.position.value, out.coronal_position.value, out.sagittal_position.value)  # 1-based sliders
        stem = Path(tempfile.mkdtemp(dir=cache)) / "bench"
        steps: dict[str, Callable[[float], object]] = {
            "scrubber_move": lambda t: handlers.move(state, point[0] + 1, point[1], point[2], t),
            "click": lambda t: handlers.slice_view(state, (point[0] - 1, point[1] + 5, point[2] - 5), t),
            "threshold_release_view": lambda t: handlers.rethreshold_view(state, t, *point),
            "threshold_release_3d_view": lambda t: handlers.scene(state, t),
            "threshold_release_downloads": lambda t: handlers.files(state, t),
            "result_card": lambda t: state.card(t),
            "mask_nifti": lambda t: save_mask(state.prediction, f"{stem}_{t}_mask.nii.gz", t),
            "overlay_gif": lambda t: volume_export.save_overlay_gif(state.prediction, f"{stem}_{t}.gif", t,
                                                                    state.shown_truth),
            "3d_view_glb": lambda t: state.save_scene(t, f"{stem}_{t}.glb"),
            "report_pdf_json": lambda t: state.save_report(state.card(t), handlers.numbers(state, t), t,
                                                           stem.with_name(f"bench_{t}")),
            "api_volume_threshold_all": lambda t: handlers.rethreshold(state, t, *point),
        }
        seconds = {name: median_s(step, args.repeats, i) for i, (name, step) in enumerate(steps.items())}
    print(json.dumps({
        "subject": str(args.subject), "model": args.model, "shape": list(state.prediction.proba.shape),
        "model_run_with_all_outputs_s": round(run_s, 2), "median_s": seconds,
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
