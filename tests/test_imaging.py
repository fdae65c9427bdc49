"""Decoding uploads and pixel conversions: formats, bit depths, grayscale, masks, and clear errors for bad files."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from brainseg.io.dataset import read_image, read_mask, scan_dataset
from brainseg.io.pixels import as_rgb_uint8, binarize_mask, to_uint8
from brainseg.io.slices import MAX_SIDE, ImageError, decode_image, encode_png, inspect_mask, save_png


def decode_mask(data: bytes, shape: tuple[int, int] | None = None) -> np.ndarray:
    return inspect_mask(data, shape)[0]


def tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


rgb_images = arrays(np.uint8, st.tuples(st.integers(8, 40), st.integers(8, 40), st.just(3)))
gray_images = arrays(np.uint8, st.tuples(st.integers(8, 40), st.integers(8, 40)))


@settings(max_examples=25, deadline=None)
@given(rgb_images)
def test_rgb_round_trips_through_tiff_and_png(rgb: np.ndarray) -> None:
    assert np.array_equal(decode_image(tiff_bytes(rgb)), rgb)
    assert np.array_equal(decode_image(pil_bytes(Image.fromarray(rgb), "PNG")), rgb)


@settings(max_examples=25, deadline=None)
@given(rgb_images)
def test_16_bit_is_the_inverse_of_the_8_to_16_bit_expansion(rgb: np.ndarray) -> None:
    assert np.array_equal(decode_image(tiff_bytes(rgb.astype(np.uint16) * 257)), rgb)


@settings(max_examples=25, deadline=None)
@given(gray_images)
def test_grayscale_is_replicated_to_three_channels(gray: np.ndarray) -> None:
    expected = np.repeat(gray[:, :, None], 3, axis=2)
    assert np.array_equal(decode_image(tiff_bytes(gray)), expected)
    assert np.array_equal(decode_image(pil_bytes(Image.fromarray(gray), "PNG")), expected)
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    assert np.array_equal(decode_image(pil_bytes(sixteen, "PNG")), expected)


def test_12_bit_data_in_16_bit_files_keeps_its_detail() -> None:
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))  # 12-bit values
    decoded = decode_image(tiff_bytes(ramp))[:, :, 0]
    assert decoded.min() == 0 and decoded.max() == 255
    assert len(np.unique(decoded)) == 256, "no levels merged"
    assert np.all(np.diff(decoded[0].astype(int)) >= 0)


def test_8_bit_values_in_wider_containers_and_float_ranges() -> None:
    values = np.arange(64, dtype=np.uint16).reshape(8, 8) * 3
    assert np.array_equal(decode_image(tiff_bytes(values))[:, :, 0], values.astype(np.uint8))
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    assert np.array_equal(decode_image(tiff_bytes(unit))[:, :, 0], (unit * 255).round().astype(np.uint8))
    wide = unit * 3000 - 500
    stretched = decode_image(tiff_bytes(wide))[:, :, 0]
    assert stretched.min() == 0 and stretched.max() == 255


def test_planar_tiff_alpha_palette_and_jpeg() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    planar = tiff_bytes(np.moveaxis(rgb, 2, 0), photometric="rgb", planarconfig="separate")
    assert np.array_equal(decode_image(planar), rgb)
    rgba = Image.fromarray(rgb).convert("RGBA")
    assert np.array_equal(decode_image(pil_bytes(rgba, "PNG")), rgb)
    palette = Image.fromarray(rgb).convert("P")
    assert np.array_equal(decode_image(pil_bytes(palette, "PNG")), np.asarray(palette.convert("RGB")))
    jpeg = decode_image(pil_bytes(Image.fromarray(rgb), "JPEG", quality=95))
    assert jpeg.shape == rgb.shape and jpeg.dtype == np.uint8
    lzw = pil_bytes(Image.fromarray(rgb), "TIFF", compression="tiff_lzw")
    assert np.array_equal(decode_image(lzw), rgb)


def test_file_paths_are_accepted(tmp_path: Path) -> None:
    rgb = np.full((16, 16, 3), 7, np.uint8)
    path = tmp_path / "slice.tif"
    tifffile.imwrite(path, rgb)
    assert np.array_equal(decode_image(path), rgb)
    assert np.array_equal(decode_image(str(path)), rgb)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"certainly not an image", "not a readable image"),
        (pil_bytes(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG")[:60], "truncated or corrupt"),
        (tiff_bytes(np.zeros((5, 32, 32), np.uint8)), "several images"),
        (pil_bytes(Image.new("L", (4, 50)), "PNG"), "at least 8 px"),
        (pil_bytes(Image.new("L", (MAX_SIDE + 1, 8)), "PNG"), f"largest supported side is {MAX_SIDE}"),
        (tiff_bytes(np.zeros((8, MAX_SIDE + 1), np.uint8)), f"largest supported side is {MAX_SIDE}"),
        (tiff_bytes(np.full((16, 16), np.nan, np.float32)), "NaN"),
        (pil_bytes(Image.fromarray(np.full((16, 16), 70000, np.int32)), "TIFF"), "8- or 16-bit"),
    ],
)
def test_bad_files_raise_clear_errors(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as info:
        decode_image(data)
    assert not str(info.value).startswith("upload: upload"), "the file is named once"


def test_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        decode_image(tmp_path / "nope.png")


def test_masks_binary_8_bit_16_bit_rgb_and_jpeg() -> None:
    truth = np.zeros((32, 24), bool)
    truth[8:20, 5:15] = True
    ones = truth.astype(np.uint8)
    assert np.array_equal(decode_mask(pil_bytes(Image.fromarray(ones), "PNG")), truth)
    assert np.array_equal(decode_mask(tiff_bytes(ones * 255)), truth)
    assert np.array_equal(decode_mask(tiff_bytes(ones.astype(np.uint16) * 65535)), truth)
    assert np.array_equal(decode_mask(tiff_bytes(np.dstack([ones * 255] * 3))), truth)
    noisy = decode_mask(pil_bytes(Image.fromarray(ones * 255), "JPEG", quality=90))
    assert (noisy != truth).mean() < 0.02
    assert np.array_equal(decode_mask(tiff_bytes(truth.astype(np.float32))), truth)


def test_one_binarisation_for_uploads_and_the_dataset(lgg_test_dir: Path) -> None:
    values = np.array([[0, 1], [0, 1]], np.uint8)
    assert np.array_equal(binarize_mask(values), values.astype(bool)), "0/1 masks are binary"
    assert np.array_equal(binarize_mask(np.array([[127, 128]], np.uint8)), [[False, True]])
    assert np.array_equal(binarize_mask(np.array([[32767, 32768]], np.uint16)), [[False, True]])
    with pytest.raises(ValueError, match="NaN"):
        binarize_mask(np.full((2, 2), np.nan, np.float32))
    with pytest.raises(ImageError, match="NaN"):
        decode_mask(tiff_bytes(np.full((16, 16), np.nan, np.float32)))
    records = (r for p in scan_dataset(lgg_test_dir) for r in p.slices if r.mask_path)
    record = next(r for r in records if read_mask(r.mask_path).any())
    assert np.array_equal(read_mask(record.mask_path), decode_mask(record.mask_path.read_bytes()))


def test_mask_of_another_size_is_refused() -> None:
    with pytest.raises(ImageError, match="ground-truth mask is 24x32 px but the slice is 256x256 px"):
        decode_mask(tiff_bytes(np.zeros((32, 24), np.uint8)), (256, 256))


@settings(max_examples=20, deadline=None)
@given(st.one_of(rgb_images, gray_images))
def test_encode_png_is_lossless(image: np.ndarray) -> None:
    with Image.open(io.BytesIO(encode_png(image))) as decoded:
        assert np.array_equal(np.asarray(decoded), image)


def test_save_png_is_content_addressed(tmp_path: Path) -> None:
    image = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    first = save_png(image, tmp_path, "mask")
    assert save_png(image, tmp_path, "mask") == first
    assert Path(first).name == "mask.png"
    assert save_png(255 - image, tmp_path, "mask") != first


def test_to_uint8_and_as_rgb_uint8_agree() -> None:
    rng = np.random.default_rng(0)
    twelve = rng.integers(0, 4096, (16, 16, 3), dtype=np.uint16)
    assert np.array_equal(as_rgb_uint8(twelve), to_uint8(twelve))
    assert np.array_equal(as_rgb_uint8(twelve[:, :, 0]), np.dstack([to_uint8(twelve[:, :, 0])] * 3))
    assert np.array_equal(to_uint8(np.array([[False, True]])), [[0, 255]])
    with pytest.raises(ValueError, match="slice.tif has shape"):
        as_rgb_uint8(np.zeros((2, 8, 8, 3), np.uint8), "slice.tif")


def test_a_12_bit_slice_predicts_like_its_8_bit_version(lgg_test_dir: Path) -> None:
    from brainseg import Segmenter

    record = max((r for p in scan_dataset(lgg_test_dir) for r in p.slices if r.mask_path),
                 key=lambda r: int(read_mask(r.mask_path).sum()))
    rgb = read_image(record.image_path)
    twelve = ((rgb.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)  # as 12-bit MRI in 16-bit pixels
    assert twelve.max() <= 4095 and twelve.max() > 3000
    as_eight = as_rgb_uint8(twelve)
    assert as_eight.max() >= 250, "12-bit data must not turn almost black"
    assert np.abs(as_eight - rgb * (255 / rgb.max())).max() <= 1, "scaled by the slice's maximum"
    segmenter = Segmenter.from_pretrained(device="cpu")
    proba8, proba12 = segmenter.predict_proba(rgb), segmenter.predict_proba(twelve)
    # measured: mean |difference| 1.5e-4 and 5 of 6305 mask pixels (the old `>> 8` gave 1.0e-3 and ~36)
    assert np.abs(proba8 - proba12).mean() < 5e-4
    mask8, mask12 = segmenter.to_mask(proba8), segmenter.predict_mask(twelve)
    assert mask8.sum() > 1000 and (mask8 != mask12).sum() <= 0.002 * mask8.sum()
