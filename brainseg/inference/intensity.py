"""Intensity standardisation: how a scan's channel becomes the 8-bit slices the model learned on.

Every rule is a monotone piecewise-linear map per channel, from landmarks of the channel measured inside
the head (:func:`head_mask`) onto target landmarks, clipped to 0..255:

- ``percentile80`` (the default since issue 33): the volume's 0.1th percentile -> 0, the head's **80th** -> 160,
  clipped at 255. A lesion cannot own the 80th percentile unless it fills a fifth of the head, so normal tissue
  keeps its level; what lies above 1.6 x the 80th percentile (the brightest tumor) saturates. On the validation
  patients as volumes every rule here is within 0.006 of the others in every form; on BRATS 2013 this one gains
  +0.027 / +0.022 3D Dice over ``percentile`` (docs/volumes.md).
- ``percentile`` (the rule until issue 33): the same with the head's 99th percentile -> 160. On a
  skull-stripped high-grade glioma the top percentiles are the tumor, so everything else darkens.
- ``nyul`` (Nyul & Udupa): background (0.1th percentile of the volume) -> 0 and the head's
  10th..70th percentiles (:data:`NYUL_PERCENTILES`; a tumor cannot own them unless it fills 30 % of the
  head) -> the training slices' median landmarks; above the 70th the mean slope of 10th..70th continues.
- ``whitestripe`` (after WhiteStripe, one tissue mode): background -> 0 and the largest mode of the head's
  smoothed histogram (normal-appearing brain tissue; a lesion is a smaller, brighter bump) -> its target.
- ``zscore``: the head's mean and standard deviation -> the training slices' (a tumor moves both).

The targets are :class:`Landmarks` learned once from the LGG training patients' slices
(``brainseg intensity fit --data-dir DATA``) and bundled as ``intensity_landmarks.json``
together with the command that made them. Landmarks are measured on an in-plane stride-2 sample.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from brainseg.config import CALIBRATION_KEY

PERCENTILE_RULES = {"percentile80": 80.0, "percentile": 99.0}  # rule -> head percentile mapped to HIGH_LEVEL
RULES = (*PERCENTILE_RULES, "nyul", "whitestripe", "zscore")
DEFAULT_RULE = "percentile80"
RULE_BEFORE_RECORDS = "percentile"  # the rule of calibrated folders written before calibrate recorded one
CHANNELS = ("t1", "flair", "t1ce")  # the model's inputs: pre-contrast T1, FLAIR, post-contrast T1
LANDMARKS_FILE = "intensity_landmarks.json"
LOW_PERCENTILE = 0.1  # of the whole volume -> 0 (background)
HIGH_LEVEL = 160.0  # the LGG FLAIR slices' median 99th percentile inside the head
NYUL_PERCENTILES = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0)
MODE_BINS = 128  # histogram of the head between its 2nd and 98th percentiles
MODE_SMOOTHING = 2.0  # Gaussian sigma in bins
SAMPLE_STEP = 2  # landmarks from every SAMPLE_STEP-th row and column
LUT_LEVELS = 1 << 14  # steps of the tabulated map (uint16 indices)


def head_mask(presented: np.ndarray) -> np.ndarray:
    """Voxels of head (or brain, when skull-stripped): above Otsu's threshold of the whole volume."""
    low = float(presented.min())
    high = float(np.percentile(presented, 99.5))
    if high <= low:
        return np.zeros(presented.shape, bool)
    scaled = np.empty(presented.shape, np.uint8)
    for z in range(presented.shape[0]):  # slice by slice: no second full-size float copy
        scaled[z] = (np.clip(presented[z], low, high) - low) * (255.0 / (high - low))
    otsu, _ = cv2.threshold(scaled.reshape(-1, scaled.shape[-1]), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return scaled > otsu


def to_uint8_channel(presented: np.ndarray, head: np.ndarray,
                     high_percentile: float = PERCENTILE_RULES["percentile"]) -> np.ndarray:
    """The percentile rules: the volume's 0.1th percentile -> 0, the head's ``high_percentile`` -> 160, clipped
    to 0..255 (``percentile``: the 99th; ``percentile80``: the 80th)."""
    low = float(np.percentile(presented, LOW_PERCENTILE))
    inside = presented[head] if head.any() else presented
    high = float(np.percentile(inside, high_percentile))
    if high <= low:
        return np.zeros(presented.shape, np.uint8)
    scale = HIGH_LEVEL / (high - low)
    out = np.empty(presented.shape, np.uint8)
    for z in range(presented.shape[0]):  # slice by slice: no second full-size float copy
        out[z] = np.clip((presented[z] - low) * scale, 0, 255).round().astype(np.uint8)
    return out


@dataclass(frozen=True)
class ChannelStats:
    """One channel's landmarks: ``low`` over the volume, the rest over the head."""

    low: float
    percentiles: tuple[float, ...]  # at NYUL_PERCENTILES
    mode: float
    mean: float
    std: float


def channel_stats(presented: np.ndarray, head: np.ndarray, step: int = SAMPLE_STEP) -> ChannelStats:
    """The landmarks of ``presented`` (Z, R, C) inside ``head``, from a stride-``step`` in-plane sample."""
    sample = presented[:, ::step, ::step]
    inside = sample[head[:, ::step, ::step]]
    if inside.size < 2:
        inside = sample.ravel()
    low = float(np.percentile(sample, LOW_PERCENTILE))
    inside = inside.astype(np.float64)
    return ChannelStats(low, tuple(float(v) for v in np.percentile(inside, NYUL_PERCENTILES)), tissue_mode(inside),
                        float(inside.mean()), float(inside.std()))


def tissue_mode(values: np.ndarray) -> float:
    """The largest mode of the smoothed histogram of ``values`` between their 2nd and 98th percentiles."""
    lo, hi = np.percentile(values, (2.0, 98.0))
    if hi <= lo:
        return float(lo)
    counts, edges = np.histogram(values, bins=MODE_BINS, range=(lo, hi))
    radius = int(3 * MODE_SMOOTHING)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / MODE_SMOOTHING) ** 2)
    smooth = np.convolve(counts, kernel / kernel.sum(), mode="same")
    peak = int(np.argmax(smooth))
    return float((edges[peak] + edges[peak + 1]) / 2)


@dataclass(frozen=True)
class Landmarks:
    """Target landmarks per channel (:data:`CHANNELS`), learned from the LGG training slices."""

    channels: dict[str, ChannelStats]
    percentiles: tuple[float, ...] = NYUL_PERCENTILES
    patients: int = 0
    command: str = ""

    def to_dict(self) -> dict:
        return {"percentiles": list(self.percentiles), "patients": self.patients, "command": self.command,
                "channels": {name: asdict(stats) for name, stats in self.channels.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> Landmarks:
        channels = {name: ChannelStats(s["low"], tuple(s["percentiles"]), s["mode"], s["mean"], s["std"])
                    for name, s in data["channels"].items()}
        return cls(channels, tuple(data["percentiles"]), int(data.get("patients", 0)), data.get("command", ""))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path | None = None) -> Landmarks:
        """``path``, or the bundled ``brainseg/inference/intensity_landmarks.json`` when None."""
        text = (Path(path).read_text() if path is not None
                else resources.files("brainseg.inference").joinpath(LANDMARKS_FILE).read_text())
        landmarks = cls.from_dict(json.loads(text))
        if landmarks.percentiles != NYUL_PERCENTILES:
            raise ValueError(f"{path or LANDMARKS_FILE}: landmarks at percentiles {landmarks.percentiles}, this "
                             f"version uses {NYUL_PERCENTILES}: refit with brainseg intensity fit")
        return landmarks


def knots(rule: str, stats: ChannelStats, target: ChannelStats) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) knots of ``rule``'s map from ``stats`` onto ``target`` (no knots: a constant channel -> 0)."""
    if rule == "nyul":
        x = np.array([stats.low, *stats.percentiles])
        y = np.array([0.0, *target.percentiles])
    elif rule == "whitestripe":
        x, y = np.array([stats.low, stats.mode]), np.array([0.0, target.mode])
    elif rule == "zscore":
        if stats.std <= 0:
            return np.zeros(0), np.zeros(0)
        x = stats.mean + (np.array([0.0, 255.0]) - target.mean) * stats.std / max(target.std, 1e-6)
        y = np.array([0.0, 255.0])
    else:
        raise ValueError(f"unknown intensity rule {rule!r}: use one of {', '.join(RULES)}")
    keep = [0]
    for i in range(1, len(x)):  # strictly increasing knots only (tied landmarks: the first one stays)
        if x[i] > x[keep[-1]] and y[i] > y[keep[-1]]:
            keep.append(i)
    return x[keep], y[keep]


def apply_knots(presented: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """uint8 of the piecewise-linear map through (x, y), continued past the last knot with the mean slope of the
    knots, clipped to 0..255 (below the first knot: its value, normally 0). Fewer than 2 usable knots: zeros.

    The map is tabulated on :data:`LUT_LEVELS` steps between the first knot and 255 (4x faster than
    ``np.interp`` per voxel; off by at most 1 level).
    """
    if len(x) < 2 or x[-1] <= x[0]:
        return np.zeros(presented.shape, np.uint8)
    slope = (y[-1] - y[0]) / (x[-1] - x[0])
    if y[-1] < 255:
        x, y = np.append(x, x[-1] + (255.0 - y[-1]) / slope), np.append(y, 255.0)
    table = np.clip(np.interp(np.linspace(x[0], x[-1], LUT_LEVELS), x, y), 0, 255).round().astype(np.uint8)
    scale, offset = np.float32((LUT_LEVELS - 1) / (x[-1] - x[0])), np.float32(x[0])
    out = np.empty(presented.shape, np.uint8)
    step = np.empty(presented.shape[1:], np.float32)
    for z in range(presented.shape[0]):  # slice by slice: no second full-size float copy
        np.subtract(presented[z], offset, out=step)
        np.multiply(step, scale, out=step)
        np.clip(step, 0, LUT_LEVELS - 1, out=step)
        np.add(step, 0.5, out=step)
        out[z] = table[step.astype(np.uint16)]
    return out


def model_rule(config: Any) -> str:
    """The rule a model's scans run under when none is named: the one its threshold was calibrated under
    (``config.extra["calibration"]["intensity"]``; a folder calibrated before that was recorded:
    :data:`RULE_BEFORE_RECORDS`), otherwise :data:`DEFAULT_RULE`."""
    record = (getattr(config, "extra", None) or {}).get(CALIBRATION_KEY)
    if not record:
        return DEFAULT_RULE
    return record.get("intensity", RULE_BEFORE_RECORDS)


@dataclass(frozen=True)
class Standardizer:
    """One named rule with its targets: ``to_uint8(presented, head, channel)`` for each of :data:`CHANNELS`."""

    rule: str = DEFAULT_RULE
    landmarks: Landmarks | None = None

    @classmethod
    def named(cls, rule: str = DEFAULT_RULE, landmarks: Landmarks | None = None) -> Standardizer:
        """The rule ``rule`` with ``landmarks`` (default: the bundled ones, for every rule but the percentile ones)."""
        if rule not in RULES:
            raise ValueError(f"unknown intensity rule {rule!r}: use one of {', '.join(RULES)}")
        if rule not in PERCENTILE_RULES and landmarks is None:
            landmarks = Landmarks.load()
        return cls(rule, landmarks)

    def to_uint8(self, presented: np.ndarray, head: np.ndarray, channel: str = "flair") -> np.ndarray:
        if self.rule in PERCENTILE_RULES:
            return to_uint8_channel(presented, head, PERCENTILE_RULES[self.rule])
        if self.landmarks is None:
            raise ValueError(f"intensity rule {self.rule!r} needs landmarks: use Standardizer.named")
        target = self.landmarks.channels[channel]
        return apply_knots(presented, *knots(self.rule, channel_stats(presented, head), target))


# ------------------------------------------------------------------------------------------------ fitting
def fit_landmarks(data_dir: str | Path, val_fraction: float, seed: int, command: str = "") -> Landmarks:
    """Median landmarks per channel over the training patients of ``make_split(data_dir, "patient", ...)``.

    Each patient's slices are one presented volume per channel; the head is :func:`head_mask` of its FLAIR,
    as the volume pipeline finds it.
    """
    from brainseg.io.dataset import load_slices, make_split

    split = make_split(data_dir, "patient", val_fraction, seed)
    by_patient: dict[str, list] = {}
    for record in split.train:
        by_patient.setdefault(record.patient, []).append(record)
    measured: dict[str, list[ChannelStats]] = {name: [] for name in CHANNELS}
    for records in by_patient.values():
        images, _ = load_slices(records)
        head = head_mask(images[..., 1].astype(np.float32))
        for index, name in enumerate(CHANNELS):
            measured[name].append(channel_stats(images[..., index].astype(np.float32), head))
    channels = {name: _median_stats(stats) for name, stats in measured.items()}
    return Landmarks(channels, NYUL_PERCENTILES, len(by_patient), command)


def _median_stats(stats: list[ChannelStats]) -> ChannelStats:
    def median(values) -> float:
        return round(float(np.median(values)), 3)

    percentiles = tuple(median([s.percentiles[i] for s in stats]) for i in range(len(NYUL_PERCENTILES)))
    return ChannelStats(median([s.low for s in stats]), percentiles, median([s.mode for s in stats]),
                        median([s.mean for s in stats]), median([s.std for s in stats]))
