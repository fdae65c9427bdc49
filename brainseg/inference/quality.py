"""A plain-words flag when a scan is unlike the model's training data (whole-head FLAIR + T1 + T1c slices of the
TCGA lower-grade glioma set), and when the model itself is unsure, saying what to expect.

Every rule reads a fact the scan states itself, not a threshold tuned on test scans: a skull-stripped scan has a
constant background (the stripping sets it), magnitude MRI has no negative values (negative ones mean the file
was rescaled), a scan covering few slices holds only part of the brain, and the model's own probability band
between 0.3 and 0.7 says how much of the volume hangs on the threshold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# A skull-stripped scan sets everything outside the brain to one value: most of its grid. A whole-head scan's
# background is noise (few voxels exactly at the minimum) unless the scanner zero-fills its corners.
STRIPPED_BACKGROUND_SHARE = 0.5
MIN_COVERAGE_MM = 60.0  # the head's superior-inferior extent below which a scan holds only part of the brain
UNSURE_SHARE = 0.5  # (volume at 0.3 - volume at 0.7) / volume at the threshold above which the border is unsure
EXPECT_OUTSIDE = ("expect a less accurate mask: on five skull-stripped scans from other hospitals the default "
                  "model's 3D Dice ranged 0.61-0.92 (the U-Net trained on whole-head slices alone: 0.16-0.90); "
                  "check it slice by slice")


@dataclass(frozen=True)
class ScanFacts:
    """What a scan says about itself, read before the model runs."""

    background_share: float  # share of voxels exactly at the volume's minimum
    negative: bool  # any voxel below zero
    sequences: tuple[str, ...]  # the sequences given ("flair", "t1", "t1ce")
    coverage_mm: float  # superior-inferior extent of the slices holding head, mm

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Flag:
    """One way the scan differs from the training data (or the model is unsure), in plain words."""

    code: str
    message: str


def scan_facts(data: np.ndarray, sequences: tuple[str, ...], head_slices: int, slice_mm: float) -> ScanFacts:
    """The facts of a raw FLAIR voxel array, the sequences given and how many ``slice_mm`` slices hold head."""
    data = np.asarray(data)
    low = data.min()
    return ScanFacts(background_share=round(float(np.count_nonzero(data == low)) / data.size, 4),
                     negative=bool(low < 0), sequences=tuple(sequences),
                     coverage_mm=round(float(head_slices * slice_mm), 1))


def assess(facts: ScanFacts, volume_ml: float, low_ml: float, high_ml: float) -> tuple[Flag, ...]:
    """The flags for a scan with ``facts`` whose tumor is ``volume_ml`` at the threshold, ``high_ml`` at 0.3 and
    ``low_ml`` at 0.7 (empty: it looks like the training data and the model is sure of its border)."""
    flags = []
    if facts.background_share >= STRIPPED_BACKGROUND_SHARE:
        flags.append(Flag("skull_stripped", f"Looks skull-stripped ({facts.background_share:.0%} of the voxels are "
                          "one constant background value); the model was trained on whole-head slices: "
                          + EXPECT_OUTSIDE + "."))
    missing = [name for name, key in (("T1", "t1"), ("post-contrast T1", "t1ce")) if key not in facts.sequences]
    if missing:
        flags.append(Flag("missing_sequences", f"No {' and no '.join(missing)}: the model was trained on FLAIR + T1 "
                          "+ post-contrast T1 and gets the FLAIR in their place; " + EXPECT_OUTSIDE + "."))
    if facts.negative:
        flags.append(Flag("rescaled_intensities", "Negative intensities: this file was rescaled (e.g. mean/std "
                          "normalized), unlike raw scanner values; the app maps its contrast by percentiles, but "
                          "unusual contrast can move the border."))
    if facts.coverage_mm < MIN_COVERAGE_MM:
        flags.append(Flag("partial_coverage", f"The slices with head span only {facts.coverage_mm:.0f} mm "
                          "(superior-inferior): part of the brain, and maybe of the tumor, is outside the scan."))
    spread = high_ml - low_ml
    if volume_ml > 0 and spread / volume_ml > UNSURE_SHARE:
        flags.append(Flag("unsure_border", f"The model is unsure of the border: the volume moves from "
                          f"{low_ml:.1f} to {high_ml:.1f} mL between thresholds 0.7 and 0.3 "
                          f"({spread / volume_ml:.0%} of it); see the amber band."))
    return tuple(flags)


def flags_markdown(flags: tuple[Flag, ...]) -> str:
    """The flags as Markdown bullets, or one line saying the scan looks like the training data."""
    if not flags:
        return "Scan check: looks like the training data (whole head, FLAIR + T1 + post-contrast T1)."
    return "**Scan check:**\n" + "\n".join(f"- {flag.message}" for flag in flags)
