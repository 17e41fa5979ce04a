"""Reading images and masks as 8-bit gray arrays: the one set of rules every reader of the raw files shares.

The annotation engine reads its inputs here and the dataset builder (sdx.data.layout) reads masks and normalises
images with the same functions, so a pair means the same pixels everywhere. Gray values are OpenCV's
``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``, bit for bit, for JPEG, PNG, BMP and TIFF files (the authors' reader).
The rules per mode and format: docs/annotation.md ("Inputs").
"""

from __future__ import annotations

import collections
import math
import os
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["READ_ERRORS", "WIDE_MODES", "Decoded", "decode_gray", "exif_orientation", "list_files", "load_gray",
           "load_mask_array", "load_pair", "masks_by_stem", "oriented", "read_error", "to_8bit"]

EXIF_ORIENTATION = 0x0112
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")   # more than 8 bits per pixel
# What opening or decoding a bad file raises; DecompressionBombError (an image over PIL's pixel limit) is none of
# the others.
READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_CV_WEIGHTS = (4899, 9617, 1868)      # OpenCV's imread: (R*4899 + G*9617 + B*1868 + 2**13) >> 14
_PNG_WEIGHTS = (9797, 19234, 3737)    # libpng's rgb_to_gray with OpenCV's (0.299, 0.587): (...) >> 15
_PNG_SRGB_GAMMA = 45455               # libpng's file gamma of an sRGB chunk (1/2.2 in 1e-5 units)


def _name_of(obj: Any) -> str:
    if isinstance(obj, (str, os.PathLike)):
        return str(obj)
    if isinstance(obj, Image.Image):
        return str(getattr(obj, "filename", "") or "<PIL image>")
    if isinstance(obj, np.ndarray):
        return "<array>"
    return f"<{type(obj).__name__}>"


# ----------------------------------------------------------------------------------------------------------
# which file is whose mask (the builder and the folder annotator match masks to images by this one rule)
# ----------------------------------------------------------------------------------------------------------
def list_files(folder: str | os.PathLike) -> set[str]:
    """Names of the entries of ``folder`` that are not folders or hidden (dangling links included: they are
    reported as unreadable, not dropped)."""
    with os.scandir(folder) as it:
        return {e.name for e in it if not e.name.startswith(".") and not e.is_dir()}


def masks_by_stem(names: Iterable[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """({stem: mask file name}, {stem: [names]} for stems that more than one file shares) of a mask folder's file
    names. A mask belongs to the image with its stem (the name less its last extension); a stem that two files
    share (``bs_1.png`` and ``bs_1.bmp``) is ambiguous and refused by every reader, never settled by directory
    order."""
    by_stem: dict[str, list[str]] = collections.defaultdict(list)
    for name in names:
        by_stem[os.path.splitext(name)[0]].append(name)
    ambiguous = {stem: sorted(found) for stem, found in by_stem.items() if len(found) > 1}
    return {stem: found[0] for stem, found in by_stem.items() if len(found) == 1}, ambiguous


# ----------------------------------------------------------------------------------------------------------
# orientation and bit depth (the builder applies the same two rules when it stores an image)
# ----------------------------------------------------------------------------------------------------------
_ORIENTATION_SOURCES = ("exif", "xmp", "XML:com.adobe.xmp")  # where PIL's getexif looks for the tag


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8) of an opened (for PNG: loaded) image, as PIL reads it; 1 when absent,
    unreadable or out of range."""
    if not any(key in img.info for key in _ORIENTATION_SOURCES):
        return 1  # no metadata block: skip building an Exif object (a fifth of the engine's reading time)
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):  # a corrupt EXIF block: ignored,
        return 1                                                                    # as OpenCV does
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented(img: Image.Image) -> Image.Image:
    """``img`` as displayed: its own EXIF orientation applied (as OpenCV's imread and `datasets`' decoding do)."""
    return img if exif_orientation(img) == 1 else ImageOps.exif_transpose(img)


def _wide_to_u8(arr: np.ndarray, by_value: bool) -> np.ndarray:
    """16/32-bit integers: the high byte (images, as OpenCV's 8-bit read) or the value itself, clipped (masks)."""
    if by_value:
        return np.clip(arr, 0, 255).astype(np.uint8)
    return (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float gray image as 8-bit "L" (high byte / 0..1 or 0..255 scale); others unchanged."""
    if img.mode not in WIDE_MODES:
        return img
    arr = np.asarray(img)
    u8 = _float_to_u8(arr, _name_of(img)) if img.mode == "F" else _wide_to_u8(arr.astype(np.int64), False)
    return Image.fromarray(u8, mode="L")


# ----------------------------------------------------------------------------------------------------------
# colour to gray, as OpenCV's imread does it per format
# ----------------------------------------------------------------------------------------------------------
def _weighted(rgb: np.ndarray, weights: tuple[int, int, int], shift: int, rounding: int) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * weights[0] + g * weights[1] + b * weights[2] + rounding) >> shift).astype(np.uint8)


def _gamma_table(gamma: int) -> np.ndarray:
    """libpng's png_build_8bit_table: 255 * (i / 255) ** (gamma / 1e5), rounded; identity within 5 % of 1."""
    table = np.arange(256, dtype=np.float64)
    if abs(gamma - 100000) > 5000:
        table[1:255] = np.floor(255 * np.power(table[1:255] / 255.0, gamma * 1e-5) + 0.5)
    return table.astype(np.uint32)


def _png_file_gamma(info: dict) -> int | None:
    """The gamma libpng reads from a PNG (sRGB chunk, else gAMA) in 1e-5 units; None when there is none."""
    if "srgb" in info:
        return _PNG_SRGB_GAMMA
    gamma = info.get("gamma")
    return round(gamma * 100000) if isinstance(gamma, (int, float)) and gamma > 0 else None


def _png_rgb_to_gray(rgb: np.ndarray, file_gamma: int | None) -> np.ndarray:
    """libpng's png_do_rgb_to_gray (8 bits): truncating weights, or through linear light when the file has a gamma
    far from 1 (libpng then takes the screen gamma as its reciprocal); gray pixels (r == g == b) pass unchanged."""
    if file_gamma is None or abs(file_gamma - 100000) <= 5000:
        return _weighted(rgb, _PNG_WEIGHTS, 15, 0)
    screen = math.floor(1e10 / file_gamma + 0.5)
    to_linear, from_linear = _gamma_table(screen), _gamma_table(math.floor(1e10 / screen + 0.5))
    linear = to_linear[rgb[..., :3]]
    gray = from_linear[(linear[..., 0] * _PNG_WEIGHTS[0] + linear[..., 1] * _PNG_WEIGHTS[1]
                        + linear[..., 2] * _PNG_WEIGHTS[2] + 16384) >> 15].astype(np.uint8)
    same = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 0] == rgb[..., 2])
    return np.where(same, rgb[..., 0], gray)


def _rgb_to_gray(rgb: np.ndarray, fmt: str | None, info: dict) -> np.ndarray:
    if fmt == "PNG":
        return _png_rgb_to_gray(rgb, _png_file_gamma(info))
    return _weighted(rgb, _CV_WEIGHTS, 14, 1 << 13)


# ----------------------------------------------------------------------------------------------------------
# arrays and PIL images to 8-bit gray
# ----------------------------------------------------------------------------------------------------------
def _float_to_u8(arr: np.ndarray, name: str) -> np.ndarray:
    if np.isnan(arr).any():
        raise ValueError(f"{name}: image contains NaN values")
    scaled = arr * 255.0 if (arr.min() >= 0.0 and arr.max() <= 1.0) else arr
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _array_to_u8(arr: np.ndarray, name: str, by_value: bool) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # colour (RGB order): OpenCV's weights, alpha ignored
        return _rgb_to_gray(_array_to_u8(arr[..., :3].reshape(arr.shape[0], -1), name, by_value)
                            .reshape(arr.shape[0], arr.shape[1], 3), None, {})
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D grayscale or (H, W, 3|4) colour image, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: image is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        return _wide_to_u8(arr.astype(np.int64), by_value)
    if np.issubdtype(arr.dtype, np.floating):
        return _float_to_u8(arr, name)
    raise ValueError(f"{name}: unsupported array dtype {arr.dtype}")


def _pil_to_u8(img: Image.Image, name: str, by_value: bool, fmt: str | None = None) -> np.ndarray:
    """Per mode: L as is, 1 as 0/255, LA by its L channel, 16/32-bit and float by ``_array_to_u8``, colour and
    palette (the colour each index stands for) by the gray conversion of the file format ``fmt`` (default: the
    image's own); alpha is never read."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img).astype(np.uint8) * np.uint8(255)
    if mode == "LA":
        return np.asarray(img.getchannel("L"))
    if mode in WIDE_MODES:
        return _array_to_u8(np.asarray(img), name, by_value)
    rgb = img if mode in ("RGB", "RGBA", "RGBX") else img.convert("RGB")
    return _rgb_to_gray(np.asarray(rgb), fmt or img.format, img.info)


def read_error(exc: BaseException) -> str:
    """What went wrong reading a file, in words (a decompression bomb says how to accept a trusted file)."""
    hint = " (raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted)" \
        if isinstance(exc, Image.DecompressionBombError) else ""
    return f"{type(exc).__name__}: {exc}{hint}"


class Decoded(NamedTuple):
    """A file read by the rules above, with what was found in it."""

    array: np.ndarray      # 8-bit gray (H, W), as displayed
    format: str | None     # PIL's name of the file format ("JPEG", "PNG", ...)
    mode: str              # PIL's mode of the decoded file ("L", "RGB", "I;16", ...)
    orientation: int       # EXIF orientation (1 = none), already applied to ``array``


def decode_gray(path: str | os.PathLike, *, mask: bool = False) -> Decoded:
    """Read an image (``mask=False``) or a mask file; unreadable, missing or oversized files raise ValueError
    naming the file."""
    what = "mask" if mask else "image"
    try:
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
            if fmt == "JPEG" and mode == "RGB":
                img.draft("L", img.size)  # the decoder's own luma: what OpenCV's IMREAD_GRAYSCALE returns
            img.load()
            orientation = exif_orientation(img)
            shown = img if orientation == 1 else ImageOps.exif_transpose(img)
            return Decoded(_pil_to_u8(shown, str(path), mask, fmt), fmt, mode, orientation)
    except FileNotFoundError:
        raise ValueError(f"{what} file not found: {path}") from None
    except READ_ERRORS as exc:
        raise ValueError(f"cannot read {what} file {path}: {read_error(exc)}") from None


def _load_u8(src: Any, what: str, by_value: bool) -> np.ndarray:
    if isinstance(src, (str, os.PathLike)):
        return decode_gray(src, mask=by_value).array
    name = _name_of(src)
    if isinstance(src, Image.Image):
        try:
            return _pil_to_u8(src, name, by_value)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {what} {name}: {exc}") from exc
    if isinstance(src, np.ndarray):
        return _array_to_u8(src, f"{what} {name}", by_value)
    raise ValueError(f"{what} must be a path, a PIL image or a numpy array, got {type(src).__name__}")


def load_gray(image: Any) -> np.ndarray:
    """An image (path, PIL image or array) as an 8-bit grayscale (H, W) uint8 array (rules: docs/annotation.md)."""
    return _load_u8(image, "image", by_value=False)


def load_mask_array(mask: Any) -> np.ndarray:
    """A mask (path, PIL image or array) as an 8-bit (H, W) uint8 array, not binarised (the rules use two
    thresholds: > 127 for the statistics, > 0 for Position). Wider integer masks are read by value (clipped at
    255), not scaled; the builder binarises this same array."""
    return _load_u8(mask, "mask", by_value=True)


def load_pair(image: Any, mask: Any, *, resize_mask: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load image and mask; a size mismatch raises ValueError naming both, or resizes the mask (nearest)."""
    gray = load_gray(image)
    m = load_mask_array(mask)
    if m.shape != gray.shape:
        if not resize_mask:
            raise ValueError(
                f"mask {_name_of(mask)} is {m.shape[1]}x{m.shape[0]} (WxH) but image {_name_of(image)} is "
                f"{gray.shape[1]}x{gray.shape[0]}; pass resize_mask=True (--resize_mask) to resize the mask "
                f"with nearest-neighbour sampling")
        m = np.asarray(Image.fromarray(m).resize((gray.shape[1], gray.shape[0]), Image.NEAREST))
    return gray, m
