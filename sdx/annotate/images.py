"""Reading the annotation engine's inputs: an image or mask (path, PIL image or array) as an 8-bit gray array.

The conversion rules (colour, 16-bit, bool and float inputs; size mismatches) are in docs/annotation.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["load_gray", "load_mask_array", "load_pair"]


def _name_of(obj: Any) -> str:
    if isinstance(obj, (str, os.PathLike)):
        return str(obj)
    if isinstance(obj, Image.Image):
        return str(getattr(obj, "filename", "") or "<PIL image>")
    if isinstance(obj, np.ndarray):
        return "<array>"
    return f"<{type(obj).__name__}>"


def _array_to_u8(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        # colour: bring to uint8 first, then PIL's luma conversion
        rgb = _array_to_u8(arr.reshape(arr.shape[0], -1), name).reshape(arr.shape)
        mode = "RGB" if arr.shape[2] == 3 else "RGBA"
        return np.asarray(Image.fromarray(np.ascontiguousarray(rgb), mode).convert("L"))
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D grayscale or (H, W, 3|4) colour image, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: image is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        # 16-bit (and wider) integers: drop the low byte after clipping to the 16-bit range
        return (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if np.isnan(arr).any():
            raise ValueError(f"{name}: image contains NaN values")
        scaled = arr * 255.0 if (arr.min() >= 0.0 and arr.max() <= 1.0) else arr
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    raise ValueError(f"{name}: unsupported array dtype {arr.dtype}")


def _pil_to_u8(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    if mode == "L":
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode.startswith("I;16") or mode == "I":
        return _array_to_u8(np.asarray(img).astype(np.int64), name)
    if mode == "F":
        return _array_to_u8(np.asarray(img), name)
    return np.asarray(img.convert("L"))


def _load_u8(src: Any, what: str) -> np.ndarray:
    name = _name_of(src)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise ValueError(f"{what} file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                return _pil_to_u8(img, name)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot read {what} file {path}: {exc}") from exc
    if isinstance(src, Image.Image):
        try:
            return _pil_to_u8(src, name)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {what} {name}: {exc}") from exc
    if isinstance(src, np.ndarray):
        return _array_to_u8(src, f"{what} {name}")
    raise ValueError(f"{what} must be a path, a PIL image or a numpy array, got {type(src).__name__}")


def load_gray(image: Any) -> np.ndarray:
    """An image (path, PIL image or array) as an 8-bit grayscale (H, W) uint8 array (rules: docs/annotation.md)."""
    return _load_u8(image, "image")


def load_mask_array(mask: Any) -> np.ndarray:
    """A mask (path, PIL image or array) as an 8-bit (H, W) uint8 array, not binarised (the rules use two
    thresholds: > 127 for the statistics, > 0 for Position)."""
    return _load_u8(mask, "mask")


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
