"""Shape, Direction and Spatial Distribution of a defect from its mask's geometry (docs/annotation.md).

The authors had a language model infer these three T3 fields from the T2 text; here they follow from the
binary mask (> 127) and its 8-connected components, within the authors' value sets. Every threshold below is
a named constant; the rules and the features they read are specified in docs/annotation.md.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Mapping, NamedTuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from sdx.annotate.images import load_mask_array

__all__ = ["BINARY_THRESHOLD", "Components", "label_components", "compute_geometry", "axis_direction",
           "FALLBACK_SHAPE",
           "FALLBACK_DIRECTION", "FALLBACK_DISTRIBUTION"]

BINARY_THRESHOLD = 127          # mask > 127 is defect (statistics, components, geometry)
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
# The authors' fallbacks when the language model gave nothing usable.
FALLBACK_SHAPE = "unclear"
FALLBACK_DIRECTION = "none"
FALLBACK_DISTRIBUTION = "unclear"

# Thresholds of the geometry rules (specified in docs/annotation.md; change them there too).
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


class Components(NamedTuple):
    """The 8-connected components of a binary mask, labelled on the union bounding box only."""

    binary: np.ndarray                          # mask > BINARY_THRESHOLD, full size
    labels: np.ndarray                          # labels of binary[y0:y1, x0:x1] (empty when count == 0)
    count: int
    sizes: np.ndarray | None                    # pixels per label (index 0: background) when count > 1
    bbox: tuple[int, int, int, int] | None      # (y0, y1, x0, x1) of all components; None when count == 0


def union_bbox(binary: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), end exclusive, of the pixels of a non-empty bool array."""
    rows_any, cols_any = binary.any(axis=1), binary.any(axis=0)
    h, w = binary.shape
    return (int(rows_any.argmax()), h - int(rows_any[::-1].argmax()),
            int(cols_any.argmax()), w - int(cols_any[::-1].argmax()))


def label_components(binary: np.ndarray) -> Components:
    """8-connected components of a bool mask (scipy.ndimage.label with a 3x3 structure of ones)."""
    if not binary.any():
        return Components(binary, np.zeros((0, 0), np.int32), 0, None, None)
    # labelling the union bounding box only gives the same components (same numbering) at a fraction of the cost
    bbox = union_bbox(binary)
    labels, count = ndimage.label(binary[bbox[0]:bbox[1], bbox[2]:bbox[3]], structure=EIGHT_CONNECTED)
    sizes = np.bincount(labels[labels > 0], minlength=count + 1) if count > 1 else None
    return Components(binary, labels, int(count), sizes, bbox)


# ----------------------------------------------------------------------------------------------------------
# features (vectorised: no per-pixel Python loop)
# ----------------------------------------------------------------------------------------------------------
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


def axis_direction(angle: float) -> str:
    """The Direction of an axis at ``angle`` degrees from the horizontal (0..90): horizontal, vertical, diagonal."""
    if angle < DIAGONAL_BAND[0]:
        return "horizontal"
    if angle > DIAGONAL_BAND[1]:
        return "vertical"
    return "diagonal"


def _direction_word(elong: float, angle: float) -> str:
    return "none" if elong < ELONGATED_MIN_ELONGATION else axis_direction(angle)


class _Features:
    """The features of a mask and of its dominant (largest) component D; the costlier ones (hull, runs and
    holes, whole-mask moments) are computed on first use, all of them with ``full=True``."""

    def __init__(self, comps: Components, sub: np.ndarray, total: float, full: bool):
        y0, y1, x0, x1 = comps.bbox
        h, w = comps.binary.shape
        n = comps.binary.size
        area, _, _, self.elong, self.angle = _moments(sub)
        self.comps, self.sub, self.area = comps, sub, area
        self.min_side = min(h, w)
        self.rect = area == sub.size   # D is exactly its bounding rectangle (NEU-DET box masks): closed forms
        self.f: dict[str, Any] = {
            "scale_ratio": total / n,
            "component_count": comps.count,
            "largest_ratio": area / total,
            "extent": max((y1 - y0) / h, (x1 - x0) / w),
            "area_ratio": area / n,
            "elongation": self.elong,
            "angle": self.angle,
            "fill": area / float(sub.shape[0] * sub.shape[1]),
            "union_fill": total / float((y1 - y0) * (x1 - x0)),
        }
        if full:
            self.hull()
            self.runs()
            self.mask_moments()

    def hull(self) -> None:
        """solidity and roundness (of D's convex hull)."""
        if "solidity" not in self.f:
            sub = self.sub
            hull_area, hull_perim = (float(sub.size), 2.0 * (sub.shape[0] + sub.shape[1])) if self.rect \
                else _hull(sub)
            self.f["solidity"] = min(self.area / hull_area, 1.0)
            self.f["roundness"] = 4 * math.pi * hull_area / (hull_perim * hull_perim)

    def runs(self) -> None:
        """thickness, slenderness and holes (of D)."""
        if "holes" not in self.f:
            h_runs, v_runs, euler = (self.sub.shape[0], self.sub.shape[1], 1) if self.rect \
                else _runs_and_euler(self.sub)
            thickness = min(self.area / max(h_runs, 1), self.area / max(v_runs, 1))
            self.f["thickness"] = thickness
            self.f["slenderness"] = self.area / (thickness * thickness)
            self.f["holes"] = 1 - euler

    def mask_moments(self) -> None:
        """elongation and angle of the whole mask."""
        if "mask_elongation" not in self.f:
            if self.comps.count == 1:
                self.f["mask_elongation"], self.f["mask_angle"] = self.elong, self.angle
            else:
                y0, y1, x0, x1 = self.comps.bbox
                _, _, _, self.f["mask_elongation"], self.f["mask_angle"] = _moments(self.comps.binary[y0:y1, x0:x1])


def _dominant(comps: Components) -> tuple[np.ndarray, float]:
    """(bool crop of the dominant component D to its bounding box, mask area)."""
    y0, y1, x0, x1 = comps.bbox
    if comps.count == 1:
        sub = comps.binary[y0:y1, x0:x1]
        return sub, float(np.count_nonzero(sub))
    sizes = comps.sizes.copy()
    sizes[0] = 0
    dom = comps.labels == int(sizes.argmax())
    d0, d1, e0, e1 = union_bbox(dom)
    return dom[d0:d1, e0:e1], float(sizes.sum())


# ----------------------------------------------------------------------------------------------------------
# rules (first match wins; docs/annotation.md)
# ----------------------------------------------------------------------------------------------------------
def _small_compact(ft: _Features) -> bool:
    if ft.f["area_ratio"] >= SPOT_MAX_AREA or ft.elong >= ELONGATED_MIN_ELONGATION:
        return False
    ft.hull()
    return ft.f["solidity"] >= SPOT_MIN_SOLIDITY


def _network(ft: _Features) -> bool:
    if ft.elong >= LINEAR_MIN_ELONGATION or ft.f["fill"] >= NETWORK_MAX_SOLIDITY:
        return False  # a straight line never encloses three regions; solidity >= fill; skip the cost
    ft.runs()
    if ft.f["holes"] < NETWORK_MIN_HOLES:
        return False
    ft.hull()
    return ft.f["solidity"] < NETWORK_MAX_SOLIDITY


def _curved(ft: _Features) -> bool:
    if ft.f["fill"] >= CURVED_MAX_SOLIDITY:
        return False  # solidity >= fill (the hull lies inside the bounding box): cannot be curved
    ft.runs()
    if ft.f["slenderness"] < CURVED_MIN_SLENDERNESS:
        return False
    ft.hull()
    return ft.f["solidity"] < CURVED_MAX_SOLIDITY


def _thin(ft: _Features) -> bool:
    ft.runs()
    return ft.f["thickness"] <= LINEAR_MAX_THICKNESS * ft.min_side


def _circular(ft: _Features) -> bool:
    if ft.elong >= CIRCULAR_MAX_ELONGATION:
        return False
    ft.hull()
    return ft.f["roundness"] >= CIRCULAR_MIN_ROUNDNESS and ft.f["solidity"] >= CIRCULAR_MIN_SOLIDITY


def _shape(ft: _Features) -> str:
    f, elong = ft.f, ft.elong
    if f["scale_ratio"] >= DIFFUSE_MIN_SCALE:
        return "diffuse"
    if _network(ft):
        return "network-like"
    if ft.comps.count >= FRAGMENTED_MIN_COMPONENTS and f["largest_ratio"] < FRAGMENTED_MAX_LARGEST:
        return "spot-like" if _small_compact(ft) else "fragmented"
    if elong >= LINEAR_MIN_ELONGATION and _thin(ft):
        return "linear"
    if _curved(ft):
        return "curved"
    if elong >= ELONGATED_MIN_ELONGATION:
        return "elongated"
    if _circular(ft):
        return "circular"
    if _small_compact(ft):
        return "spot-like"
    ft.hull()
    return "patch-like" if f["solidity"] >= PATCH_MIN_SOLIDITY else "irregular"


def _mask_direction(ft: _Features) -> str:
    ft.mask_moments()
    return _direction_word(ft.f["mask_elongation"], ft.f["mask_angle"])


def _direction(ft: _Features, shape: str) -> str:
    if shape in ("diffuse", "network-like"):
        return "none"
    if shape == "fragmented":   # the pieces together are the defect
        direction = _pieces_direction(ft.comps.labels, ft.comps.count)
        return _mask_direction(ft) if direction == "none" else direction
    if ft.elong >= ELONGATED_MIN_ELONGATION:
        return _direction_word(ft.elong, ft.angle)
    if ft.comps.count < DIRECTION_MIN_PIECES:
        return "none"
    return _mask_direction(ft)


def _distribution(count: int, f: Mapping[str, Any]) -> str:
    if count == 1 or f["largest_ratio"] >= ISOLATED_MIN_LARGEST:
        return "isolated"
    if f["extent"] <= CLUSTERED_MAX_EXTENT or f["union_fill"] >= CLUSTERED_MIN_UNION_FILL:
        return "clustered"
    return "scattered"


def compute_geometry(mask: Any, *, full: bool = False, components: Components | None = None) -> dict[str, Any]:
    """Shape, Direction and Spatial Distribution from mask geometry, within the authors' value sets.

    ``mask``: a path, PIL image or array (binarised at > 127), or ``components`` already labelled (as the
    statistics do). Returns ``{"Shape", "Direction", "Spatial Distribution", "features": {...}}``; the costlier
    features are computed only when a rule needs them (a diffuse mask gets only the mask-level ones), all of
    them with ``full=True``. Features and rules: docs/annotation.md.
    """
    if components is None:
        m = mask if isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.ndim == 2 \
            else load_mask_array(mask)
        components = label_components(m > BINARY_THRESHOLD)
    comps = components
    if comps.count == 0:
        return {"Shape": FALLBACK_SHAPE, "Direction": FALLBACK_DIRECTION,
                "Spatial Distribution": FALLBACK_DISTRIBUTION, "features": {"component_count": 0}}
    sub, total = _dominant(comps)
    if total / comps.binary.size >= DIFFUSE_MIN_SCALE and not full:
        # "diffuse" needs no outline feature: only the distribution is still to decide
        (y0, y1, x0, x1), (h, w) = comps.bbox, comps.binary.shape
        f = {"scale_ratio": total / comps.binary.size, "component_count": comps.count,
             "largest_ratio": float(np.count_nonzero(sub)) / total,
             "extent": max((y1 - y0) / h, (x1 - x0) / w), "union_fill": total / float((y1 - y0) * (x1 - x0))}
        return {"Shape": "diffuse", "Direction": "none", "Spatial Distribution": _distribution(comps.count, f),
                "features": f}
    ft = _Features(comps, sub, total, full)
    shape = _shape(ft)
    direction = _direction(ft, shape)
    return {"Shape": shape, "Direction": direction, "Spatial Distribution": _distribution(comps.count, ft.f),
            "features": ft.f}
