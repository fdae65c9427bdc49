"""End to end through the HTTP API: app.py on 127.0.0.1, driven with gradio_client on real test slices."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from demo_server import largest_tumor_slice, read_png, require_test_data
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from brainseg import Segmenter
from brainseg.evaluation.metrics import dice_score, iou_score
from brainseg.io.dataset import read_image, read_mask

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
MASK, STATS, OVERLAY, HEATMAP, TRUTH, AGREEMENT, PAIR, SUMMARY = range(8)
LIVE_MASK, LIVE_STATS = 0, 1


@pytest.fixture(scope="module")
def tumor_slice() -> tuple[Path, Path]:
    return largest_tumor_slice()


def segment(client: Client, image: Path | str, threshold: float = 0.5, normalize: bool = True,
            truth: Path | str | None = None) -> tuple:
    return client.predict(handle_file(str(image)), threshold, normalize,
                          handle_file(str(truth)) if truth else None, api_name="/segment")


def as_mask(path: str) -> np.ndarray:
    pixels = read_png(path)
    assert pixels.ndim == 2, f"mask PNG should be single-channel, got shape {pixels.shape}"
    assert set(np.unique(pixels)) <= {0, 255}
    return pixels == 255


def test_api_lists_segment_and_threshold(client: Client) -> None:
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/segment" in endpoints and "/threshold" in endpoints
    parameters = endpoints["/segment"]["parameters"]
    assert len(parameters) == 5 and parameters[-1]["parameter_has_default"], "four inputs, then an optional model"
    model = parameters[-1]
    assert (model["parameter_name"], model["parameter_default"]) == ("model", "unet-generalist"), \
        "default: the started model"
    bundled_names = ["unet-generalist", "unet", "segformer-b0"]
    assert model["type"]["enum"] == bundled_names, "the bundled models, by name"


def test_optional_model_input_runs_the_transformer(client: Client, tumor_slice: tuple[Path, Path]) -> None:
    image_path = tumor_slice[0]
    transformer = Segmenter.from_pretrained("segformer-b0")
    tuned = transformer.config.threshold
    result = client.predict(handle_file(str(image_path)), tuned, True, None, "segformer-b0", api_name="/segment")
    image = read_image(image_path)
    expected = transformer.predict_mask(image)  # at its own tuned threshold
    assert expected.any() and np.array_equal(as_mask(result[MASK]), expected)
    # the redraw of this session's slice post-processes with the Transformer that made the map
    live = client.predict(0.3, api_name="/threshold")
    assert np.array_equal(as_mask(live[LIVE_MASK]), transformer.to_mask(transformer.predict_proba(image), 0.3))
    default = segment(Client(client.src, verbose=False), image_path, threshold=tuned)  # four inputs: the default
    assert not np.array_equal(as_mask(default[MASK]), expected)


def test_tumor_slice_dice_above_0_7(client: Client, tumor_slice: tuple[Path, Path]) -> None:
    image_path, mask_path = tumor_slice
    result = segment(client, image_path)
    pred = as_mask(result[MASK])
    truth = read_mask(mask_path)
    assert pred.shape == truth.shape == read_image(image_path).shape[:2]
    assert result[STATS]["area_px"] == int(pred.sum())
    assert result[STATS]["dice"] is None  # no ground truth given
    assert dice_score(pred, truth) > 0.7, f"Dice {dice_score(pred, truth):.3f} on {image_path.name}"


def test_threshold_changes_area_monotonically(client: Client, tumor_slice: tuple[Path, Path]) -> None:
    segment(client, tumor_slice[0], threshold=0.5)
    masks, areas = [], []
    for threshold in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
        result = client.predict(threshold, api_name="/threshold")
        assert result[LIVE_STATS]["threshold"] == pytest.approx(threshold)
        masks.append(as_mask(result[LIVE_MASK]))
        areas.append(result[LIVE_STATS]["area_px"])
    assert areas == sorted(areas, reverse=True), areas
    assert areas[0] > areas[-1], f"the area should shrink as the threshold rises: {areas}"
    for looser, stricter in zip(masks, masks[1:]):
        assert not (stricter & ~looser).any(), "a stricter threshold may only remove pixels"


def test_threshold_redraw_matches_a_fresh_segment(client: Client, tumor_slice: tuple[Path, Path]) -> None:
    image_path, mask_path = tumor_slice
    first = segment(client, image_path, threshold=0.5, truth=mask_path)
    live = client.predict(0.3, api_name="/threshold")
    assert live[LIVE_STATS]["probability_mean"] == first[STATS]["probability_mean"], "same stored map"
    fresh = segment(Client(client.src, verbose=False), image_path, threshold=0.3, truth=mask_path)
    assert np.array_equal(as_mask(live[LIVE_MASK]), as_mask(fresh[MASK]))
    assert live[LIVE_STATS]["dice"] == pytest.approx(fresh[STATS]["dice"])


def test_normalization_toggle_changes_probability_map(client: Client, tumor_slice: tuple[Path, Path]) -> None:
    on = segment(client, tumor_slice[0], normalize=True)
    off = segment(client, tumor_slice[0], normalize=False)
    assert on[STATS]["normalize"] is True and off[STATS]["normalize"] is False
    heat_on, heat_off = read_png(on[HEATMAP]).astype(int), read_png(off[HEATMAP]).astype(int)
    assert heat_on.shape == heat_off.shape
    assert np.abs(heat_on - heat_off).max() > 0, "the heat map should change with the preprocessing"
    assert on[STATS]["probability_mean"] != off[STATS]["probability_mean"]


def test_ground_truth_metrics_match_brainseg_metrics(client: Client, tumor_slice: tuple[Path, Path]) -> None:
    image_path, mask_path = tumor_slice
    result = segment(client, image_path, truth=mask_path)
    pred, truth = as_mask(result[MASK]), read_mask(mask_path)
    stats = result[STATS]
    assert stats["dice"] == pytest.approx(dice_score(pred, truth), abs=1e-12)
    assert stats["iou"] == pytest.approx(iou_score(pred, truth), abs=1e-12)
    assert stats["truth_area_px"] == int(truth.sum())
    for key in (TRUTH, AGREEMENT):
        assert read_png(result[key]).shape == (*truth.shape, 3)
    assert len(result[PAIR]) == 2
    assert f"Dice {stats['dice']:.3f}" in result[SUMMARY]


def test_empty_slice_with_ground_truth(client: Client) -> None:
    from brainseg.io.dataset import scan_dataset

    records = [r for p in scan_dataset(require_test_data()) for r in p.slices]
    empty = next(r for r in records if r.mask_path and not read_mask(r.mask_path).any())
    stats = segment(client, empty.image_path, truth=empty.mask_path)[STATS]
    assert stats["truth_area_px"] == 0
    assert stats["dice"] == (1.0 if stats["area_px"] == 0 else 0.0)


def test_any_size_grayscale_png_and_16_bit_tiff(client: Client, tumor_slice: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    rgb = read_image(tumor_slice[0])
    flair = Image.fromarray(rgb[:, :, 1]).resize((320, 384), Image.BILINEAR)  # W x H
    png = tmp_path / "flair_only.png"
    flair.save(png)
    result = segment(client, png)
    assert as_mask(result[MASK]).shape == (384, 320)
    assert (result[STATS]["width"], result[STATS]["height"]) == (320, 384)

    tiff16 = tmp_path / "slice16.tif"
    tifffile.imwrite(tiff16, rgb.astype(np.uint16) * 257)
    as16 = as_mask(segment(client, tiff16)[MASK])
    as8 = as_mask(segment(client, tumor_slice[0])[MASK])
    assert np.array_equal(as16, as8), "a 16-bit copy of a slice must give the same mask"


def test_bad_uploads_raise_clear_errors_and_the_app_recovers(client: Client, tumor_slice: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(AppError, match="broken.png"):
        segment(client, broken)

    small_mask = tmp_path / "wrong_size_mask.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(small_mask)
    with pytest.raises(AppError, match="ground-truth mask is 100x100 px"):
        segment(client, tumor_slice[0], truth=small_mask)

    with pytest.raises(AppError, match="Upload a slice first"):
        client.predict(None, 0.5, True, None, api_name="/segment")

    result = segment(client, tumor_slice[0], truth=tumor_slice[1])
    assert result[STATS]["dice"] is not None
