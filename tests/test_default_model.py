"""Regression guard: the shipped model, evaluated on all 369 held-out slices, matches its recorded numbers."""
import platform

import numpy as np
import pytest
import torch
from conftest import assert_matches_recorded, evaluate_bundled

from brainseg.inference.segmenter import describe_device, pick_device
from brainseg.io.hub import BUNDLED_MODEL_DIR, bundled_models

pytestmark = pytest.mark.slow  # all 369 held-out slices through the bundled model, in a subprocess


def test_bundled_model_reproduces_its_recorded_metrics(lgg_test_dir, tmp_path) -> None:
    result = evaluate_bundled(lgg_test_dir, tmp_path / "eval.json")
    assert (result["n_slices"], result["n_tumor_slices"], result["n_patients"]) == (369, 106, 11)
    assert_matches_recorded(result, BUNDLED_MODEL_DIR)
    assert result["hardware"] == f"{describe_device(pick_device())}, bf16=False"


@pytest.mark.parametrize("name", ["unet"])
def test_bundled_comparison_model_reproduces_its_recorded_metrics(name, lgg_test_dir, tmp_path) -> None:
    """The U-Net the default is compared with (trained on the LGG slices as they are): its held-out numbers,
    as recorded, within 0.005."""
    assert_matches_recorded(evaluate_bundled(lgg_test_dir, tmp_path / "eval.json", name), bundled_models()[name])


def test_the_default_beats_the_unet_on_skull_stripped_flair_and_half_frame_and_holds_turned_slices(lgg_test_dir
                                                                                                  ) -> None:
    """What the one network was made for, on the held-out patients' tumor slices in the forms outside scans and
    odd uploads come in (docs/generalization.md has the numbers on all 369 slices). Turned slices: as good as
    `unet` here (measured -0.006 volume Dice on these slices; +0.024 on all 369)."""
    from brainseg import Segmenter
    from brainseg.evaluation.scoring import evaluate_forms
    from brainseg.io.dataset import load_slices, scan_dataset

    records = [r for patient in scan_dataset(lgg_test_dir) for r in patient.slices]
    images, masks = load_slices(records)
    tumor = np.flatnonzero(masks.any(axis=(1, 2)))[::3]
    patients = [records[i].patient for i in tumor]
    margins = {"stripped_flair_only": 0.05, "half_frame": 0.05, "rotated_90": -0.015}
    unet, default = (evaluate_forms(Segmenter.from_pretrained(name, backend="torch"), images[tumor], masks[tumor],
                                    patients, tuple(margins)) for name in ("unet", None))
    for form, margin in margins.items():
        assert default[form].volume_dice > unet[form].volume_dice + margin, form


def test_cpu_is_described_by_architecture_and_threads() -> None:
    assert describe_device(torch.device("cpu")) == f"{platform.machine()} CPU x{torch.get_num_threads()} threads"


def test_bundled_models_are_small_and_pickle_free() -> None:
    for folder in bundled_models().values():
        weights = folder / "model.safetensors"
        assert weights.stat().st_size < 15 * 1024 * 1024, folder
        assert not list(folder.glob("*.pt")) and not list(folder.glob("*.bin")) and not list(folder.glob("*.pkl"))
