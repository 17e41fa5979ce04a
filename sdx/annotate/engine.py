"""Annotation engine: the T3 structured attributes and the T4 sentence from an image and its mask.

This reproduces the SteelDefectX authors' annotation scripts (reference section 2) without a language model.
Five T3 fields are fixed rules on the image and mask and are reproduced exactly; the three fields the authors
had GPT-4o infer from the T2 text (Shape, Direction, Spatial Distribution) are derived here from mask geometry
(see "Geometry rules" below) unless the caller passes them explicitly.

Inputs
------
``image`` and ``mask`` may each be a path (str / os.PathLike), a PIL image or a numpy array.

* Grayscale conversion (``load_gray``): the image becomes 8-bit ("L").
  - 8-bit gray ("L", uint8 2-D array): used as is.
  - RGB / RGBA / palette / LA / CMYK ...: PIL ``convert("L")`` (ITU-R 601-2 luma L = R*299/1000 + G*587/1000
    + B*114/1000; alpha is dropped). A (H, W, 3) or (H, W, 4) uint8 array is converted the same way.
  - 16-bit ("I;16*", "I", uint16 / other integer arrays): scaled to 8 bits by dropping the low byte
    (``v >> 8``, i.e. floor(v / 256), values clipped to 0..65535 first) -- the same as OpenCV's 8-bit read.
  - bool arrays: False -> 0, True -> 255.
  - float arrays: taken on the 0..1 scale when every value lies in [0, 1] (multiplied by 255), else on the
    0..255 scale; then rounded and clipped to 0..255. NaN -> ValueError.
  - "F" mode PIL images: as float arrays.
* ``load_mask`` converts the same way (a mask is just an 8-bit gray image); it is *not* binarised on load,
  because the rules use two thresholds (see below).
* Unreadable / missing files and arrays that are not 2-D gray or 3-D colour raise ``ValueError`` naming the
  file (or "<array>").
* Mask and image of different sizes raise ``ValueError`` naming both files and both sizes, unless
  ``resize_mask=True`` is given: the mask is then resized to the image's size with nearest-neighbour sampling
  (PIL ``Image.NEAREST``) before any rule is applied. Nothing is ever resized otherwise: the statistics are over
  the pair at its own size (the release is 256x256, the oracle 200x200).

Rule-based fields (the authors' rules, reproduced exactly)
----------------------------------------------------------
* binary mask ``B = mask > 127`` (the release's masks carry grey edges); ``A = count(B)``, ``N = H * W``.
* ``scale_ratio = round(A / N, 6)``. Scale: < 0.01 tiny, < 0.03 small, < 0.10 medium, <= 0.25 large,
  else extensive.
* ``mean_defect = mean(gray[B])``, ``mean_background = mean(gray[~B])`` (float64, not rounded);
  ``polarity_diff = mean_defect - mean_background``; Polarity: < -5 dark, > 5 bright, else neutral.
* ``saliency = |polarity_diff|``; Saliency: < 10 low, <= 40 medium, else high.
* ``component_count`` = number of 8-connected components of ``B`` (``scipy.ndimage.label`` with a 3x3 structure
  of ones); Number of Defects: 1..5 -> "one".."five", 0 or more than 5 -> "multiple".
* ``largest_component_ratio`` = pixels of the largest component / A (0.0 when A == 0).
* Position: cell edges at ``round(k * W / 3)`` and ``round(k * H / 3)`` for k = 0..3 (the last cell runs to the
  edge); a pixel counts when ``mask > 0`` (NOT > 127: the authors' script differs here and we keep it);
  share = cell count / total count, rounded to 6 decimals; cells with share 0 are left out; sorted by share
  descending, equal (rounded) shares keep the grid order top-left, top-center, top-right, middle-left, center,
  middle-right, bottom-left, bottom-center, bottom-right. Release form: ``[[cell, share], ...]``.

Degenerate masks (documented decision)
--------------------------------------
We reproduce the authors' values so that a release computed by their scripts verifies, and report the
undefined statistics as NaN:

* empty mask (no pixel > 127): mean_defect, polarity_diff and saliency are NaN; the authors' NaN comparisons
  give Polarity "neutral" and Saliency "high" (neither "< -5" nor "> 5", neither "< 10" nor "<= 40"), Scale
  "tiny" (ratio 0), Number of Defects "multiple" (0 components), Position [] when no pixel is > 0 (a mask
  with only faint values 1..127 still has a Position, as in the authors' code). Shape "unclear", Direction
  "none", Spatial Distribution "unclear" (the authors' fallbacks).
* full mask (every pixel > 127): mean_background, polarity_diff and saliency are NaN -> Polarity "neutral",
  Saliency "high"; Scale "extensive", one component.

Callers that want to treat these as errors can test ``statistics["component_count"] == 0`` or
``math.isnan(statistics["saliency"])``; the folder tools count them (see ``annotate_folder``).

Geometry rules (Shape, Direction, Spatial Distribution)
-------------------------------------------------------
See ``compute_geometry``; passing ``shape=`` / ``direction=`` / ``distribution=`` overrides any of the three
(the synthetic generator passes what it drew; passing the authors' fallbacks reproduces the release fixture).
With exactly one component Spatial Distribution is always "isolated" (the authors' rule), also when given.

T4
--
``annotate`` renders T4 with ``sdx.data.levels.render_t4`` (the single implementation of the authors' template).

Folder tools (``steeldefectx.py annotate`` / ``verify``, registered by ``register_cli``)
--------------------------------------------------------------------------------------
* ``annotate_folder``: images + masks -> records in the official schema. Labels from a CSV
  (image_name,class_name), else class sub-folders, else the case-sensitive file-name prefix (longest
  ``<prefix>_`` match); mask ``<mask_dir>/<stem>.png``; T2 kept from an optional records / {name: text} JSON,
  else ""; images without a mask kept with null T3 and "" T4 (or skipped / an error), always counted;
  unreadable pairs raise naming the file or are skipped and listed; progress bar; optional process pool.
* ``verify_release``: recompute the five rule fields of each ``<split>-text.json`` from ``<split>/`` and
  ``<split>_mask/``; mismatch counts per field and per file; records without T3, without a mask or with
  unreadable files are counted as unverifiable.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from sdx.data.levels import CLASS_NAMES, DIRECTIONS, DISTRIBUTIONS, GRID_CELLS, NUMBERS, SHAPES, T3_FIELDS, render_t4

__all__ = [
    "load_gray", "load_mask", "load_pair", "compute_statistics", "compute_position", "compute_geometry",
    "compute_attributes", "annotate", "analyze", "annotate_folder", "verify_release", "format_verify",
    "register_cli", "annotate_main", "verify_main", "class_from_prefix", "read_labels_csv", "read_descriptions",
    "RULE_FIELDS", "STAT_KEYS",
]

STAT_KEYS: tuple[str, ...] = ("scale_ratio", "mean_defect", "mean_background", "polarity_diff", "saliency",
                              "component_count", "largest_component_ratio")
# The T3 fields computed by fixed rules (reproducible exactly from image + mask).
RULE_FIELDS: tuple[str, ...] = ("Number of Defects", "Position", "Scale", "Polarity", "Saliency")
# The authors' fallbacks when the language model gave nothing usable.
FALLBACK_SHAPE = "unclear"
FALLBACK_DIRECTION = "none"
FALLBACK_DISTRIBUTION = "unclear"

BINARY_THRESHOLD = 127          # mask > 127 is defect (statistics, components, Scale, Polarity, Saliency)
POSITION_THRESHOLD = 0          # mask > 0 counts for Position (the authors' script)
_EIGHT = np.ones((3, 3), dtype=bool)
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------
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
    """An image (path, PIL image or array) as an 8-bit grayscale (H, W) uint8 array (rules: module docstring)."""
    return _load_u8(image, "image")


def load_mask(mask: Any) -> np.ndarray:
    """A mask (path, PIL image or array) as an 8-bit (H, W) uint8 array, not binarised (module docstring)."""
    return _load_u8(mask, "mask")


def load_pair(image: Any, mask: Any, *, resize_mask: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load image and mask; a size mismatch raises ValueError naming both, or resizes the mask (nearest)."""
    gray = load_gray(image)
    m = load_mask(mask)
    if m.shape != gray.shape:
        if not resize_mask:
            raise ValueError(
                f"mask {_name_of(mask)} is {m.shape[1]}x{m.shape[0]} (WxH) but image {_name_of(image)} is "
                f"{gray.shape[1]}x{gray.shape[0]}; pass resize_mask=True (--resize_mask) to resize the mask "
                f"with nearest-neighbour sampling")
        m = np.asarray(Image.fromarray(m).resize((gray.shape[1], gray.shape[0]), Image.NEAREST))
    return gray, m


# ----------------------------------------------------------------------------------------------------------
# rule-based statistics and fields
# ----------------------------------------------------------------------------------------------------------
def _scale_word(ratio: float) -> str:
    if ratio < 0.01:
        return "tiny"
    if ratio < 0.03:
        return "small"
    if ratio < 0.10:
        return "medium"
    if ratio <= 0.25:
        return "large"
    return "extensive"


def _polarity_word(diff: float) -> str:
    # NaN compares False both ways -> "neutral" (the authors' behaviour)
    if diff < -5:
        return "dark"
    if diff > 5:
        return "bright"
    return "neutral"


def _saliency_word(sal: float) -> str:
    # NaN compares False both ways -> "high" (the authors' behaviour)
    if sal < 10:
        return "low"
    if sal <= 40:
        return "medium"
    return "high"


def _number_word(count: int) -> str:
    return NUMBERS[count - 1] if 1 <= count <= 5 else "multiple"


def _grid_edges(n: int) -> list[int]:
    return [int(round(k * n / 3)) for k in range(4)]


def compute_position(mask: Any) -> list[list[Any]]:
    """Position in the release form [[cell, share], ...] from a mask (pixels > 0 count; module docstring)."""
    m = mask if isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.ndim == 2 else load_mask(mask)
    h, w = m.shape
    pos = m > POSITION_THRESHOLD
    ys, xs = _grid_edges(h), _grid_edges(w)
    counts = np.array([np.count_nonzero(pos[ys[r]:ys[r + 1], xs[c]:xs[c + 1]]) for r in range(3) for c in range(3)],
                      dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return []
    shares = [round(int(c) / total, 6) for c in counts.ravel()]
    order = sorted(range(9), key=lambda i: -shares[i])  # stable: ties keep grid order
    return [[GRID_CELLS[i], shares[i]] for i in order if shares[i] > 0]


def _union_bbox(binary: np.ndarray) -> tuple[int, int, int, int]:
    rows_any, cols_any = binary.any(axis=1), binary.any(axis=0)
    h, w = binary.shape
    return (int(rows_any.argmax()), h - int(rows_any[::-1].argmax()),
            int(cols_any.argmax()), w - int(cols_any[::-1].argmax()))


def _stats_from_arrays(gray: np.ndarray, m: np.ndarray) -> tuple[dict[str, Any], tuple]:
    """(statistics, components) where components = (binary, labels of the union bounding box crop, count,
    sizes indexed by label or None when count <= 1, union bounding box (y0, y1, x0, x1) or None)."""
    binary = m > BINARY_THRESHOLD
    n = binary.size
    area = int(np.count_nonzero(binary))
    sizes = bbox = None
    if area:
        # labelling the union bounding box only gives the same components at a fraction of the cost
        bbox = _union_bbox(binary)
        labels, count = ndimage.label(binary[bbox[0]:bbox[1], bbox[2]:bbox[3]], structure=_EIGHT)
    else:
        labels, count = np.zeros((0, 0), np.int32), 0
    if area:
        if count > 1:
            sizes = np.bincount(labels[labels > 0], minlength=count + 1)
            largest = float(sizes[1:].max()) / area
        else:
            largest = 1.0
        total_sum = float(gray.sum(dtype=np.int64))
        in_sum = float(gray[binary].sum(dtype=np.int64))
        mean_defect = in_sum / area
        mean_background = (total_sum - in_sum) / (n - area) if area < n else math.nan
    else:
        largest = 0.0
        mean_defect = math.nan
        mean_background = float(gray.mean(dtype=np.float64))
    diff = mean_defect - mean_background
    stats = {
        "scale_ratio": round(area / n, 6),
        "mean_defect": mean_defect,
        "mean_background": mean_background,
        "polarity_diff": diff,
        "saliency": abs(diff),
        "component_count": int(count),
        "largest_component_ratio": largest,
    }
    return stats, (binary, labels, int(count), sizes, bbox)


def compute_statistics(gray: Any, mask: Any, *, resize_mask: bool = False) -> dict[str, Any]:
    """The authors' statistics (keys = STAT_KEYS) of an image/mask pair; NaN where undefined."""
    g, m = load_pair(gray, mask, resize_mask=resize_mask)
    return _stats_from_arrays(g, m)[0]


def _rule_fields(stats: Mapping[str, Any], position: list) -> dict[str, Any]:
    return {
        "Number of Defects": _number_word(stats["component_count"]),
        "Position": position,
        "Scale": _scale_word(stats["scale_ratio"]),
        "Polarity": _polarity_word(stats["polarity_diff"]),
        "Saliency": _saliency_word(stats["saliency"]),
    }


# ----------------------------------------------------------------------------------------------------------
# geometry (Shape, Direction, Spatial Distribution)
# ----------------------------------------------------------------------------------------------------------
# Thresholds of the geometry rules (documented in compute_geometry's docstring; change them only there too).
DIFFUSE_MIN_SCALE = 0.5          # mask covers at least half the image -> "diffuse"
LINEAR_MIN_ELONGATION = 4.0      # moment axis ratio of a straight thin defect
LINEAR_MAX_THICKNESS = 0.1       # ... whose thickness is at most 10% of the image's shorter side
ELONGATED_MIN_ELONGATION = 2.0   # moment axis ratio of an elongated defect (also the Direction threshold)
CURVED_MIN_SLENDERNESS = 4.0     # length / thickness of a thin band that bends
CURVED_MAX_SOLIDITY = 0.6
NETWORK_MIN_HOLES = 3            # enclosed background regions inside the dominant component
NETWORK_MAX_SOLIDITY = 0.6
CIRCULAR_MAX_ELONGATION = 1.5
CIRCULAR_MIN_ROUNDNESS = 0.85    # 4*pi*hull_area / hull_perimeter**2 (1 for a disc, pi/4 for a square)
CIRCULAR_MIN_SOLIDITY = 0.85
SPOT_MAX_AREA = 0.01             # dominant component smaller than 1% of the image
SPOT_MIN_SOLIDITY = 0.7
PATCH_MIN_SOLIDITY = 0.75
FRAGMENTED_MIN_COMPONENTS = 4
FRAGMENTED_MAX_LARGEST = 0.35    # largest component holds < 35% of the mask
ISOLATED_MIN_LARGEST = 0.9       # one component holds >= 90% of the mask -> still "isolated"
CLUSTERED_MAX_EXTENT = 0.5       # union bounding box spans at most half the image in both directions
CLUSTERED_MIN_UNION_FILL = 0.5   # ... or the pieces fill at least half of their union bounding box
DIRECTION_MIN_PIECES = 3         # a row of >= 3 pieces gives a direction even when each piece is compact
DIAGONAL_BAND = (22.5, 67.5)     # orientation (degrees from horizontal): < 22.5 horizontal, > 67.5 vertical

# Gray's bit-quad tables: index = a + 2b + 4c + 8d over every 2x2 window (a b / c d)
_Q1 = np.zeros(16, np.int64)
_Q1[[1, 2, 4, 8]] = 1
_Q3 = np.zeros(16, np.int64)
_Q3[[7, 11, 13, 14]] = 1
_QD = np.zeros(16, np.int64)
_QD[[6, 9]] = 1          # (b, c) and (a, d): the two diagonal pairs


def _moments(sub: np.ndarray) -> tuple[float, float, float, float, float]:
    """(area, cy, cx, elongation, orientation_deg) of a bool crop from projections (no per-pixel Python loop).

    Each pixel is a unit square, so 1/12 is added to both variances (a one-pixel-wide line is not degenerate).
    Orientation: angle of the major axis from the horizontal, in [0, 90] degrees (sign is dropped: the
    Direction value set does not distinguish the two diagonals).
    """
    h, w = sub.shape
    ys = np.arange(h, dtype=np.float64)
    xs = np.arange(w, dtype=np.float64)
    u8 = sub.view(np.uint8)
    row = u8.sum(axis=1, dtype=np.int64).astype(np.float64)
    col = u8.sum(axis=0, dtype=np.int64).astype(np.float64)
    area = float(row.sum())
    cy, cx = float(row @ ys) / area, float(col @ xs) / area
    vyy = float(row @ (ys - cy) ** 2) / area + 1 / 12
    vxx = float(col @ (xs - cx) ** 2) / area + 1 / 12
    rx = sub.astype(np.float32) @ (xs - cx).astype(np.float32)       # per-row sum of (x - cx)
    vxy = float(rx.astype(np.float64) @ (ys - cy)) / area
    tr, det = vxx + vyy, vxx * vyy - vxy * vxy
    disc = math.sqrt(max(tr * tr / 4 - det, 0.0))
    l1, l2 = tr / 2 + disc, max(tr / 2 - disc, 1e-12)
    elong = math.sqrt(l1 / l2)
    angle = abs(math.degrees(0.5 * math.atan2(2 * vxy, vxx - vyy)))   # 0 = along x (horizontal)
    return area, cy, cx, elong, angle


def _hull(sub: np.ndarray) -> tuple[float, float]:
    """(area, perimeter) of the convex hull of the pixel squares of one 8-connected component's bool crop.

    The hull of the component equals the hull of the outer corners of each row's leftmost and rightmost pixel
    (the rows of a connected component are contiguous). Corners on vertical runs of equal row ends are
    collinear and dropped before qhull.
    """
    rows = np.flatnonzero(sub.any(axis=1))
    body = sub[rows[0]:rows[-1] + 1]
    left = body.argmax(axis=1)
    right = body.shape[1] - body[:, ::-1].argmax(axis=1)          # exclusive right edge
    y = np.arange(rows[0], rows[-1] + 1)
    pts = []
    for ends in (left, right):
        first = np.ones(len(ends), bool)
        first[1:] = ends[1:] != ends[:-1]
        last = np.ones(len(ends), bool)
        last[:-1] = ends[:-1] != ends[1:]
        pts.append(np.stack([ends[first], y[first]], 1))
        pts.append(np.stack([ends[last], y[last] + 1], 1))
    pts = np.concatenate(pts).astype(np.float64)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # pragma: no cover - corner points of a non-empty crop always span an area
        area = float(np.count_nonzero(sub))
        return area, 4.0 * math.sqrt(area)
    return float(hull.volume), float(hull.area)


def _runs_and_euler(sub: np.ndarray) -> tuple[int, int, int]:
    """(horizontal runs, vertical runs, 8-connected Euler number) of a bool crop, by bit-quad counting."""
    p = np.zeros((sub.shape[0] + 2, sub.shape[1] + 2), np.uint8)
    p[1:-1, 1:-1] = sub
    h_runs = int(np.count_nonzero(p[:, 1:] > p[:, :-1]))
    v_runs = int(np.count_nonzero(p[1:, :] > p[:-1, :]))
    code = p[:-1, :-1] | (p[:-1, 1:] << 1) | (p[1:, :-1] << 2) | (p[1:, 1:] << 3)
    hist = np.bincount(code.ravel(), minlength=16)
    euler = int(hist @ _Q1 - hist @ _Q3 - 2 * (hist @ _QD)) // 4
    return h_runs, v_runs, euler


def _pieces_direction(crop_labels: np.ndarray, count: int) -> str:
    """The Direction shared by components holding > 50% of the mask area (per-component second moments from
    bincounts over the labelled pixels; one small loop over components, none over pixels), else "none"."""
    ys, xs = np.nonzero(crop_labels)
    lab = crop_labels[ys, xs]
    n = np.bincount(lab, minlength=count + 1)[1:].astype(np.float64)
    ys, xs = ys.astype(np.float64), xs.astype(np.float64)
    sx, sy = (np.bincount(lab, weights=v, minlength=count + 1)[1:] for v in (xs, ys))
    sxx, syy, sxy = (np.bincount(lab, weights=v, minlength=count + 1)[1:] for v in (xs * xs, ys * ys, xs * ys))
    mx, my = sx / n, sy / n
    vxx, vyy, vxy = sxx / n - mx * mx + 1 / 12, syy / n - my * my + 1 / 12, sxy / n - mx * my
    disc = np.sqrt(np.maximum((vxx - vyy) ** 2 / 4 + vxy * vxy, 0.0))
    l1, l2 = (vxx + vyy) / 2 + disc, np.maximum((vxx + vyy) / 2 - disc, 1e-12)
    elong = np.sqrt(l1 / l2)
    angle = np.abs(np.degrees(0.5 * np.arctan2(2 * vxy, vxx - vyy)))
    area: dict[str, float] = collections.defaultdict(float)
    for e, a, size in zip(elong, angle, n):
        area[_direction_word(float(e), float(a))] += size
    area.pop("none", None)
    if area:
        word, share = max(area.items(), key=lambda kv: kv[1])
        if share > 0.5 * n.sum():
            return word
    return "none"


def _direction_word(elong: float, angle: float) -> str:
    if elong < ELONGATED_MIN_ELONGATION:
        return "none"
    if angle < DIAGONAL_BAND[0]:
        return "horizontal"
    if angle > DIAGONAL_BAND[1]:
        return "vertical"
    return "diagonal"


def compute_geometry(mask: Any, *, labels: np.ndarray | None = None, count: int | None = None,
                     full: bool = False, _components: tuple | None = None) -> dict[str, Any]:
    """Shape, Direction and Spatial Distribution from mask geometry, within the authors' value sets.

    Returns ``{"Shape", "Direction", "Spatial Distribution", "features": {...}}``; the costlier features
    (hull, runs, holes, whole-mask moments) are computed only when a rule needs them (a diffuse mask gets only
    the mask-level ones), all of them with ``full=True`` (the report script). A component that is exactly its
    bounding rectangle gets its hull and runs in closed form. Everything is measured on
    the binary mask (> 127) with 8-connected components; the *dominant* component D is the largest one.

    Features (of D unless said otherwise; all vectorised, no per-pixel Python loop):

    * ``elongation`` = sqrt(l1 / l2), l1 >= l2 the eigenvalues of the covariance of D's pixel coordinates (+1/12
      per axis for the pixel extent); ``angle`` = major-axis angle from the horizontal, 0..90 degrees.
    * ``solidity`` = area / convex-hull area (hull of the pixel squares, scipy.spatial.ConvexHull on the outer
      corners of each row's end pixels); ``roundness`` = 4*pi*hull_area / hull_perimeter**2 (1 disc, 0.785
      square); ``fill`` = area / bounding-box area.
    * ``thickness`` = min(area / horizontal runs, area / vertical runs) (the mean chord across D; the width of
      a band), ``slenderness`` = area / thickness**2 (length over width of a band; ~1 for compact blobs).
    * ``holes`` = 1 - Euler number of D (8-connected foreground, Gray's bit-quads) = enclosed background regions.
    * mask-level: ``scale_ratio``, ``component_count``, ``largest_ratio`` (D's share of the mask),
      ``extent`` = max(height / H, width / W) of the bounding box of all components, ``union_fill`` = mask
      area / area of that bounding box, and the elongation and angle of the whole mask.

    Shape (first rule that matches):

    1. no component -> "unclear";
    2. scale_ratio >= 0.5 -> "diffuse" (the defect covers most of the surface; no outline to describe);
    3. elongation < 4, holes >= 3 and solidity < 0.6 -> "network-like" (a mesh enclosing background);
    4. component_count >= 4 and largest_ratio < 0.35 -> "spot-like" if D is small and compact (area < 1% of
       the image, elongation < 2, solidity >= 0.7), else "fragmented";
    5. elongation >= 4 and thickness <= 10% of the image's shorter side -> "linear" (a wide band is not a line);
    6. slenderness >= 4 and solidity < 0.6 -> "curved" (a thin band whose moments are not elongated: it bends);
    7. elongation >= 2 -> "elongated";
    8. elongation < 1.5, roundness >= 0.85 and solidity >= 0.85 -> "circular";
    9. D small and compact (as in 4) -> "spot-like";
    10. solidity >= 0.75 -> "patch-like";
    11. otherwise -> "irregular".

    Direction: from D's moments when D's elongation >= 2, else (with >= 3 components) from the whole mask's
    moments when its elongation >= 2 (a row of pieces), else "none". Angle < 22.5 degrees "horizontal",
    > 67.5 "vertical", else "diagonal".
    Shapes "diffuse" and "network-like" always get "none" (no single direction). "fragmented": the direction
    shared by pieces holding more than half of the mask area (each piece's own axis, elongation >= 2), else
    the whole mask's direction (elongation >= 2), else "none".

    Spatial Distribution: 0 components "unclear"; 1 component "isolated" (the authors' rule); D holding
    >= 90% of the mask "isolated" (one region with negligible crumbs); "clustered" when the pieces are
    grouped: their union bounding box spans <= 50% of the image in both directions (extent <= 0.5) or they
    fill >= 50% of it (union_fill >= 0.5, pieces side by side); else "scattered".
    """
    if _components is not None:   # from _stats_from_arrays: labels are of the union bounding box crop
        binary, crop_labels, count, sizes, bbox = _components
    else:
        m = mask if isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.ndim == 2 \
            else load_mask(mask)
        binary = m > BINARY_THRESHOLD
        if labels is None or count is None:
            labels, count = ndimage.label(binary, structure=_EIGHT)
        sizes = None
        bbox = _union_bbox(binary) if count else None
        crop_labels = labels[bbox[0]:bbox[1], bbox[2]:bbox[3]] if count else labels
    if count == 0:
        return {"Shape": FALLBACK_SHAPE, "Direction": FALLBACK_DIRECTION,
                "Spatial Distribution": FALLBACK_DISTRIBUTION, "features": {"component_count": 0}}
    h, w = binary.shape
    n = binary.size
    # union bounding box (all components) and the dominant component's crop
    y0, y1, x0, x1 = bbox
    if count == 1:
        sub = binary[y0:y1, x0:x1]
        total = None
    else:
        if sizes is None:
            sizes = np.bincount(crop_labels[crop_labels > 0], minlength=count + 1)
        sizes = sizes.copy()
        sizes[0] = 0
        k = int(sizes.argmax())
        total = float(sizes.sum())
        dom = crop_labels == k
        r_any, c_any = dom.any(axis=1), dom.any(axis=0)
        sub = dom[int(r_any.argmax()):len(r_any) - int(r_any[::-1].argmax()),
                  int(c_any.argmax()):len(c_any) - int(c_any[::-1].argmax())]
    sub_area = float(np.count_nonzero(sub))
    total = sub_area if total is None else total
    rect = sub_area == sub.size   # D is exactly its bounding rectangle (NEU-DET box masks): closed forms below
    if total / n >= DIFFUSE_MIN_SCALE and not full:
        # "diffuse" needs no outline feature: only the distribution is still to decide
        f = {"scale_ratio": total / n, "component_count": int(count), "largest_ratio": sub_area / total,
             "extent": max((y1 - y0) / h, (x1 - x0) / w), "union_fill": total / float((y1 - y0) * (x1 - x0))}
        return {"Shape": "diffuse", "Direction": "none", "Spatial Distribution": _distribution(count, f),
                "features": f}
    area, _, _, elong, angle = _moments(sub)
    f: dict[str, Any] = {
        "scale_ratio": total / n,
        "component_count": int(count),
        "largest_ratio": area / total,
        "extent": max((y1 - y0) / h, (x1 - x0) / w),
        "area_ratio": area / n,
        "elongation": elong,
        "angle": angle,
        "fill": area / float(sub.shape[0] * sub.shape[1]),
        "union_fill": total / float((y1 - y0) * (x1 - x0)),
    }

    # the costlier features are computed only when a rule needs them (all of them with full=True)
    def hull_feats() -> None:
        if "solidity" not in f:
            hull_area, hull_perim = (float(sub.size), 2.0 * (sub.shape[0] + sub.shape[1])) if rect else _hull(sub)
            f["solidity"] = min(area / hull_area, 1.0)
            f["roundness"] = 4 * math.pi * hull_area / (hull_perim * hull_perim)

    def run_feats() -> None:
        if "holes" not in f:
            h_runs, v_runs, euler = (sub.shape[0], sub.shape[1], 1) if rect else _runs_and_euler(sub)
            thickness = min(area / max(h_runs, 1), area / max(v_runs, 1))
            f["thickness"] = thickness
            f["slenderness"] = area / (thickness * thickness)
            f["holes"] = 1 - euler

    def mask_moments() -> None:
        if "mask_elongation" not in f:
            if count == 1:
                f["mask_elongation"], f["mask_angle"] = elong, angle
            else:
                _, _, _, f["mask_elongation"], f["mask_angle"] = _moments(binary[y0:y1, x0:x1])

    if full:
        hull_feats()
        run_feats()
        mask_moments()

    def small_compact() -> bool:
        if f["area_ratio"] >= SPOT_MAX_AREA or elong >= ELONGATED_MIN_ELONGATION:
            return False
        hull_feats()
        return f["solidity"] >= SPOT_MIN_SOLIDITY

    def network() -> bool:
        if elong >= LINEAR_MIN_ELONGATION or f["fill"] >= NETWORK_MAX_SOLIDITY:
            return False  # a straight line never encloses three regions; solidity >= fill; skip the cost
        run_feats()
        if f["holes"] < NETWORK_MIN_HOLES:
            return False
        hull_feats()
        return f["solidity"] < NETWORK_MAX_SOLIDITY

    def curved() -> bool:
        if f["fill"] >= CURVED_MAX_SOLIDITY:
            return False  # solidity >= fill (the hull lies inside the bounding box): cannot be curved
        run_feats()
        if f["slenderness"] < CURVED_MIN_SLENDERNESS:
            return False
        hull_feats()
        return f["solidity"] < CURVED_MAX_SOLIDITY

    def thin() -> bool:
        run_feats()
        return f["thickness"] <= LINEAR_MAX_THICKNESS * min(h, w)

    def circular() -> bool:
        if elong >= CIRCULAR_MAX_ELONGATION:
            return False
        hull_feats()
        return f["roundness"] >= CIRCULAR_MIN_ROUNDNESS and f["solidity"] >= CIRCULAR_MIN_SOLIDITY

    if f["scale_ratio"] >= DIFFUSE_MIN_SCALE:
        shape = "diffuse"
    elif network():
        shape = "network-like"
    elif count >= FRAGMENTED_MIN_COMPONENTS and f["largest_ratio"] < FRAGMENTED_MAX_LARGEST:
        shape = "spot-like" if small_compact() else "fragmented"
    elif elong >= LINEAR_MIN_ELONGATION and thin():
        shape = "linear"
    elif curved():
        shape = "curved"
    elif elong >= ELONGATED_MIN_ELONGATION:
        shape = "elongated"
    elif circular():
        shape = "circular"
    elif small_compact():
        shape = "spot-like"
    else:
        hull_feats()
        shape = "patch-like" if f["solidity"] >= PATCH_MIN_SOLIDITY else "irregular"

    if shape in ("diffuse", "network-like"):
        direction = "none"
    elif shape == "fragmented":   # the pieces together are the defect
        direction = _pieces_direction(crop_labels, count)
        if direction == "none":
            mask_moments()
            direction = _direction_word(f["mask_elongation"], f["mask_angle"])
    elif elong >= ELONGATED_MIN_ELONGATION:
        direction = _direction_word(elong, angle)
    elif count < DIRECTION_MIN_PIECES:
        direction = "none"
    else:
        mask_moments()
        direction = _direction_word(f["mask_elongation"], f["mask_angle"])

    return {"Shape": shape, "Direction": direction, "Spatial Distribution": _distribution(count, f),
            "features": f}


def _distribution(count: int, f: Mapping[str, Any]) -> str:
    if count == 1 or f["largest_ratio"] >= ISOLATED_MIN_LARGEST:
        return "isolated"
    if f["extent"] <= CLUSTERED_MAX_EXTENT or f["union_fill"] >= CLUSTERED_MIN_UNION_FILL:
        return "clustered"
    return "scattered"


# ----------------------------------------------------------------------------------------------------------
# public entry points
# ----------------------------------------------------------------------------------------------------------
def _check_choice(value: str | None, allowed: tuple[str, ...], field: str) -> str | None:
    if value is None:
        return None
    if value not in allowed:
        raise ValueError(f"{field} {value!r} is not one of the authors' values: {', '.join(allowed)}")
    return value


def analyze(image: Any, mask: Any, class_name: str, *, shape: str | None = None, direction: str | None = None,
            distribution: str | None = None, resize_mask: bool = False, geometry: bool = True,
            full_features: bool = False) -> dict[str, Any]:
    """Everything at once: {"statistics", "attributes" (T3, release form), "t4", "geometry" (features)}.

    ``geometry=False`` skips the geometry rules (the three fields then take the authors' fallbacks unless given);
    ``full_features=True`` computes every geometry feature, not only those the rules needed.
    """
    if not isinstance(class_name, str) or not class_name.strip():
        raise ValueError(f"class_name must be a non-empty string, got {class_name!r}")
    shape = _check_choice(shape, SHAPES, "Shape")
    direction = _check_choice(direction, DIRECTIONS, "Direction")
    distribution = _check_choice(distribution, DISTRIBUTIONS, "Spatial Distribution")
    gray, m = load_pair(image, mask, resize_mask=resize_mask)
    stats, comps = _stats_from_arrays(gray, m)
    count = comps[2]
    position = compute_position(m)
    if geometry and (full_features or shape is None or direction is None or distribution is None):
        geo = compute_geometry(m, full=full_features, _components=comps)
    else:
        geo = {"Shape": FALLBACK_SHAPE, "Direction": FALLBACK_DIRECTION,
               "Spatial Distribution": FALLBACK_DISTRIBUTION, "features": {}}
    dist = distribution if distribution is not None else geo["Spatial Distribution"]
    if count == 1:
        dist = "isolated"
    rules = _rule_fields(stats, position)
    attrs = {
        "Defect type": class_name,
        "Shape": shape if shape is not None else geo["Shape"],
        "Direction": direction if direction is not None else geo["Direction"],
        "Spatial Distribution": dist,
        **rules,
    }
    attrs = {f: attrs[f] for f in T3_FIELDS}
    return {"statistics": stats, "attributes": attrs, "t4": render_t4(attrs), "geometry": geo["features"]}


def compute_attributes(image: Any, mask: Any, class_name: str, *, shape: str | None = None,
                       direction: str | None = None, distribution: str | None = None,
                       resize_mask: bool = False) -> dict[str, Any]:
    """The nine T3 fields in the release form (field order = sdx.data.levels.T3_FIELDS, Position [[cell, share], ...])."""
    return analyze(image, mask, class_name, shape=shape, direction=direction, distribution=distribution,
                   resize_mask=resize_mask)["attributes"]


def annotate(image: Any, mask: Any, class_name: str, **kw: Any) -> tuple[dict[str, Any], str]:
    """(T3 dict, T4 sentence) for one pair; keyword arguments as for ``compute_attributes``."""
    res = analyze(image, mask, class_name, **kw)
    return res["attributes"], res["t4"]


# ----------------------------------------------------------------------------------------------------------
# folder tools: annotate a folder of images + masks, verify a release against its masks
# ----------------------------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MISSING_MASK_CHOICES = ("keep", "skip", "error")


def _progress(iterable, total: int, desc: str, quiet: bool):
    if quiet:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="image")


def _map(func, jobs: list, workers: int, desc: str, quiet: bool) -> list:
    """Ordered map over jobs with a progress bar; ``workers > 1`` uses a process pool."""
    if workers and workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        with mp.get_context().Pool(workers) as pool:
            chunk = max(1, min(64, len(jobs) // (workers * 8) or 1))
            return list(_progress(pool.imap(func, jobs, chunksize=chunk), len(jobs), desc, quiet))
    return [func(job) for job in _progress(jobs, len(jobs), desc, quiet)]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _canonical_class(name: str) -> str | None:
    """A class name, a file prefix or a case-insensitive class name -> the canonical class name (else None)."""
    from sdx.data.levels import PREFIX_TO_CLASS
    if name in CLASS_NAMES:
        return name
    if name in PREFIX_TO_CLASS:
        return PREFIX_TO_CLASS[name]
    lowered = {c.lower(): c for c in CLASS_NAMES}
    return lowered.get(name.strip().lower().replace("_", " "))


def class_from_prefix(file_name: str) -> str | None:
    """Class of an official file name ``<prefix>_<n>.<ext>``: the longest case-sensitive prefix + "_" match."""
    from sdx.data.levels import PREFIX_TO_CLASS
    hits = [p for p in PREFIX_TO_CLASS if file_name.startswith(p + "_")]
    return PREFIX_TO_CLASS[max(hits, key=len)] if hits else None


def read_labels_csv(path: str | os.PathLike) -> dict[str, str]:
    """{image_name: class_name} from a CSV with a header containing image_name and class_name."""
    import csv
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if "image_name" not in cols or "class_name" not in cols:
                raise ValueError(f"labels file {path}: needs a header with the columns image_name,class_name "
                                 f"(found {', '.join(cols) or 'no header'})")
            labels: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                name, cls = (row.get("image_name") or "").strip(), (row.get("class_name") or "").strip()
                if not name or not cls:
                    raise ValueError(f"labels file {path}, line {line}: empty image_name or class_name")
                if name in labels and labels[name] != cls:
                    raise ValueError(f"labels file {path}, line {line}: {name} labelled twice "
                                     f"({labels[name]!r} and {cls!r})")
                labels[name] = cls
    except UnicodeDecodeError as exc:
        raise ValueError(f"labels file {path} is not UTF-8 text: {exc}") from exc
    return labels


def read_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """{image_name: T2} from a records file in the official schema (a list of records with image_name and
    natural_language_description) or from a plain {image_name: text} object."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"descriptions file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"descriptions file {path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        bad = [k for k, v in data.items() if not isinstance(v, str)]
        if bad:
            raise ValueError(f"descriptions file {path}: value of {bad[0]!r} is not a string")
        return dict(data)
    if isinstance(data, list):
        out = {}
        for i, rec in enumerate(data):
            if not isinstance(rec, dict) or "image_name" not in rec:
                raise ValueError(f"descriptions file {path}: record {i} has no image_name")
            text = rec.get("natural_language_description") or ""
            if not isinstance(text, str):
                raise ValueError(f"descriptions file {path}: record {i} ({rec['image_name']}) "
                                 f"natural_language_description is not a string")
            out[str(rec["image_name"])] = text
        return out
    raise ValueError(f"descriptions file {path}: expected a list of records or an object, got {type(data).__name__}")


def _find_mask(mask_dir: Path, stem: str, sub: str | None) -> Path | None:
    for folder in ([mask_dir / sub] if sub else []) + [mask_dir]:
        cand = folder / f"{stem}.png"
        if cand.is_file():
            return cand
        for ext in IMAGE_EXTENSIONS:
            for e in (ext, ext.upper()):
                cand = folder / f"{stem}{e}"
                if cand.is_file():
                    return cand
    return None


def _scan_folder(image_dir: Path, mask_dir: Path, labels: dict[str, str] | None) -> tuple[list[dict], str]:
    """[{image, name, class_name, mask}] and the labelling mode used ("csv", "folders" or "prefix")."""
    if not image_dir.is_dir():
        raise ValueError(f"image folder not found: {image_dir}")
    if not mask_dir.is_dir():
        raise ValueError(f"mask folder not found: {mask_dir}")
    top = sorted(p for p in image_dir.iterdir() if _is_image(p))
    subdirs = sorted(p for p in image_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries: list[tuple[Path, str | None]] = [(p, None) for p in top]
    if not top and subdirs:
        entries = [(p, d.name) for d in subdirs for p in sorted(d.iterdir()) if _is_image(p)]
    if not entries:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir} or its class sub-folders")
    mode = "csv" if labels is not None else ("folders" if entries[0][1] is not None else "prefix")
    seen: dict[str, Path] = {}
    items = []
    for path, sub in entries:
        if path.name in seen:
            raise ValueError(f"image name {path.name} occurs twice: {seen[path.name]} and {path} "
                             f"(records are keyed by file name)")
        seen[path.name] = path
        if mode == "csv":
            cls = labels.get(path.name)
            if cls is None:
                raise ValueError(f"image {path} has no row in the labels CSV")
        elif mode == "folders":
            cls = _canonical_class(sub) or sub
        else:
            cls = class_from_prefix(path.name)
            if cls is None:
                raise ValueError(f"image {path}: no class -- the file name starts with no known prefix "
                                 f"(<prefix>_<n>, case-sensitive); give --labels CSV or class sub-folders")
        items.append({"image": path, "name": path.name, "class_name": cls,
                      "mask": _find_mask(mask_dir, path.stem, sub)})
    if labels is not None:
        extra = sorted(set(labels) - set(seen))
        if extra:
            log.warning("%d labels CSV rows name no image in %s (first: %s)", len(extra), image_dir, extra[0])
    return items, mode


def _annotate_job(job: tuple) -> dict:
    image, mask, cls, t2, fallback, resize = job
    rec = {"image_name": Path(image).name, "class_name": cls, "natural_language_description": t2,
           "structured_attributes": None, "template_sentence": ""}
    if mask is None:
        return {"record": rec, "status": "no_mask"}
    try:
        kw = {"shape": FALLBACK_SHAPE, "direction": FALLBACK_DIRECTION,
              "distribution": FALLBACK_DISTRIBUTION} if fallback else {}
        res = analyze(image, mask, cls, resize_mask=resize, geometry=not fallback, **kw)
    except ValueError as exc:
        return {"record": rec, "status": "error", "error": str(exc)}
    rec["structured_attributes"] = res["attributes"]
    rec["template_sentence"] = res["t4"]
    if res["statistics"]["component_count"] == 0:
        # values only in 1..127 (e.g. a 0/1 label mask): empty under the > 127 rule, but Position is not
        return {"record": rec, "status": "faint_mask" if res["attributes"]["Position"] else "empty_mask"}
    return {"record": rec, "status": "ok"}


def annotate_folder(image_dir: str | os.PathLike, mask_dir: str | os.PathLike, output: str | os.PathLike, *,
                    labels: str | os.PathLike | None = None, descriptions: str | os.PathLike | None = None,
                    workers: int = 1, missing_mask: str = "keep", on_error: str = "raise",
                    fallback_fields: bool = False, resize_mask: bool = False, quiet: bool = False) -> dict:
    """Annotate a folder of images and masks into records in the official schema (see register_cli's help).

    Labels: ``labels`` CSV (image_name,class_name) if given, else class sub-folders of ``image_dir`` (folder
    name = class name, file prefix or case-insensitive class name), else the file-name prefix (longest
    case-sensitive ``<prefix>_`` match, sdx.data.levels.PREFIX_TO_CLASS). Masks: ``<mask_dir>/<stem>.png`` (or any
    image extension; in sub-folder mode ``<mask_dir>/<class folder>/<stem>.png`` first).

    Images without a mask (``missing_mask``): "keep" writes the record with structured_attributes null and
    template_sentence "" (as the release does for images without fine annotation), "skip" leaves the image
    out, "error" raises. Either way they are counted in the summary. Unreadable pairs: ``on_error="raise"``
    raises ValueError naming the file, "skip" leaves them out and lists them. Empty masks are annotated with
    the authors' values (module docstring) and counted (``empty_masks``; ``faint_masks`` counts those with
    values only in 1..127, e.g. 0/1 label masks, which are empty under the > 127 rule, with a warning).
    Returns a summary dict; the records are written as a JSON list to ``output``.
    """
    if missing_mask not in MISSING_MASK_CHOICES:
        raise ValueError(f"missing_mask must be one of {MISSING_MASK_CHOICES}, got {missing_mask!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    image_dir, mask_dir, output = Path(image_dir), Path(mask_dir), Path(output)
    label_map = read_labels_csv(labels) if labels else None
    t2_map = read_descriptions(descriptions) if descriptions else {}
    items, mode = _scan_folder(image_dir, mask_dir, label_map)
    no_mask = [it for it in items if it["mask"] is None]
    if no_mask and missing_mask == "error":
        raise ValueError(f"{len(no_mask)} image(s) have no mask in {mask_dir}, first: {no_mask[0]['image']} "
                         f"(expected {mask_dir / (no_mask[0]['image'].stem + '.png')}); use --missing_mask "
                         f"keep|skip")
    if missing_mask == "skip":
        items = [it for it in items if it["mask"] is not None]
    jobs = [(str(it["image"]), None if it["mask"] is None else str(it["mask"]), it["class_name"],
             t2_map.get(it["name"], ""), fallback_fields, resize_mask) for it in items]
    results = _map(_annotate_job, jobs, workers, "annotate", quiet)
    records, errors = [], []
    status = collections.Counter()
    for res in results:
        status[res["status"]] += 1
        if res["status"] == "error":
            if on_error == "raise":
                raise ValueError(res["error"])
            errors.append(res["error"])
            continue
        records.append(res["record"])
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(output)
    unknown = sorted({r["class_name"] for r in records} - set(CLASS_NAMES))
    summary = {
        "output": str(output), "labels_from": mode, "images": len(items) + (len(no_mask) if missing_mask == "skip"
                                                                            else 0),
        "records": len(records), "annotated": status["ok"] + status["empty_mask"] + status["faint_mask"],
        "empty_masks": status["empty_mask"] + status["faint_mask"], "faint_masks": status["faint_mask"],
        "no_mask": len(no_mask),
        "no_mask_action": missing_mask, "errors": errors,
        "with_description": sum(1 for r in records if r["natural_language_description"]),
        "classes": dict(collections.Counter(r["class_name"] for r in records)),
        "unknown_classes": unknown,
    }
    if unknown:
        log.warning("class names not among the 25 SteelDefectX classes: %s", ", ".join(unknown))
    if status["faint_mask"]:
        log.warning("%d mask(s) have values only in 1..127 (0/1 label masks?): no pixel passes the > 127 rule, "
                    "so they were annotated as empty masks; save masks as 0/255", status["faint_mask"])
    return summary


def _same_field(field: str, want: Any, got: Any) -> bool:
    if field != "Position":
        return want == got
    try:
        return len(want) == len(got) and all(
            str(a[0]) == b[0] and abs(float(a[1]) - b[1]) <= 1e-6 for a, b in zip(want, got))
    except (TypeError, ValueError, IndexError):
        return False


def _verify_job(job: tuple) -> dict:
    image, mask, rec = job
    sa = rec.get("structured_attributes")
    out: dict[str, Any] = {"image_name": rec.get("image_name"), "status": "ok", "mismatch": {}}
    if not isinstance(sa, dict):
        out["status"] = "no_attributes"
        return out
    if mask is None:
        out["status"] = "no_mask"
        return out
    try:
        res = analyze(image, mask, rec.get("class_name") or "?", geometry=False)
    except ValueError as exc:
        out["status"] = "unreadable"
        out["error"] = str(exc)
        return out
    got = res["attributes"]
    for field in RULE_FIELDS:
        if field not in sa or not _same_field(field, sa[field], got[field]):
            out["mismatch"][field] = {"release": sa.get(field, "<missing>"), "computed": got[field]}
    if sa.get("Defect type") != rec.get("class_name"):
        out["mismatch"]["Defect type"] = {"release": sa.get("Defect type"), "computed": rec.get("class_name")}
    try:
        t4 = render_t4(sa)
    except (KeyError, TypeError, IndexError):
        t4 = None
    if rec.get("template_sentence") != t4:
        out["mismatch"]["template_sentence"] = {"release": rec.get("template_sentence"), "computed": t4}
    return out


VERIFY_COLUMNS = RULE_FIELDS + ("Defect type", "template_sentence")


def verify_release(data_dir: str | os.PathLike, *, splits: list[str] | None = None, workers: int = 1,
                   quiet: bool = False, examples: int = 5) -> dict:
    """Recompute the rule-based T3 fields of every ``<split>-text.json`` in ``data_dir`` from its masks.

    For each split file: image ``<split>/<image_name>``, mask ``<split>_mask/<stem>.png``. Compared per record:
    Number of Defects, Position (cells, order, shares to 1e-6), Scale, Polarity, Saliency; also "Defect type"
    against class_name and template_sentence against the authors' template of the record's own T3.
    Records without structured_attributes, without a mask file, or whose image/mask cannot be read are counted
    as unverifiable (never dropped silently). Returns {"files": {name: {...}}, "total": {...}}.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder not found: {data_dir}")
    files = sorted(data_dir.glob("*-text.json"))
    if splits:
        files = [data_dir / f"{s}-text.json" for s in splits]
    if not files:
        raise ValueError(f"no <split>-text.json files in {data_dir}")
    report: dict[str, Any] = {"files": {}, "total": {}}
    total = collections.Counter()
    total_mm = collections.Counter()
    for path in files:
        split = path.name[: -len("-text.json")]
        if not path.is_file():
            raise ValueError(f"text file not found: {path}")
        try:
            recs = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(recs, list):
            raise ValueError(f"{path}: expected a list of records, got {type(recs).__name__}")
        jobs = []
        for i, rec in enumerate(recs):
            if not isinstance(rec, dict) or not isinstance(rec.get("image_name"), str):
                raise ValueError(f"{path}: record {i} has no image_name")
            stem = Path(rec["image_name"]).stem
            mask = data_dir / f"{split}_mask" / f"{stem}.png"
            jobs.append((str(data_dir / split / rec["image_name"]), str(mask) if mask.is_file() else None, rec))
        results = _map(_verify_job, jobs, workers, f"verify {path.name}", quiet)
        status = collections.Counter(r["status"] for r in results)
        mism = collections.Counter(f for r in results for f in r["mismatch"])
        bad = [r for r in results if r["mismatch"]]
        entry = {
            "records": len(recs), "verified": status["ok"], "no_attributes": status["no_attributes"],
            "no_mask": status["no_mask"], "unreadable": status["unreadable"],
            "records_with_mismatch": len(bad),
            "mismatches": {f: mism.get(f, 0) for f in VERIFY_COLUMNS},
            "examples": [{"image_name": r["image_name"], **r["mismatch"]} for r in bad[:examples]],
            "unreadable_files": [r["error"] for r in results if r["status"] == "unreadable"][:examples],
        }
        report["files"][path.name] = entry
        total.update({k: entry[k] for k in ("records", "verified", "no_attributes", "no_mask", "unreadable",
                                            "records_with_mismatch")})
        total_mm.update(mism)
    report["total"] = {**{k: total.get(k, 0) for k in ("records", "verified", "no_attributes", "no_mask",
                                                        "unreadable", "records_with_mismatch")},
                       "mismatches": {f: total_mm.get(f, 0) for f in VERIFY_COLUMNS}}
    return report


def format_verify(report: dict) -> str:
    """The verify report as a fixed-width table (one row per file and a total row)."""
    short = {"Number of Defects": "Number", "Position": "Position", "Scale": "Scale", "Polarity": "Polarity",
             "Saliency": "Saliency", "Defect type": "Type", "template_sentence": "T4"}
    head = ["file", "records", "verified", "no T3", "no mask", "unreadable"] + [short[f] for f in VERIFY_COLUMNS]
    rows = [head]
    for name, e in list(report["files"].items()) + [("TOTAL", report["total"])]:
        rows.append([name, e["records"], e["verified"], e["no_attributes"], e["no_mask"], e["unreadable"]]
                    + [e["mismatches"][f] for f in VERIFY_COLUMNS])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ["  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("(mismatch counts per field; verified = records recomputed from image + mask)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# CLI (registered on steeldefectx.py by register_cli)
# ----------------------------------------------------------------------------------------------------------
def annotate_main(args: argparse.Namespace) -> dict:
    summary = annotate_folder(args.image_dir, args.mask_dir, args.output, labels=args.labels,
                              descriptions=args.descriptions, workers=args.workers, missing_mask=args.missing_mask,
                              on_error=args.on_error, fallback_fields=args.fallback_fields,
                              resize_mask=args.resize_mask, quiet=args.quiet)
    print(f"wrote {summary['records']} records to {summary['output']} (labels from {summary['labels_from']}): "
          f"{summary['annotated']} annotated, {summary['empty_masks']} with an empty mask, "
          f"{summary['no_mask']} without a mask ({summary['no_mask_action']}), {len(summary['errors'])} skipped "
          f"as unreadable")
    for err in summary["errors"][:10]:
        print(f"  skipped: {err}")
    return summary


def verify_main(args: argparse.Namespace) -> dict:
    report = verify_release(args.data_dir, splits=args.splits, workers=args.workers, quiet=args.quiet)
    print(format_verify(report))
    for name, e in report["files"].items():
        for ex in e["examples"]:
            fields = {k: v for k, v in ex.items() if k != "image_name"}
            print(f"  {name}: {ex['image_name']}: " + "; ".join(
                f"{k}: release {v['release']!r} vs computed {v['computed']!r}" for k, v in fields.items()))
        for err in e["unreadable_files"]:
            print(f"  {name}: unreadable: {err}")
    if args.fail_on_mismatch and report["total"]["records_with_mismatch"]:
        raise ValueError(f"{report['total']['records_with_mismatch']} record(s) disagree with their masks "
                         f"in {args.data_dir}")
    return report


def register_cli(subparsers: Any) -> None:
    """Add the ``annotate`` and ``verify`` subcommands (func returns the summary / report dict)."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser(
        "annotate", formatter_class=fmt,
        help="compute T3/T4 for a folder of images and masks and write records in the official schema",
        description="Annotate a folder of images and masks with the SteelDefectX T3 structured attributes and "
                    "the T4 template sentence (five rule fields exactly as the authors' scripts; Shape, "
                    "Direction and Spatial Distribution from mask geometry, or the authors' fallbacks with "
                    "--fallback_fields). Labels come from --labels, else class sub-folders of --image_dir, else "
                    "the official file-name prefixes (<prefix>_<n>.jpg). Masks: <mask_dir>/<stem>.png.")
    p.add_argument("--image_dir", required=True, help="folder of images (flat, or one sub-folder per class)")
    p.add_argument("--mask_dir", required=True, help="folder of masks named <image stem>.png")
    p.add_argument("--labels", default=None, metavar="CSV", help="CSV with columns image_name,class_name")
    p.add_argument("--descriptions", default=None, metavar="JSON",
                   help="T2 source: records in the official schema or {image_name: text}; T2 is '' otherwise")
    p.add_argument("--output", required=True, metavar="FILE.json", help="records file to write")
    p.add_argument("--workers", type=int, default=1, help="processes (1 = in-process)")
    p.add_argument("--missing_mask", choices=MISSING_MASK_CHOICES, default="keep",
                   help="image without a mask: keep its record with null T3 and empty T4, skip it, or error")
    p.add_argument("--on_error", choices=("raise", "skip"), default="raise",
                   help="unreadable image/mask or size mismatch: stop with an error naming the file, or skip it")
    p.add_argument("--fallback_fields", action="store_true",
                   help="Shape/Direction/Spatial Distribution = the authors' fallbacks (unclear/none/"
                        "isolated-or-unclear) instead of mask geometry")
    p.add_argument("--resize_mask", action="store_true",
                   help="resize a mask of another size to its image (nearest) instead of raising")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=annotate_main)

    v = subparsers.add_parser(
        "verify", formatter_class=fmt,
        help="recompute the rule-based T3 fields of a release from its masks and report mismatches",
        description="For every <split>-text.json in --data_dir, recompute Number of Defects, Position, Scale, "
                    "Polarity and Saliency from <split>/<image> and <split>_mask/<stem>.png, and check Defect "
                    "type and the T4 template. Prints mismatch counts per field and per file; records without "
                    "T3, without a mask or with unreadable files are counted as unverifiable.")
    v.add_argument("--data_dir", required=True, help="folder in the official SteelDefectX layout")
    v.add_argument("--splits", nargs="+", default=None, help="only these splits (default: every *-text.json)")
    v.add_argument("--workers", type=int, default=1, help="processes (1 = in-process)")
    v.add_argument("--fail_on_mismatch", action="store_true", help="exit with an error when anything disagrees")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=verify_main)
