"""Decoding uploaded slices and masks (TIFF, PNG, JPEG; 8- or 16-bit; RGB or grayscale)."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from brainseg.fileio import atomic_write_bytes
from brainseg.io.pixels import as_rgb_uint8, binarize_mask

MIN_SIDE = 8
MAX_SIDE = 4096
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# MINISBLACK and RGB; other photometrics (palette, MINISWHITE, CMYK, YCbCr...) are left to Pillow.
TIFF_PLAIN_PHOTOMETRIC = {1, 2}
Source = str | Path | bytes


class ImageError(ValueError):
    """An upload that cannot be used as a slice or mask; the message says why and what to do."""


def read_bytes(source: Source) -> tuple[bytes, str]:
    """The file's bytes and a short name for messages."""
    if isinstance(source, bytes):
        return source, "upload"
    path = Path(source)
    if not path.is_file():
        raise ImageError(f"{path.name or path}: no such file")
    return path.read_bytes(), path.name


def decode_array(source: Source) -> np.ndarray:
    """The raw pixels, H x W or H x W x C, in the file's own dtype (alpha channels kept)."""
    return _decode(source)[0]


def _decode(source: Source) -> tuple[np.ndarray, str]:
    data, name = read_bytes(source)
    if not data:
        raise ImageError(f"{name} is empty: upload a TIFF, PNG or JPEG slice")
    array = None
    is_tiff = data[:4] in TIFF_MAGIC
    if is_tiff:
        array = _decode_tiff(data, name)
    if array is None:
        array = _decode_pillow(data, name, is_tiff)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise ImageError(f"{name} has shape {array.shape}: expected one grayscale or RGB slice")
    _check_size(array.shape[:2], name)
    return array, name


def decode_image(source: Source) -> np.ndarray:
    """An uploaded slice as H x W x 3 uint8: grayscale is replicated to 3 channels, alpha dropped.

    Deeper pixels are brought to 8 bits by :func:`brainseg.io.pixels.to_uint8`.
    """
    array, name = _decode(source)
    try:
        return as_rgb_uint8(array, name)
    except ValueError as exc:
        raise ImageError(str(exc)) from None


def inspect_mask(source: Source, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """An uploaded mask as H x W bool (white / non-zero = abnormality) and notes for the user.

    Values 0/1 count as binary; otherwise pixels above half the value range are set (a note says so).
    ``shape`` (H, W) is the slice's size: a mask of another size is refused.
    """
    array = decode_array(source)
    notes = []
    levels = len(np.unique(array))
    if levels > 2:
        notes.append(f"the ground-truth mask is not binary ({levels} distinct values): pixels above half "
                     "the value range count as abnormality")
    if array.ndim == 3:  # any colour channel set counts; alpha is ignored
        colour = array[:, :, :1] if array.shape[2] == 2 else array[:, :, :3]
        array = colour.max(axis=2)
    try:
        mask = binarize_mask(array)
    except ValueError as exc:
        raise ImageError(str(exc)) from None
    if shape is not None and mask.shape != tuple(shape):
        raise ImageError(
            f"the ground-truth mask is {mask.shape[1]}x{mask.shape[0]} px but the slice is "
            f"{shape[1]}x{shape[0]} px: upload the mask that belongs to this slice"
        )
    return mask, notes


def slice_notes(image: np.ndarray) -> list[str]:
    """Warnings about a decoded H x W x 3 uint8 slice: a constant image, or one that looks like a mask."""
    low, high = int(image.min()), int(image.max())
    if low == high:
        tone = "black" if high == 0 else "white" if high == 255 else f"one grey level ({high})"
        return [f"the slice is all {tone}: there is nothing to segment, so the mask is empty"]
    values = np.unique(image[::4, ::4])
    channels_equal = bool((image[:, :, 0] == image[:, :, 1]).all() and (image[:, :, 1] == image[:, :, 2]).all())
    if channels_equal and len(values) == 2 and len(np.unique(image)) == 2:
        return ["this looks like a segmentation mask (only two grey levels), not an MRI slice: upload it as the "
                "ground-truth mask, and the slice itself above"]
    return []


def _decode_tiff(data: bytes, name: str) -> np.ndarray | None:
    """Pixels of a single-slice TIFF, or None to let Pillow try (palette, CMYK, unknown codecs)."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if len(tif.pages) > 1:
                raise ImageError(f"{name} holds several images ({len(tif.pages)} TIFF pages): upload a single slice")
            series = tif.series[0]
            if int(tif.pages[0].photometric) not in TIFF_PLAIN_PHOTOMETRIC:
                return None
            sizes = dict(zip(series.axes, series.shape))
            if max(sizes.get("Y", 0), sizes.get("X", 0)) > MAX_SIDE:
                _check_size((sizes["Y"], sizes["X"]), name)
            array, axes = series.asarray(), series.axes
    except ImageError:
        raise
    except Exception:  # noqa: BLE001 - any tifffile failure: Pillow tries next and reports clearly
        return None
    # drop singleton axes, then expect Y, X and at most one channel axis
    keep = [i for i, n in enumerate(array.shape) if n > 1 or axes[i] in "YX"]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    extra = [a for a in axes if a not in "YXSC"]
    if extra or axes.count("S") + axes.count("C") > 1:
        raise ImageError(f"{name} holds several images (TIFF axes {axes}, shape {array.shape}): upload a single slice")
    order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a in "SC"]
    return np.ascontiguousarray(array.transpose(order))


def _decode_pillow(data: bytes, name: str, is_tiff: bool = False) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_size((img.height, img.width), name)
            if getattr(img, "n_frames", 1) > 1:
                raise ImageError(f"{name} holds {img.n_frames} frames: upload a single slice")
            img.load()
            img = ImageOps.exif_transpose(img)
            return _pillow_to_array(img)
    except Image.DecompressionBombError:
        raise ImageError(f"{name} is too large to decode safely: the largest supported side is {MAX_SIDE} px") from None
    except UnidentifiedImageError:
        if is_tiff:
            raise ImageError(f"{name} starts like a TIFF but could not be read: the file may be truncated or "
                             "corrupt") from None
        raise ImageError(f"{name} is not a readable image: upload a TIFF, PNG or JPEG slice") from None
    except (OSError, SyntaxError) as exc:
        raise ImageError(f"{name} could not be decoded ({exc}): the file may be truncated or corrupt") from None


def _pillow_to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA", "F") or mode.startswith("I;16"):
        return np.asarray(img)
    if mode == "I":
        return np.asarray(img, dtype=np.int32)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode in ("P", "PA"):
        return np.asarray(img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB"))
    return np.asarray(img.convert("RGB"))


def _check_size(shape: tuple[int, int], name: str) -> None:
    height, width = int(shape[0]), int(shape[1])
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"{name} is {width}x{height} px: a slice needs at least {MIN_SIDE} px per side")
    if max(height, width) > MAX_SIDE:
        raise ImageError(f"{name} is {width}x{height} px: the largest supported side is {MAX_SIDE} px")


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an H x W (gray) or H x W x 3 (RGB) uint8 array.

    Level 1 is ~5x faster than the usual 6 for ~10 % more bytes: the right trade for a live demo.
    """
    array = np.asarray(image, np.uint8)
    if array.ndim == 3:
        array = np.ascontiguousarray(array[:, :, ::-1])  # OpenCV wants BGR
    ok, data = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise ValueError(f"could not encode an array of shape {array.shape} as PNG")
    return data.tobytes()


def save_png(image: np.ndarray, folder: str | Path, name: str) -> str:
    """Write ``image`` as ``folder/<sha256>/<name>.png`` (content-addressed, like Gradio's cache)."""
    data = encode_png(image)
    target = Path(folder) / hashlib.sha256(data).hexdigest() / f"{name}.png"
    if not target.exists():
        atomic_write_bytes(target, data)
    return str(target)
