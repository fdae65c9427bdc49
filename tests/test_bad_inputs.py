"""Issue 5, bad inputs: every bad upload, mask or data folder gets a specific message.

One table drives the package (``brainseg.io.slices``), the app over HTTP (``gr.Error`` or a note, and the
server keeps serving) and the CLIs (non-zero exit, one line, no traceback). Every bad file is built in
``tmp_path`` from scratch or from a synthetic slice (``synthetic_slice``, so they run without the data; the app's
uploads use a real test slice); nothing from the dataset is committed.
"""
from __future__ import annotations

import importlib
import io
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from brainseg.app.gallery import DatasetIndex
from brainseg.inference.preprocess import preprocess
from brainseg.io.dataset import read_image, read_mask, scan_dataset
from brainseg.io.slices import ImageError, decode_image, inspect_mask, slice_notes

REPO = Path(__file__).resolve().parents[1]
Builder = Callable[[Path, Path], Path]


@pytest.fixture(scope="module")
def real_slice(lgg_test_dir: Path) -> Path:
    """A real tumor slice (a TIFF from the held-out test patients)."""
    records = [r for p in scan_dataset(lgg_test_dir) for r in p.slices if r.mask_path]
    return max(records, key=lambda r: int(read_mask(r.mask_path).sum())).image_path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def encoded(src: Path, fmt: str) -> bytes:
    """The real slice re-encoded in memory as ``fmt`` (only ever written to tmp_path)."""
    return image_bytes(Image.fromarray(read_image(src)), fmt)


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming ``width`` x ``height``, with one tiny IDAT: a cheap bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tiff_file(path: Path, array: np.ndarray, **kwargs) -> Path:
    tifffile.imwrite(path, array, **kwargs)
    return path


def multi_page_tiff(folder: Path, src: Path) -> Path:
    path, rgb = folder / "pages.tif", read_image(src)
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb)
        tif.write(rgb[:128, :128])
    return path


# (id, builder(tmp_path, real_slice) -> file, expected message)
BAD_IMAGES: list[tuple[str, Builder, str]] = [
    ("empty", lambda d, s: write(d / "empty.tif", b""), "is empty"),
    ("truncated-tiff", lambda d, s: write(d / "cut.tif", s.read_bytes()[: s.stat().st_size // 2]),
     "truncated or corrupt"),
    ("truncated-png", lambda d, s: write(d / "cut.png", (lambda b: b[: len(b) // 2])(encoded(s, "PNG"))),
     "truncated or corrupt"),
    ("truncated-jpeg", lambda d, s: write(d / "cut.jpg", (lambda b: b[: len(b) // 2])(encoded(s, "JPEG"))),
     "truncated or corrupt"),
    ("corrupt-png", lambda d, s: write(d / "bad.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
     "not a readable image"),
    ("text-as-tif", lambda d, s: write(d / "notes.tif", b"patient notes, not pixels\n" * 20),
     "not a readable image"),
    ("pdf-as-tif", lambda d, s: write(d / "report.tif", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"),
     "not a readable image"),
    ("1x1", lambda d, s: tiff_file(d / "one.tif", np.zeros((1, 1), np.uint8)), "1x1 px: a slice needs at least"),
    ("4x4", lambda d, s: write(d / "four.png", png_header(4, 4)), "4x4 px: a slice needs at least"),
    ("20000x20000", lambda d, s: write(d / "bomb.png", png_header(20000, 20000)), "20000x20000 px|too large"),
    ("multi-page-tiff", multi_page_tiff, "several images"),
    ("nan-float-tiff", lambda d, s: tiff_file(d / "nan.tif", np.full((16, 16), np.nan, np.float32)), "NaN"),
]

# (id, builder, check of the decoded H x W x 3 uint8 slice against the real one)
ACCEPTED: list[tuple[str, Builder, Callable[[np.ndarray, np.ndarray], bool]]] = [
    ("2-channel-tiff", lambda d, s: tiff_file(d / "ga.tif", np.dstack([read_image(s)[:, :, 1]] * 2),
                                              photometric="minisblack", extrasamples=[2]),
     lambda out, rgb: np.array_equal(out, np.repeat(rgb[:, :, 1:2], 3, axis=2))),
    ("rgba-png", lambda d, s: write(d / "rgba.png", image_bytes(Image.fromarray(read_image(s)).convert("RGBA"))),
     lambda out, rgb: np.array_equal(out, rgb)),
    ("16-bit-tiff", lambda d, s: tiff_file(d / "s16.tif", read_image(s).astype(np.uint16) * 257),
     lambda out, rgb: np.array_equal(out, rgb)),
    ("float-tiff", lambda d, s: tiff_file(d / "f32.tif", read_image(s).astype(np.float32) / 255,
                                                       photometric="rgb"),
     lambda out, rgb: np.array_equal(out, rgb)),
    ("unicode name with spaces", lambda d, s: Path(shutil.copy(s, d / "coupe IRM é 脑 #1.tif")),
     lambda out, rgb: np.array_equal(out, rgb)),
]


@pytest.mark.parametrize(("builder", "message"), [c[1:] for c in BAD_IMAGES], ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_files_get_a_specific_message(builder: Builder, message: str, synthetic_slice: Path,
                                                tmp_path: Path) -> None:
    path = builder(tmp_path, synthetic_slice)
    with pytest.raises(ImageError, match=message) as info:
        decode_image(path)
    assert path.name in str(info.value), "the message names the file"


@pytest.mark.parametrize(("builder", "check"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_unusual_but_valid_files_decode(builder: Builder, check: Callable, synthetic_slice: Path,
                                        tmp_path: Path) -> None:
    out = decode_image(builder(tmp_path, synthetic_slice))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert check(out, read_image(synthetic_slice))


def test_decompression_bomb_is_refused_without_allocating(tmp_path: Path) -> None:
    bomb = write(tmp_path / "bomb.png", png_header(20000, 20000))  # 1.2 GB of RGB if it were decoded
    process = psutil.Process()
    before = process.memory_info().rss
    for _ in range(3):
        with pytest.raises(ImageError):
            decode_image(bomb)
    assert process.memory_info().rss - before < 50e6


@pytest.mark.parametrize("value", [0, 255], ids=["all-black", "all-white"])
def test_constant_slice_gives_an_empty_mask_and_a_note(value: int) -> None:
    from brainseg import Segmenter

    image = np.full((256, 256, 3), value, np.uint8)
    notes = slice_notes(image)
    assert len(notes) == 1 and ("black" if value == 0 else "white") in notes[0]
    proba = Segmenter.from_pretrained(None).predict_proba(image)
    assert np.isfinite(proba).all() and not Segmenter.from_pretrained(None).to_mask(proba, 0.5).any()
    tensor = preprocess(image, 32, normalize=True)
    assert torch_isfinite(tensor), "a zero std must not give NaN"


def test_batch_prediction_treats_a_constant_slice_like_single_prediction(lgg_test_dir: Path) -> None:
    from brainseg import Segmenter

    segmenter = Segmenter.from_pretrained(None)
    record = next(r for p in scan_dataset(lgg_test_dir) for r in p.slices)
    images = np.stack([read_image(record.image_path), np.zeros((256, 256, 3), np.uint8)])
    batch = segmenter.predict_proba_batch(images)
    assert not batch[1].any()
    for image, proba in zip(images, batch):
        assert np.allclose(proba, segmenter.predict_proba(image), atol=1e-5)


def torch_isfinite(tensor) -> bool:
    import torch

    return bool(torch.isfinite(tensor).all())


def test_a_mask_in_the_image_slot_is_flagged(lgg_test_dir: Path) -> None:
    records = [r for p in scan_dataset(lgg_test_dir) for r in p.slices if r.mask_path]
    mask_path = max(records, key=lambda r: int(read_mask(r.mask_path).sum())).mask_path
    assert any("looks like a segmentation mask" in n for n in slice_notes(decode_image(mask_path)))
    assert slice_notes(read_image(records[0].image_path)) == []


def test_masks_of_another_size_or_not_binary(synthetic_slice: Path, tmp_path: Path) -> None:
    shape = read_image(synthetic_slice).shape[:2]
    small = tiff_file(tmp_path / "small_mask.tif", np.zeros((100, 100), np.uint8))
    with pytest.raises(ImageError, match="ground-truth mask is 100x100 px but the slice is 256x256 px"):
        inspect_mask(small, shape)
    grey = np.zeros(shape, np.uint8)
    grey[50:100, 50:100], grey[60:70, 60:70] = 200, 90
    mask, notes = inspect_mask(tiff_file(tmp_path / "grey_mask.tif", grey), shape)
    assert mask.sum() == 50 * 50 - 100 and any("not binary (3 distinct values)" in n for n in notes)
    assert inspect_mask(tiff_file(tmp_path / "ok_mask.tif", (grey > 0).astype(np.uint8) * 255), shape)[1] == []


# --- data folders -------------------------------------------------------------------------------

def folder_without_masks(tmp_path: Path, real_slice: Path) -> Path:
    patient = tmp_path / "data" / "TCGA_AA_0000_20000101"
    patient.mkdir(parents=True)
    for n in (1, 2):
        shutil.copy(real_slice, patient / f"TCGA_AA_0000_20000101_{n}.tif")
    return tmp_path / "data"


def test_data_folders_missing_empty_or_without_masks(tmp_path: Path, synthetic_slice: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DatasetIndex(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no TCGA_"):
        DatasetIndex(tmp_path / "empty")
    index = DatasetIndex(folder_without_masks(tmp_path, synthetic_slice))  # browsable: no ground truth shown
    assert index.slice(index.names[0], 1).mask_path is None


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def cli_extra_args(cli: str, tmp_path: Path) -> list[str]:
    """What each CLI needs besides --data-dir (tune gets a copy of the bundled model: it writes there)."""
    if cli == "brainseg.cli.train":
        return ["--out-dir", str(tmp_path / "out")]
    if cli == "brainseg.cli.tune":
        from brainseg.io.hub import bundled_models

        return ["--model", shutil.copytree(bundled_models()["unet"], tmp_path / "model", dirs_exist_ok=True).as_posix()]
    return []


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("cli", ["brainseg.cli.train", "brainseg.cli.evaluate", "brainseg.cli.tune"])
def test_clis_report_bad_data_folders_in_one_line(cli: str, tmp_path: Path, real_slice: Path, capsys) -> None:
    """A missing folder through the real command (a process: exit status, no traceback); an empty one and one
    without masks through the same ``main`` in this process (the same code path, without two more interpreter
    start-ups per CLI)."""
    (tmp_path / "empty").mkdir()
    extra = cli_extra_args(cli, tmp_path)
    result = run_cli("-m", cli, "--data-dir", str(tmp_path / "missing"), *extra)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "does not exist" in lines[0], lines
    main = importlib.import_module(cli).main
    cases = {"empty": (tmp_path / "empty", "no TCGA_"),
             "no masks": (folder_without_masks(tmp_path, real_slice), "no ground-truth masks")}
    for name, (folder, message) in cases.items():
        capsys.readouterr()
        assert main(["--data-dir", str(folder), *extra]) == 2, name
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (name, lines)


@pytest.mark.slow
@pytest.mark.e2e
def test_app_refuses_a_bad_data_dir_in_one_line(tmp_path: Path) -> None:
    result = run_cli("app.py", "--data-dir", str(tmp_path / "missing"), "--port", "1")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("app.py: error: data directory")


# --- property: decode -> preprocess ----------------------------------------------------------------

@st.composite
def any_tiff(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32]))
    channels = draw(st.sampled_from([(), (1,), (3,), (4,)]))
    shape = (draw(st.integers(8, 48)), draw(st.integers(8, 48)), *channels)
    elements = st.floats(-1e4, 1e4, width=32) if dtype == np.float32 else None
    return draw(arrays(dtype, shape, elements=elements))


@settings(max_examples=60, deadline=None)
@given(any_tiff())
def test_decode_then_preprocess_is_always_a_finite_model_input(array: np.ndarray) -> None:
    buffer = io.BytesIO()
    colour = array.ndim == 3 and array.shape[2] in (3, 4)
    tifffile.imwrite(buffer, array, photometric="rgb" if colour else "minisblack")
    image = decode_image(buffer.getvalue())
    assert image.shape == (*array.shape[:2], 3) and image.dtype == np.uint8
    for normalize in (True, False):
        tensor = preprocess(image, 32, normalize)
        assert tuple(tensor.shape) == (3, 32, 32) and torch_isfinite(tensor)


# --- the app over HTTP: a gr.Error or a note, and the server keeps serving ------------------------

@pytest.fixture(scope="module")
def client(request: pytest.FixtureRequest):
    from demo_server import demo_server
    from gradio_client import Client

    return Client(demo_server(request).url, verbose=False)


def segment(client, image: Path, truth: Path | None = None) -> tuple:
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), 0.5, True, handle_file(str(truth)) if truth else None,
                          api_name="/segment")


@pytest.mark.slow
@pytest.mark.e2e
def test_app_answers_every_bad_upload_with_its_message_and_keeps_serving(client, real_slice: Path,
                                                                         tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    for name, builder, message in BAD_IMAGES:
        folder = tmp_path / name
        folder.mkdir()
        with pytest.raises(AppError, match=message):
            segment(client, builder(folder, real_slice))
    with pytest.raises(AppError, match="ground-truth mask is 100x100 px"):
        segment(client, real_slice, tiff_file(tmp_path / "small_mask.tif", np.zeros((100, 100), np.uint8)))
    stats = segment(client, real_slice)[1]
    assert stats["notes"] == [] and stats["area_px"] > 0, "still serving, and correctly"


@pytest.mark.slow
@pytest.mark.e2e
def test_app_notes_constant_slices_masks_as_images_and_grey_masks(client, real_slice: Path, lgg_test_dir: Path,
                                                                  tmp_path: Path) -> None:
    black = tiff_file(tmp_path / "black slice é.tif", np.zeros((256, 256, 3), np.uint8))
    result = segment(client, black)
    assert result[1]["area_px"] == 0 and "all black" in result[1]["notes"][0] and "all black" in result[7]
    records = [r for p in scan_dataset(lgg_test_dir) for r in p.slices if r.mask_path]
    mask_path = max(records, key=lambda r: int(read_mask(r.mask_path).sum())).mask_path
    assert "looks like a segmentation mask" in segment(client, mask_path)[1]["notes"][0]
    grey = read_mask(mask_path).astype(np.uint8) * 200
    grey[0, 0] = 90
    stats = segment(client, real_slice, tiff_file(tmp_path / "grey_mask.tif", grey))[1]
    assert any("not binary" in n for n in stats["notes"]) and stats["dice"] is not None
