"""Matplotlib figures for evaluation reports."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def example_grid(
    images: np.ndarray, truths: np.ndarray, preds: np.ndarray, titles: Sequence[str], path: str | Path, columns: int = 4
) -> Path:
    """FLAIR channel of each slice with ground truth outlined in green and prediction in red."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, truth, pred, title in zip(axes.flat, images, truths, preds, titles):
        ax.imshow(image[:, :, 1], cmap="gray")
        if truth.any():
            ax.contour(truth, levels=[0.5], colors="lime", linewidths=1)
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="red", linewidths=1)
        ax.set_title(title, fontsize=8)
    fig.suptitle("ground truth (green) vs prediction (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def patient_dice_plot(per_patient: dict[str, float], path: str | Path) -> Path:
    """Horizontal bar chart of per-patient volume Dice with the mean marked."""
    names = sorted(per_patient, key=per_patient.get)
    values = [per_patient[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.5))
    ax.barh(names, values, color="tab:blue")
    ax.axvline(float(np.mean(values)), color="tab:red", linestyle="--", label=f"mean {np.mean(values):.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("volume Dice (all slices of the patient pooled)")
    ax.legend(loc="lower right")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
