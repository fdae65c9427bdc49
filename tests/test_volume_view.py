"""The Volume tab's views on synthetic volumes: grayscale planes with fixed-colour overlays linked through one voxel,
the marching-cubes 3D view, the result card (laterality, extent, MONAI HD95 / surface Dice), the PDF / JSON report
and the scan check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader

from brainseg.inference import quality
from brainseg.inference.geometry import CropBox, Geometry
from brainseg.inference.volume import VolumePrediction
from brainseg.views import mesh, report
from brainseg.views.overlay import TRUTH_COLOUR
from brainseg.views.planes import CROSSHAIR_COLOUR, PLANES, PlaneGeometry, explained_by_overlays, render_plane
from brainseg.views.volume_export import area_plot
from brainseg.views.volume_view import VolumeSession

SHAPE = (30, 64, 56)  # presented (Z, R, C)
SPACING = (2.5, 0.9, 1.1)


def ellipsoid(centre, radii, shape=SHAPE) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1


def synthetic_prediction() -> VolumePrediction:
    """A head (ellipsoid) with a lesion on the patient's left (high columns); probability 0.9 inside the lesion,
    0.5 in a shell around it, 0 elsewhere; FLAIR, T1 and T1c channels that differ (as real sequences do)."""
    head = ellipsoid((15, 32, 28), (14, 28, 24))
    lesion = ellipsoid((15, 28, 38), (4, 6, 6))
    shell = ellipsoid((15, 28, 38), (5, 8, 8)) & ~lesion
    rng = np.random.default_rng(0)
    flair = (head * 90 + lesion * 120 + rng.integers(0, 20, SHAPE) * head).astype(np.uint8)
    images = np.stack([flair // 2, flair, np.clip(flair.astype(int) + 60 * head, 0, 255).astype(np.uint8)], -1)
    proba = (lesion * 0.9 + shell * 0.5).astype(np.float32)
    affine = np.diag([-SPACING[2], -SPACING[1], SPACING[0], 1.0])  # LPS-like input axes: columns R->L after presenting
    geometry = Geometry(SHAPE[::-1], affine)
    presented = geometry.to_presented(np.zeros(SHAPE[::-1], np.uint8))
    assert presented.shape == SHAPE and np.allclose(geometry.presented_spacing, SPACING)
    return VolumePrediction(name="synth.nii.gz", images=images, proba=proba, geometry=geometry, threshold=0.6,
                            min_component_px=0, box=CropBox(0, 0, SHAPE[1], SHAPE[2], 32), channels=("t1", "flair",
                            "t1ce"), model="synthetic", revision=None, seconds=1.0, slices_run=SHAPE[0],
                            voxel_volume_ml=float(np.prod(SPACING)) / 1000)


@pytest.fixture(scope="module")
def session() -> VolumeSession:
    prediction = synthetic_prediction()
    truth_presented = ellipsoid((15, 29, 38), (4, 6, 6))
    truth = prediction.geometry.from_presented(truth_presented)
    flair = np.where(prediction.geometry.from_presented(prediction.images[..., 1]) > 0, 300.0, 0.0)
    return VolumeSession.create(prediction, 2.0, truth, flair.astype(np.float32))


def test_planes_are_grayscale_outside_the_fixed_colour_overlays(session: VolumeSession) -> None:
    point = session.start_point(0.6)
    planes = session.planes(point, 0.6)
    prediction = session.mask(0.6)
    for plane, rgb in planes.items():
        assert explained_by_overlays(rgb).all(), plane
        gray = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        assert 0.6 < gray.mean() < 1, f"{plane}: mostly gray, with the overlays drawn"
        red = rgb[..., 0].astype(int) - rgb[..., 1] > 40  # the prediction's fill or outline (amber differs by ~20)
        assert red.any() == bool(session.geometry.section(prediction, plane, point).any()), plane
    # the old look (the three sequences as RGB) is false colour: not explained by any overlay
    composite = session.prediction.images[point[0]]
    assert not explained_by_overlays(composite).all()
    assert (planes["axial"] == TRUTH_COLOUR).all(axis=-1).any(), "the ground truth outline"


@pytest.mark.parametrize("plane", PLANES)
def test_a_click_maps_to_the_voxel_the_other_planes_cross_at(plane: str) -> None:
    geometry = PlaneGeometry.of(SHAPE, SPACING)
    base = np.zeros(SHAPE, np.uint8)
    point = (7, 40, 13)
    base[point] = 255  # one bright voxel
    for other in PLANES:
        x, y = geometry.to_pixel(other, point)
        rgb = render_plane(base, geometry, other, point)
        gray = np.where((rgb == CROSSHAIR_COLOUR).all(axis=-1), 0, rgb[..., 0])
        brightest = np.unravel_index(np.argmax(gray), gray.shape)
        assert gray.max() > 100 and abs(brightest[0] - y) <= 2 and abs(brightest[1] - x) <= 2, \
            f"{other} shows the voxel at its cross-hair"
        assert (rgb[y, :] == CROSSHAIR_COLOUR).all(axis=-1).sum() > rgb.shape[1] // 2, "horizontal line through it"
    x, y = geometry.to_pixel(plane, point)
    across = ({0, 1, 2} - set(geometry.axes(plane))).pop()
    start = list(point)
    start[across] = point[across]  # the axis across the clicked plane keeps its index
    assert geometry.to_voxel(plane, x, y, tuple(start)) == point
    height, width = geometry.size(plane)
    rows, cols = geometry.axes(plane)
    assert height / width == pytest.approx(SHAPE[rows] * SPACING[rows] / (SHAPE[cols] * SPACING[cols]), rel=0.05), \
        "square millimetres"


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), SPACING])
def test_the_3d_view_encloses_the_masks_volume(tmp_path: Path, spacing: tuple[float, float, float]) -> None:
    tumor = ellipsoid((15, 30, 30), (9, 14, 12)) | ellipsoid((8, 34, 20), (3, 5, 5))
    head = ellipsoid((15, 32, 28), (14, 30, 26))
    truth = ellipsoid((16, 30, 31), (9, 14, 12))
    path = mesh.save_glb(mesh.build_scene(tumor, spacing, truth, head), tmp_path / "view.glb")
    meshes = mesh.load_meshes(path)
    assert set(meshes) == {"prediction", "truth", "head"}
    voxel_ml = float(np.prod(spacing)) / 1000
    for name, mask in (("prediction", tumor), ("truth", truth)):
        assert meshes[name].is_watertight
        assert mesh.mesh_volume_ml(meshes[name]) == pytest.approx(mask.sum() * voxel_ml, rel=0.02), name
    empty = mesh.build_scene(np.zeros(SHAPE, bool), spacing, None, head)
    assert set(empty.geometry) == {"head"}


def test_laterality_and_extent_follow_the_presented_axes() -> None:
    mask = np.zeros(SHAPE, bool)
    mask[10:14, 20:30, 40:50] = True  # columns above the midline: the patient's left
    assert report.laterality(mask, 28) == "left"
    assert report.laterality(mask[:, :, ::-1], 27) == "right"
    both = mask | mask[:, :, ::-1]
    assert report.laterality(both, 27.5) == "both" and report.laterality(np.zeros(SHAPE, bool), 28) == "none"
    assert report.bbox_mm(mask, SPACING) == (10.0, 9.0, 11.0)
    assert report.bbox_mm(np.zeros(SHAPE, bool), SPACING) is None


@pytest.mark.slow  # MONAI's first import takes ~10 s on 2 busy cores
def test_agreement_gives_dice_and_monai_hd95_and_surface_dice() -> None:
    truth = ellipsoid((15, 30, 30), (8, 12, 12))
    shifted = np.roll(truth, 2, axis=0)  # two slices up: 5 mm
    result = report.agreement(shifted, truth, SPACING, 0.001)
    assert result.hd95_mm == pytest.approx(5.0, abs=0.6)
    assert 0 < result.surface_dice < 1 and 0.5 < result.dice < 1
    same = report.agreement(truth, truth, SPACING, None)
    assert (same.dice, same.hd95_mm, same.surface_dice) == (1.0, 0.0, 1.0)
    assert report.agreement(np.zeros(SHAPE, bool), truth, SPACING, None).hd95_mm is None


@pytest.mark.slow
def test_the_card_and_the_report_carry_the_same_numbers(session: VolumeSession, tmp_path: Path) -> None:
    card = session.card(0.6)
    mask = session.mask(0.6)
    voxel_ml = session.prediction.voxel_volume_ml
    assert card.tumor_voxels == int(mask.sum()) and card.volume_ml == pytest.approx(mask.sum() * voxel_ml, abs=1e-4)
    low, high = card.volume_range_ml
    assert low == pytest.approx(session.mask(0.7).sum() * voxel_ml, abs=1e-4) and low <= card.volume_ml < high
    assert card.laterality == "left" and card.slices_with_tumor == int(mask.any(axis=(1, 2)).sum())
    assert card.agreement is not None and 0 < card.agreement.dice < 1
    assert session.card(0.6) is card, "cached per threshold"
    assert session.with_truth(None).card(0.6).agreement is None, "a new ground truth: a new card"
    assert session.with_seconds(9.0).card(0.6).seconds == 9.0 and card.seconds == 2.0
    pdf, json_path = session.save_report(card, {"threshold": 0.6}, 0.6, tmp_path / "synth")
    pages = PdfReader(str(pdf)).pages
    assert len(pages) == len(report.SECTIONS)
    texts = [page.extract_text() for page in pages]
    for section, text in zip(report.SECTIONS, texts):
        assert section in text
    assert f"{card.volume_ml:.2f} mL" in texts[0] and f"{card.agreement.dice:.3f}" in texts[0]
    assert "not for clinical use" in " ".join(texts[0].split()), "the disclaimer (wrapped over lines)"
    saved = json.loads(json_path.read_text())
    assert saved["card"]["volume_ml"] == card.volume_ml and saved["numbers"] == {"threshold": 0.6}
    assert area_plot(session.prediction, 0.6).axes, "the plot page"


def test_scan_check_flags_in_plain_words() -> None:
    rng = np.random.default_rng(1)
    whole_head = rng.rayleigh(5, (40, 40, 30)).astype(np.float32) + 1
    whole_head[10:30, 10:30, :] += 400
    stripped = np.zeros((40, 40, 30), np.float32) - 0.7
    stripped[12:28, 12:28, :] = rng.normal(1, 0.3, (16, 16, 30))
    three = ("t1", "flair", "t1ce")
    assert quality.assess(quality.scan_facts(whole_head, three, 30, 3.0), 10, 9, 11) == ()
    facts = quality.scan_facts(stripped, ("flair",), 30, 3.0)
    codes = [flag.code for flag in quality.assess(facts, 10, 2, 9)]
    assert codes == ["skull_stripped", "missing_sequences", "rescaled_intensities", "unsure_border"]
    assert "No T1 and no post-contrast T1" in quality.flags_markdown(quality.assess(facts, 10, 9, 11))
    assert [f.code for f in quality.assess(quality.scan_facts(whole_head, three, 10, 3.0), 0, 0, 0)] == \
        ["partial_coverage"]
    assert quality.flags_markdown(()).startswith("Scan check: looks like the training data")
