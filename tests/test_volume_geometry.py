"""Orientation and framing (brainseg.inference.geometry) and intensity rules of whole scans (no model runs)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from volume_synth import affine_of, lgg_patient, ras_from_presented, rotation

from brainseg.inference.geometry import HEAD_FRAME_FILL, CropBox, Geometry, crop_box, head_bounding_box
from brainseg.inference.intensity import HIGH_LEVEL, head_mask, to_uint8_channel


def all_axis_affines(spacing=(0.9, 1.1, 2.5)):
    """Every permutation and flip of the three axes (48 affines), with anisotropic spacing."""
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            linear = np.zeros((3, 3))
            for axis, (world, sign) in enumerate(zip(perm, signs)):
                linear[world, axis] = sign * spacing[axis]
            yield affine_of(linear)


def test_round_trip_is_exact_for_every_axis_order_and_obliques():
    rng = np.random.default_rng(0)
    data = rng.random((7, 5, 3)).astype(np.float32)
    affines = list(all_axis_affines()) + [affine_of(rotation(20, -35) @ np.diag([1.0, 1.2, 3.0])),
                                          affine_of(rotation(-40, 10) @ np.diag([-0.8, 0.8, 2.0]))]
    for affine in affines:
        geometry = Geometry(data.shape, affine)
        presented = geometry.to_presented(data)
        assert sorted(presented.shape) == sorted(data.shape)
        assert np.array_equal(geometry.from_presented(presented), data)
        assert np.array_equal(geometry.to_presented(geometry.from_presented(presented)), presented)


def test_ras_volume_is_presented_with_anterior_up_and_patient_right_on_the_left():
    # data[i, j, k]: i to the patient's right, j to anterior, k to superior
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    geometry = Geometry(data.shape, np.diag([1.0, 1.0, 1.0, 1.0]))
    presented = geometry.to_presented(data)
    assert presented.shape == (3, 5, 4)
    for z, r, c in itertools.product(range(3), range(5), range(4)):
        assert presented[z, r, c] == data[4 - 1 - c, 5 - 1 - r, z]
    # DICOM's own layout (LPS: columns to the patient's left, rows to posterior) is presented unchanged
    lps = Geometry(data.shape, np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert np.array_equal(lps.to_presented(data), np.moveaxis(data, 2, 0).transpose(0, 2, 1))
    ras = Geometry(data.shape, np.diag([1.0, 1.0, 1.0, 1.0]))
    assert np.array_equal(ras.to_presented(ras_from_presented(presented)), presented)


def test_spacing_slice_axis_and_slice_index_follow_the_axes():
    # input axis 0 is inferior->superior at 3 mm, axis 1 posterior->anterior at 0.5, axis 2 left->right at 0.8 mm
    linear = np.array([[0, 0, 0.8], [0, 0.5, 0], [3.0, 0, 0]])
    geometry = Geometry((10, 20, 30), affine_of(linear))
    assert geometry.presented_spacing == pytest.approx((3.0, 0.5, 0.8))
    assert geometry.slice_axis == 0
    assert geometry.input_slice_index(0) == 0
    flipped = Geometry((10, 20, 30), affine_of(linear * np.array([-1, 1, 1])))  # axis 0 now superior->inferior
    assert flipped.input_slice_index(0) == 9


def test_crop_box_is_square_in_mm_and_identity_for_a_whole_square_slice():
    assert crop_box((256, 256), (1.0, 1.0), 256) == CropBox(0, 0, 256, 256, 256)
    box = crop_box((200, 100), (0.5, 1.0), 256, bbox=(20, 10, 119, 79))  # 100 rows x 0.5 mm, 70 cols x 1 mm
    assert box.height * 0.5 == pytest.approx(box.width * 1.0, abs=1.0)
    assert box.width == round(70 / HEAD_FRAME_FILL)
    images = np.random.default_rng(1).integers(0, 255, (2, 256, 256, 3), dtype=np.uint8)
    identity = CropBox(0, 0, 256, 256, 256)
    assert np.array_equal(identity.extract(images), images)
    proba = np.random.default_rng(2).random((256, 256)).astype(np.float32)
    assert np.array_equal(identity.put_back(proba, 256, 256), proba)


def test_crop_box_pads_outside_the_slice_and_puts_back_only_inside():
    images = np.full((1, 10, 10, 3), 200, np.uint8)
    box = CropBox(-5, -5, 20, 20, 20)
    crop = box.extract(images)[0]
    assert crop[:5].max() == 0 and crop[5:15, 5:15].min() == 200
    back = box.put_back(np.ones((20, 20), np.float32), 10, 10)
    assert back.shape == (10, 10) and back.min() == 1.0


def test_intensity_rule_ignores_scale_and_offset_and_maps_the_fill_to_zero():
    rng = np.random.default_rng(3)
    brain = rng.normal(0, 1, (6, 40, 40)).astype(np.float32)
    volume = np.full((6, 64, 64), -3.5, np.float32)  # z-scored inside the brain, constant fill outside
    volume[:, 12:52, 12:52] = np.maximum(brain, -3.4)
    head = head_mask(volume)
    assert head[:, 12:52, 12:52].mean() > 0.5 and not head[:, :10].any()
    mapped = to_uint8_channel(volume, head)
    assert mapped[:, :10].max() == 0
    assert abs(np.percentile(mapped[head], 99) - HIGH_LEVEL) <= 1
    rescaled = to_uint8_channel(volume * 250 + 1000, head_mask(volume * 250 + 1000))
    assert np.abs(rescaled.astype(int) - mapped).max() <= 1


def test_head_mask_frames_the_lgg_heads_as_the_constant_says(lgg_test_dir):
    fills = []
    for folder in sorted(p.name for p in lgg_test_dir.iterdir() if p.is_dir()):
        images, _ = lgg_patient(lgg_test_dir, folder)
        top, left, bottom, right = head_bounding_box(head_mask(images[..., 1].astype(np.float32)))
        fills.append(max(bottom - top + 1, right - left + 1) / images.shape[1])
    assert len(fills) == 11
    assert abs(np.median(fills) - HEAD_FRAME_FILL) < 0.01
    assert 0.8 < min(fills) and max(fills) < 0.97
