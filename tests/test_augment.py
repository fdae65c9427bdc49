"""The generalization augmentations: shapes, image and mask stay aligned, the same batches under a seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg.inference.preprocess import random_affine_gamma
from brainseg.training.augment import (
    FLAIR,
    random_acquisition,
    random_missing_channels,
    random_quarter_turns,
    random_skull_strip,
)
from brainseg.training.config import TrainConfig
from brainseg.training.data import TrainingData, make_batch


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def disc_batch(n: int = 8, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images (n, 3, size, size): a dim head disc, a bright off-centre lesion, its mask and the brain."""
    yy, xx = np.mgrid[:size, :size]
    head = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2
    brain = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.35 * size) ** 2
    lesion = (yy - 0.4 * size) ** 2 + (xx - 0.6 * size) ** 2 < (0.1 * size) ** 2
    image = np.where(lesion, 220, np.where(head, 90, 0)).astype(np.uint8)
    images = torch.from_numpy(np.stack([image] * 3)).unsqueeze(0).repeat(n, 1, 1, 1)
    images[:, 0] //= 2  # channels differ, so channel replacement is visible
    images[:, 2] //= 3
    masks = torch.from_numpy(lesion).float()[None, None].repeat(n, 1, 1, 1)
    brains = torch.from_numpy(brain)[None].repeat(n, 1, 1)
    return images, masks, brains


def test_skull_strip_blanks_outside_the_brain_and_cuts_the_mask_to_it() -> None:
    images, masks, brains = disc_batch()
    masks[:, :, :4] = 1  # a label outside the brain: must not survive stripping
    out_images, out_masks = random_skull_strip(images, masks, brains, 1.0, generator())
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    outside = ~brains.unsqueeze(1)
    assert (out_images * outside).sum() == 0 and (out_masks * outside).sum() == 0
    inside = brains.unsqueeze(1).expand_as(images)
    assert torch.equal(out_images[inside], images[inside])
    assert torch.equal(random_skull_strip(images, masks, brains, 0.0, generator())[0], images)


def test_skull_strip_touches_about_p_of_the_slices_and_repeats_under_a_seed() -> None:
    images, masks, brains = disc_batch(n=400, size=16)
    first, _ = random_skull_strip(images, masks, brains, 0.3, generator(5))
    second, _ = random_skull_strip(images, masks, brains, 0.3, generator(5))
    assert torch.equal(first, second)
    stripped = (first != images).flatten(1).any(dim=1).float().mean().item()
    assert 0.22 < stripped < 0.38


def test_missing_channels_copy_flair_and_never_change_it() -> None:
    images, _, _ = disc_batch(n=400, size=16)
    inputs = images.float() / 255
    out = random_missing_channels(inputs, 1.0, generator(1))
    assert out.shape == inputs.shape
    assert torch.equal(out[:, FLAIR], inputs[:, FLAIR])
    assert torch.equal(out[:, 0], inputs[:, FLAIR])  # T1 always replaced at p=1
    flair_only = (out[:, 2] == inputs[:, FLAIR]).flatten(1).all(dim=1).float().mean().item()
    assert 0.5 < flair_only < 0.7  # the rest keep their post-contrast T1
    assert torch.equal(out, random_missing_channels(inputs, 1.0, generator(1)))
    assert torch.equal(random_missing_channels(inputs, 0.0, generator(1)), inputs)


def test_acquisition_keeps_shape_range_and_background_and_repeats_under_a_seed() -> None:
    images, _, _ = disc_batch(n=16)
    inputs = images.float() / 255
    out = random_acquisition(inputs, generator(3))
    assert out.shape == inputs.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    background = (inputs == 0).all(dim=1, keepdim=True).expand_as(inputs)
    assert (out[background] == 0).all()
    assert torch.equal(out, random_acquisition(inputs, generator(3)))
    assert not torch.equal(out, random_acquisition(inputs, generator(4)))
    changed = (out - inputs).abs().flatten(1).amax(dim=1) > 0.01
    assert 0 < changed.sum() < 16  # each transform has its own probability: some slices pass untouched


@pytest.mark.parametrize("scale", [0.5, 1.35])
def test_wide_scale_range_moves_image_and_mask_together(scale: float) -> None:
    images, masks, _ = disc_batch(n=4, size=96)
    inputs = images.float() / 255
    out, out_masks = random_affine_gamma(inputs, masks, generator(2), scale_range=(scale, scale))
    lesion_in_image = out[:, FLAIR] > 0.6  # the lesion is the only pixel brighter than 0.6 after the gamma
    lesion_in_mask = out_masks[:, 0] > 0
    iou = (lesion_in_image & lesion_in_mask).sum() / (lesion_in_image | lesion_in_mask).sum()
    assert iou > 0.85
    area_ratio = lesion_in_mask.float().sum() / (masks > 0).sum()
    assert area_ratio == pytest.approx(scale**2, rel=0.15)


def synthetic_data(n: int = 8, size: int = 64) -> TrainingData:
    images, masks, brains = disc_batch(n, size)
    return TrainingData(
        images=images, masks=masks[:, 0] > 0, has_tumor=np.ones(n, bool),
        val_images=np.zeros((1, size, size, 3), np.uint8), val_masks=np.zeros((1, size, size), bool),
        val_patients=["p"], brains=brains,
    )


def robust_config(tmp_path, **overrides) -> TrainConfig:
    settings = dict(augment="affine_gamma", scale_min=0.5, scale_max=1.4, strip_prob=0.5, missing_channel_prob=0.5,
                    acquisition=True, normalize=False)
    return TrainConfig(data_dir=str(tmp_path), out_dir=str(tmp_path / "run"), **{**settings, **overrides})


def test_make_batch_with_every_augmentation_repeats_under_a_seed(tmp_path) -> None:
    cfg, data = robust_config(tmp_path), synthetic_data()
    idx = torch.arange(8)
    inputs, masks, _ = make_batch(cfg, data, idx, generator(9), torch.device("cpu"))
    again, again_masks, _ = make_batch(cfg, data, idx, generator(9), torch.device("cpu"))
    assert inputs.shape == (8, 3, 64, 64) and masks.shape == (8, 1, 64, 64)
    assert torch.equal(inputs, again) and torch.equal(masks, again_masks)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}


def test_make_batch_strips_with_the_flipped_brain(tmp_path) -> None:
    """A brain in the left half only: every stripped slice keeps exactly one half, flipped or not, and both occur."""
    cfg = robust_config(tmp_path, strip_prob=1.0, missing_channel_prob=0.0, acquisition=False, augment="none")
    data = synthetic_data(n=16)
    data.brains[:, :, 32:] = False
    inputs, masks, _ = make_batch(cfg, data, torch.arange(16), generator(0), torch.device("cpu"))
    left_kept = []
    for image, mask in zip(inputs, masks):
        left, right = image[:, :, :32].abs().sum() > 0, image[:, :, 32:].abs().sum() > 0
        assert left != right
        blank = slice(32, None) if left else slice(None, 32)
        assert mask[:, :, blank].sum() == 0
        left_kept.append(bool(left))
    assert 0 < sum(left_kept) < 16


def test_config_refuses_probabilities_and_scales_out_of_range(tmp_path) -> None:
    with pytest.raises(ValueError, match="strip_prob"):
        robust_config(tmp_path, strip_prob=1.5)
    with pytest.raises(ValueError, match="quarter_turn_prob"):
        robust_config(tmp_path, quarter_turn_prob=-0.1)
    with pytest.raises(ValueError, match="distill_weight"):
        robust_config(tmp_path, distill_weight=-1.0)
    with pytest.raises(ValueError, match="scale_min"):
        robust_config(tmp_path, scale_min=1.2, scale_max=1.0)


def test_quarter_turns_move_image_mask_and_targets_together_and_repeat_under_a_seed() -> None:
    images, masks, _ = disc_batch(n=32)
    inputs = images.float() / 255
    soft = masks * 0.8
    out_inputs, out_masks, out_soft = random_quarter_turns([inputs, masks, soft], 0.75, generator(4))
    again = random_quarter_turns([inputs, masks, soft], 0.75, generator(4))
    assert all(torch.equal(a, b) for a, b in zip(again, [out_inputs, out_masks, out_soft]))
    lesion = out_inputs[:, 1:2] > 200 / 255  # the bright lesion, wherever the turn took it
    assert torch.equal(lesion.float(), out_masks) and torch.equal(out_soft, out_masks * 0.8)
    moved = [not torch.equal(out_masks[i], masks[i]) for i in range(32)]
    assert 12 <= sum(moved) <= 31  # about 3/4 turned (the off-centre lesion always moves when turned)
    orientations = {tuple(torch.nonzero(m[0]).float().mean(0).round().tolist()) for m in out_masks}
    assert len(orientations) >= 5  # turns by 90, 180, 270 degrees, some upside down: the lesion lands in new places


def test_quarter_turns_with_p_zero_change_nothing() -> None:
    images, masks, _ = disc_batch()
    out = random_quarter_turns([images, masks], 0.0, generator())
    assert torch.equal(out[0], images) and torch.equal(out[1], masks)


def test_make_batch_clean_teacher_sees_unaugmented_slices_and_its_targets_follow_the_masks(tmp_path) -> None:
    """A teacher that marks the lesion's brightness on the clean slice (where it is exactly the mask) gives soft
    targets equal to the warped, stripped masks; it only ever sees slices without strip, warp or noise."""
    cfg = robust_config(tmp_path, strip_prob=0.5, missing_channel_prob=0.5)
    data = synthetic_data()
    seen: list[torch.Tensor] = []

    def teacher(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(inputs)
        return (inputs[:, 1:2] > 200 / 255).float()  # cfg.normalize is off: inputs are intensities / 255

    inputs, masks, soft = make_batch(cfg, data, torch.arange(8), generator(3), torch.device("cpu"), teacher)
    assert soft is not None and soft.shape == masks.shape == (8, 1, 64, 64)
    assert torch.equal(soft, masks) and masks.sum() > 0
    clean = seen[0]
    assert set((clean * 255).round().unique().tolist()) <= {0.0, 30.0, 45.0, 73.0, 90.0, 110.0, 220.0}
    again, again_masks, again_soft = make_batch(cfg, data, torch.arange(8), generator(3), torch.device("cpu"),
                                                teacher)
    assert torch.equal(inputs, again) and torch.equal(soft, again_soft)
