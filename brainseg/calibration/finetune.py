"""Fine-tuning the last part of a U-Net on a site's labelled scans (``brainseg calibrate --fine-tune``).

The model runs **once** per scan through the whole-scan pipeline (:func:`brainseg.inference.volume.predict_subject`,
as ``brainseg predict`` presents the slices); a hook keeps the inputs of the part to train (the *tail*: the head's
1x1 convolution, or the last decoder block and the head) for every slice the model ran. Training then runs only the
tail on those cached inputs (random square crops, BCE + soft Dice against the ground truth framed by the same crop
box onto the model-input grid), and a tuned tail's probabilities are put back on the presented grid the way the
pipeline puts them back, so the threshold / minimum-component calibration of :mod:`brainseg.calibration.fit` runs
on top unchanged. With the tail untouched the probabilities are the pipeline's own (same fp32 arithmetic).
BatchNorm layers keep their running statistics (the tail runs in eval mode); their affine weights train with the
tail's convolutions.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from brainseg.calibration.fit import (
    CalibrationError,
    Choice,
    Grid,
    ScanTable,
    check_labelled,
    choose,
    predict_scan,
    scan_table,
)
from brainseg.inference.segmenter import Segmenter, autocast
from brainseg.inference.volume import VolumePrediction
from brainseg.io.subjects import SubjectInputs
from brainseg.models.unet import UNet
from brainseg.training.loop import bce_dice_loss

PARTS = ("head", "last-block")  # what can be trained: the 1x1 head; the last decoder block + the head
DEFAULT_PART = "head"
PREDICT_BATCH = 16


@dataclass(frozen=True)
class FineTuneSettings:
    """What is trained and how: ``steps`` Adam steps at ``lr`` on batches of ``batch_size`` random ``crop`` x
    ``crop`` crops (model-input pixels), half of them from slices with labelled tumor; seeded by ``seed``."""

    part: str = DEFAULT_PART
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 8
    crop: int = 256
    seed: int = 0
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise CalibrationError(f"--fine-tune {self.part!r}: choose one of {', '.join(PARTS)}")
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.crop < 8:
            raise CalibrationError("fine-tune settings need steps >= 1, lr > 0, batch size >= 1 and crop >= 8")


def tail_names(model: nn.Module, part: str) -> tuple[str, ...]:
    """The submodules ``part`` trains, in the order they run; refuses networks other than the U-Net."""
    if not isinstance(model, UNet):
        raise CalibrationError(f"--fine-tune trains the last block of a U-Net; this model is a {type(model).__name__}")
    return ("outc",) if part == "head" else (f"ups.{len(model.ups) - 1}", "outc")


class Tail(nn.Module):
    """The trained part of ``model``: its first module takes the cached inputs, the others run after it."""

    def __init__(self, model: nn.Module, part: str) -> None:
        super().__init__()
        self.names = tail_names(model, part)
        self.parts = nn.ModuleList(model.get_submodule(name) for name in self.names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.parts[0](*inputs)
        for module in self.parts[1:]:
            out = module(out)
        return out


@dataclass
class ScanFeatures:
    """One scan (``name``: its folder): its pipeline prediction and truth (input grid), the tail's inputs for
    every slice the model ran (in run order; ``flipped``: those of the mirrored slices when the model uses flip
    TTA), the truth on the model-input grid (N, 1, S, S) in [0, 1], and which run slices were constant (the
    pipeline gives them 0)."""

    prediction: VolumePrediction
    truth: np.ndarray
    inputs: tuple[torch.Tensor, ...]
    flipped: tuple[torch.Tensor, ...] | None
    target: torch.Tensor
    constant: np.ndarray
    name: str


@contextmanager
def capturing(module: nn.Module) -> Iterator[list[tuple[torch.Tensor, ...]]]:
    """Every call's positional inputs to ``module`` while the block runs."""
    calls: list[tuple[torch.Tensor, ...]] = []
    handle = module.register_forward_pre_hook(lambda _, args: calls.append(tuple(a.detach().cpu() for a in args)))
    try:
        yield calls
    finally:
        handle.remove()


def _stack(calls: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Concatenate the calls' inputs (outside inference mode: normal float32 tensors that autograd accepts)."""
    return tuple(torch.cat([call[k] for call in calls]).float().contiguous() for k in range(len(calls[0])))


def scan_features(segmenter: Segmenter, subject: SubjectInputs, part: str, *,
                  flair_only: bool = False, intensity: str | None = None) -> ScanFeatures:
    """Run one scan through the pipeline (PyTorch backend), keeping the inputs of ``part``'s first module."""
    if segmenter.backend != "torch":
        raise CalibrationError("--fine-tune needs the PyTorch backend (--backend torch)")
    first = segmenter.model.get_submodule(tail_names(segmenter.model, part)[0])
    with capturing(first) as calls:
        prediction, truth = predict_scan(segmenter, subject, flair_only, intensity)
    run = np.flatnonzero(prediction.run)
    flipped = None
    if segmenter.config.flip_tta:
        calls, flipped = calls[0::2], _stack(calls[1::2])
    inputs = _stack(calls) if calls else ()
    if inputs and len(inputs[0]) != len(run):
        raise CalibrationError(f"{subject.name}: {len(inputs[0])} slices captured for {len(run)} run")
    presented = prediction.geometry.to_presented(np.asarray(truth) > 0).astype(np.uint8) * 255
    framed = prediction.box.extract(prediction.images[run])
    target = prediction.box.extract(presented[run][..., None]).reshape(len(run), 1, *framed.shape[1:3])
    constant = framed.reshape(len(run), -1).min(axis=1) == framed.reshape(len(run), -1).max(axis=1)
    return ScanFeatures(prediction, truth, inputs, flipped, torch.from_numpy(target / 255.0).float(), constant,
                        subject.name)


def tail_proba(tail: Tail, inputs: Sequence[torch.Tensor], flipped: Sequence[torch.Tensor] | None) -> np.ndarray:
    """(N, S, S) float32 probabilities of the tail on cached inputs (flip TTA averaged as the segmenter does)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(inputs[0]), PREDICT_BATCH):
            proba = torch.sigmoid(tail(*(x[start:start + PREDICT_BATCH] for x in inputs)).float())
            if flipped is not None:
                mirrored = tail(*(x[start:start + PREDICT_BATCH] for x in flipped)).float()
                proba = (proba + torch.sigmoid(mirrored).flip(-1)) / 2
            out.append(proba[:, 0])
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, 0, 0), np.float32)


def repredicted(scan: ScanFeatures, tail: Tail) -> VolumePrediction:
    """The scan's prediction with ``tail``'s probabilities put back on the presented grid (as the pipeline does)."""
    prediction = scan.prediction
    proba = np.zeros_like(prediction.proba)
    if scan.inputs:
        model_proba = tail_proba(tail, scan.inputs, scan.flipped)
        model_proba[scan.constant] = 0.0
        rows, cols = proba.shape[1:]
        for z, p in zip(np.flatnonzero(prediction.run), model_proba):
            proba[z] = prediction.box.put_back(p, rows, cols)
    return dataclasses.replace(prediction, proba=proba)


def _crop(tensor: torch.Tensor, top: int, left: int, crop: int, full: int) -> torch.Tensor:
    """The crop (in model-input pixels) of a batch at its own resolution (a decoder's half-size input, say)."""
    scale = tensor.shape[-1] / full
    row, col, size = round(top * scale), round(left * scale), round(crop * scale)
    return tensor[..., row:row + size, col:col + size]


def _sampler(scans: Sequence[ScanFeatures], generator: torch.Generator) -> Callable[[int], list[tuple[int, int]]]:
    """Draws (scan, slice) pairs, half from slices with labelled tumor, half from the other non-constant ones."""
    pools = [[], []]
    for s, scan in enumerate(scans):
        has_tumor = scan.target.flatten(1).amax(dim=1) > 0
        for k in np.flatnonzero(~scan.constant):
            pools[int(has_tumor[k])].append((s, int(k)))
    pools = [pool for pool in pools if pool]
    if not pools:
        raise CalibrationError("no slice to fine-tune on: every scan's run slices are constant")

    def draw(n: int) -> list[tuple[int, int]]:
        picks = []
        for i in range(n):
            pool = pools[i % len(pools)]
            picks.append(pool[int(torch.randint(len(pool), (1,), generator=generator))])
        return picks
    return draw


def fine_tune(model: nn.Module, scans: Sequence[ScanFeatures], settings: FineTuneSettings) -> nn.Module:
    """A copy of ``model`` whose tail (``settings.part``) was trained on ``scans``; the rest is unchanged."""
    torch.manual_seed(settings.seed)
    tuned = copy.deepcopy(model).float().cpu().eval()
    tuned.requires_grad_(False)
    tail = Tail(tuned, settings.part)
    tail.requires_grad_(True)
    optimizer = torch.optim.Adam(tail.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    draw = _sampler(scans, generator)
    full = scans[0].target.shape[-1]
    crop = min(settings.crop, full)
    step = max(1, full // min(x.shape[-1] for x in scans[0].inputs))  # crops start on every input's grid
    for _ in range(settings.steps):
        picks = draw(settings.batch_size)
        top, left = (int(v) * step for v in torch.randint((full - crop) // step + 1, (2,), generator=generator))
        inputs = [torch.stack([scans[s].inputs[k][i] for s, i in picks]) for k in range(len(scans[0].inputs))]
        target = _crop(torch.stack([scans[s].target[i] for s, i in picks]), top, left, crop, full)
        with autocast(torch.device("cpu"), settings.bf16):
            logits = tail(*(_crop(x, top, left, crop, full) for x in inputs))
        loss = bce_dice_loss(logits.float(), target, use_dice=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return tuned.requires_grad_(False)


def trained_parameters(model: nn.Module, part: str) -> list[str]:
    """The names of ``model``'s parameters that ``part`` trains (for the record and the tests)."""
    names = tail_names(model, part)
    return [name for name, _ in model.named_parameters() if any(name.startswith(f"{n}.") for n in names)]


# ------------------------------------------------------------------------------------------------ calibration on top
def tuned_tables(model: nn.Module, scans: Sequence[ScanFeatures], part: str, grid: Grid) -> list[ScanTable]:
    """:func:`brainseg.calibration.fit.scan_table` of every scan as ``model``'s tail predicts it."""
    tail = Tail(model, part)
    return [scan_table(repredicted(scan, tail), scan.truth, grid, scan.name) for scan in scans]


def fine_tune_and_choose(model: nn.Module, scans: Sequence[ScanFeatures], settings: FineTuneSettings, grid: Grid,
                         start: tuple[float, int]) -> tuple[nn.Module, Choice]:
    """Fine-tune on ``scans``, then choose the threshold and minimum size on the same scans."""
    tuned = fine_tune(model, scans, settings)
    return tuned, choose(tuned_tables(tuned, scans, settings.part, grid), grid, start)


def fine_tune_leave_one_out(model: nn.Module, scans: Sequence[ScanFeatures], settings: FineTuneSettings, grid: Grid,
                            start: tuple[float, int], on_fold: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """For each scan: fine-tune on the others only, choose the threshold / minimum size on them, score it.

    Per scan: 3D Dice uncalibrated, fine-tuned at the model's own values (``fine_tuned_own``) and with the values
    chosen on the others (``calibrated``), the values, and the fold's seconds; the means and ``gain`` (calibrated
    mean minus uncalibrated mean), as :func:`brainseg.calibration.fit.leave_one_out` has them."""
    if len(scans) < 2:
        raise CalibrationError("leave-one-out needs at least two scans")
    home = grid.index(*start)
    rows = []
    for k, held in enumerate(scans):
        began = time.perf_counter()
        tuned, choice = fine_tune_and_choose(model, [s for j, s in enumerate(scans) if j != k], settings, grid, start)
        dice = tuned_tables(tuned, [held], settings.part, grid)[0].dice()
        before = scan_table(held.prediction, held.truth, Grid((start[0],), (start[1],)))
        rows.append({"name": held.name, "uncalibrated": round(float(before.dice()[0, 0]), 4),
                     "fine_tuned_own": round(float(dice[home]), 4),
                     "calibrated": round(float(dice[grid.index(choice.threshold, choice.min_component_px)]), 4),
                     "threshold": choice.threshold, "min_component_px": choice.min_component_px,
                     "seconds": round(time.perf_counter() - began, 1)})
        if on_fold:
            on_fold(rows[-1])
    means = {key: round(float(np.mean([row[key] for row in rows])), 4)
             for key in ("uncalibrated", "fine_tuned_own", "calibrated")}
    return {"per_scan": rows, "uncalibrated_mean": means["uncalibrated"],
            "fine_tuned_own_mean": means["fine_tuned_own"], "calibrated_mean": means["calibrated"],
            "gain": round(means["calibrated"] - means["uncalibrated"], 4),
            "scans_worse": sum(row["calibrated"] < row["uncalibrated"] - 0.005 for row in rows)}


def features_and_tables(segmenter: Segmenter, subjects: Sequence[SubjectInputs], part: str, grid: Grid, *,
                        flair_only: bool = False, intensity: str | None = None,
                        on_scan: Callable[[ScanTable], None] | None = None
                        ) -> tuple[list[ScanFeatures], list[ScanTable]]:
    """Every scan run once (:func:`scan_features`) and its :func:`~brainseg.calibration.fit.scan_table` as the
    untuned model predicts it; refuses as :func:`~brainseg.calibration.fit.scan_tables` does."""
    scans, tables = [], []
    for subject in subjects:
        scans.append(scan_features(segmenter, subject, part, flair_only=flair_only, intensity=intensity))
        tables.append(scan_table(scans[-1].prediction, scans[-1].truth, grid, subject.name))
        if on_scan:
            on_scan(tables[-1])
    check_labelled(tables)
    return scans, tables


def settings_record(model: nn.Module, settings: FineTuneSettings) -> dict[str, Any]:
    """What the calibrated config keeps about the fine-tune."""
    trained = trained_parameters(model, settings.part)
    n_trained = sum(p.numel() for name, p in model.named_parameters() if name in trained)
    return {"part": settings.part, "modules": list(tail_names(model, settings.part)), "parameters_trained": n_trained,
            "steps": settings.steps, "lr": settings.lr, "batch_size": settings.batch_size, "crop_px": settings.crop,
            "seed": settings.seed, "bf16": settings.bf16, "loss": "BCE + soft Dice", "optimizer": "Adam",
            "batch_norm_statistics": "kept (eval mode)"}
