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

__all__ = ["BINARY_THRESHOLD", "Components", "Grid", "merge", "label_components", "label_stack", "compute_geometry",
           "axis_direction", "FALLBACK_SHAPE", "FALLBACK_DIRECTION", "FALLBACK_DISTRIBUTION"]

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
SHARED_MAX_WIDTH = 128          # a merged box at most this wide and with at most SHARED_MAX_CELLS cells is labelled
SHARED_MAX_CELLS = 4096         # on one canvas with the stack's other small boxes; larger ones alone
DIRECTION_MIN_PIECES = 3         # a row of >= 3 pieces gives a direction even when each piece is compact
DIAGONAL_BAND = (22.5, 67.5)     # orientation (degrees from horizontal): < 22.5 horizontal, > 67.5 vertical

# Gray's bit-quad tables: index = a + 2b + 4c + 8d over every 2x2 window (a b / c d)
_Q1 = np.zeros(16, np.int64)
_Q1[[1, 2, 4, 8]] = 1
_Q3 = np.zeros(16, np.int64)
_Q3[[7, 11, 13, 14]] = 1
_QD = np.zeros(16, np.int64)
_QD[[6, 9]] = 1          # (b, c) and (a, d): the two diagonal pairs


class Grid(NamedTuple):
    """A bool crop with each run of equal consecutive rows, and of equal consecutive columns, merged into one:
    cell (i, j) stands for ``rows[i]`` x ``cols[j]`` pixels of the crop. Merging keeps 8-connected components
    (and their raster order), 4-connected background regions and so the Euler number, so labels, sizes, runs and
    holes are computed on the cells (a box mask merges to a handful of cells); ``expand`` gives the crop back."""

    cells: np.ndarray        # bool (u, v)
    rows: np.ndarray         # int64 (u,): crop rows per cell row
    cols: np.ndarray         # int64 (v,): crop columns per cell column

    def expand(self) -> np.ndarray:
        return np.repeat(np.repeat(self.cells, self.rows, axis=0), self.cols, axis=1)

    def area(self) -> int:
        return int(self.rows @ self.cells @ self.cols)


def _lengths(starts: np.ndarray, n: int) -> np.ndarray:
    """Lengths of the runs of a line of ``n`` that begin at ``starts`` (ascending, from 0)."""
    lengths = np.empty_like(starts)
    lengths[:-1] = starts[1:] - starts[:-1]
    lengths[-1] = n - starts[-1]
    return lengths


def _merge_rows(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the rows of a bool array with each run of equal consecutive rows kept once, the runs' lengths)."""
    h = binary.shape[0]
    new_row = np.empty(h, bool)
    new_row[0] = True
    np.any(binary[1:] != binary[:-1], axis=1, out=new_row[1:])
    return binary[new_row], _lengths(np.flatnonzero(new_row), h)


def _merge_columns(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the columns of a bool array with each run of equal consecutive columns kept once, the runs' lengths)."""
    w = rows.shape[1]
    new_col = np.empty(w, bool)
    new_col[0] = True
    np.any(rows[:, 1:] != rows[:, :-1], axis=0, out=new_col[1:])
    col_idx = np.flatnonzero(new_col)
    return rows[:, col_idx], _lengths(col_idx, w)     # integer columns gather faster than a bool mask


def merge(binary: np.ndarray) -> Grid:
    """The merged ``Grid`` of a bool array."""
    rows, row_len = _merge_rows(binary)
    cells, col_len = _merge_columns(rows)
    return Grid(cells, row_len, col_len)


class Components:
    """The 8-connected components of a binary mask (``label_components``), labelled on the merged ``Grid`` of
    its union bounding box; full-resolution labels and component crops are expanded on demand."""

    def __init__(self, binary: np.ndarray, grid: Grid | None = None, cell_labels: np.ndarray | None = None,
                 count: int = 0, bbox: tuple[int, int, int, int] | None = None):
        self.binary = binary            # mask > BINARY_THRESHOLD, full size
        self.grid = grid                # the union bounding box, merged (None when count == 0)
        self.cell_labels = cell_labels  # labels of grid.cells
        self.count = count
        self.bbox = bbox                # (y0, y1, x0, x1) of all components, end exclusive; None when count == 0
        self.sizes = None               # pixels per label (index 0: 0) when count > 1
        self.area = 0                   # pixels of all components
        if count > 1:
            weights = np.multiply.outer(grid.rows, grid.cols).ravel()
            self.sizes = np.bincount(cell_labels.ravel(), weights, count + 1).astype(np.int64)
            self.sizes[0] = 0
            self.area = int(self.sizes.sum())
        elif count == 1:
            self.area = grid.area()

    @property
    def labels(self) -> np.ndarray:
        """Labels of binary[y0:y1, x0:x1] (empty when count == 0)."""
        if self.count == 0:
            return np.zeros((0, 0), np.int32)
        return np.repeat(np.repeat(self.cell_labels, self.grid.rows, axis=0), self.grid.cols, axis=1)

    def component(self, label: int) -> Grid:
        """One component, cropped to its own bounding box."""
        eq = self.cell_labels == label
        r, c = np.flatnonzero(eq.any(axis=1)), np.flatnonzero(eq.any(axis=0))
        r0, r1, c0, c1 = r[0], r[-1] + 1, c[0], c[-1] + 1
        return Grid(eq[r0:r1, c0:c1], self.grid.rows[r0:r1], self.grid.cols[c0:c1])


def label_components(binary: np.ndarray) -> Components:
    """8-connected components of a bool mask (``label_stack`` of a stack of one)."""
    return label_stack(binary[None])[0]


def label_stack(binary: np.ndarray) -> list[Components]:
    """8-connected components of each bool mask of an (N, H, W) stack, as scipy.ndimage.label with a 3x3 structure
    of ones labels each mask: same labels and numbering, computed on each mask's merged ``Grid`` cropped to its
    union bounding box. The rows of all masks are merged in one pass over the stack; ``_label_boxes`` labels the
    boxes (labelling each mask's pixels was a quarter of the engine's time)."""
    n, h, w = binary.shape
    if n == 1:  # one mask: no bookkeeping of where each mask's rows start (it made a one-pair analyze 6 % slower)
        return _label_boxes(binary, [_merged_box(*_merge_rows(binary[0]), h, w)])
    new_row = np.empty((n, h), bool)
    new_row[:, 0] = True
    np.any(binary[:, 1:] != binary[:, :-1], axis=2, out=new_row[:, 1:])
    starts = np.flatnonzero(new_row)                 # merged rows, over the flattened (N * H) rows
    row_len = _lengths(starts, n * h)                # every mask's first row starts a run: runs end at masks
    ends = np.cumsum(np.count_nonzero(new_row, axis=1))
    first = np.concatenate(([0], ends[:-1]))
    merged = binary.reshape(n * h, w)[starts]
    # row_len copied: each mask's own array, as when labelled alone (the moments' BLAS dot products round by the
    # alignment of their operands)
    boxes = [_merged_box(merged[first[k]:ends[k]], row_len[first[k]:ends[k]].copy(), h, w) for k in range(n)]
    return _label_boxes(binary, boxes)


def _merged_box(rows: np.ndarray, row_len: np.ndarray, h: int, w: int) -> tuple[Grid, tuple[int, ...]] | None:
    """(the merged Grid of a mask's union bounding box, the box (y0, y1, x0, x1)) from the mask's merged rows and
    their lengths; None for an empty mask."""
    cells, col_len = _merge_columns(rows)
    row_any, col_any = cells.any(axis=1), cells.any(axis=0)
    u, v = cells.shape
    r0, r1, c0, c1 = int(not row_any[0]), u - int(not row_any[-1]), int(not col_any[0]), v - int(not col_any[-1])
    if r0 >= r1:   # an empty mask merges to one empty row
        return None
    top, left = int(row_len[0]) if r0 else 0, int(col_len[0]) if c0 else 0
    bbox = (top, h - (int(row_len[-1]) if r1 < u else 0), left, w - (int(col_len[-1]) if c1 < v else 0))
    return Grid(cells[r0:r1, c0:c1], row_len[r0:r1], col_len[c0:c1]), bbox


def _label_boxes(binary: np.ndarray, boxes: list) -> list[Components]:
    """Components from ``_merged_box``'s boxes: a large box labelled alone, the small ones laid one under the other
    (an empty row between two) and labelled in one scipy call (scipy's per-call cost outweighs labelling a small
    box; a large box alone spares the small ones its width)."""
    out: list = [Components(binary[k]) if box is None else None for k, box in enumerate(boxes)]
    small = [k for k, b in enumerate(boxes) if b is not None and b[0].cells.shape[1] <= SHARED_MAX_WIDTH
             and b[0].cells.size <= SHARED_MAX_CELLS]
    shared = set(small) if len(small) > 1 else set()
    for k, box in enumerate(boxes):
        if box is not None and k not in shared:
            cell_labels, count = ndimage.label(box[0].cells, structure=EIGHT_CONNECTED)
            out[k] = Components(binary[k], box[0], cell_labels, int(count), box[1])
    if not shared:
        return out
    heights = [boxes[k][0].cells.shape[0] + 1 for k in small]
    at = np.concatenate(([0], np.cumsum(heights)))
    canvas = np.zeros((int(at[-1]), max(boxes[k][0].cells.shape[1] for k in small)), bool)
    for k, y in zip(small, at):
        cells = boxes[k][0].cells
        canvas[y:y + cells.shape[0], :cells.shape[1]] = cells
    labels, _ = ndimage.label(canvas, structure=EIGHT_CONNECTED)
    top = np.maximum.reduceat(labels.max(axis=1), at[:-1])   # each box holds a component: labels rise box by box
    for k, y, hi, lo in zip(small, at, top.tolist(), [0] + top[:-1].tolist()):
        grid, bbox = boxes[k]
        if hi - lo == 1:  # one component: its labels are its cells
            cell_labels = grid.cells.astype(np.int32)
        else:
            cell_labels = labels[y:y + grid.cells.shape[0], :grid.cells.shape[1]].copy()
            np.subtract(cell_labels, lo, out=cell_labels, where=grid.cells)
        out[k] = Components(binary[k], grid, cell_labels, hi - lo, bbox)
    return out


# ----------------------------------------------------------------------------------------------------------
# features (vectorised: no per-pixel Python loop)
# ----------------------------------------------------------------------------------------------------------
def _moments(grid: Grid) -> tuple[float, float, float, float, float]:
    """(area, cy, cx, elongation, orientation_deg) of a merged bool crop, from its projections and its cells.

    Each pixel is a unit square, so 1/12 is added to both variances (a one-pixel-wide line is not degenerate).
    Orientation: angle of the major axis from the horizontal, in [0, 90] degrees (sign is dropped: the
    Direction value set does not distinguish the two diagonals).
    """
    cells = grid.cells.astype(np.float64)
    row_px = np.repeat(cells @ grid.cols, grid.rows)        # pixels per crop row
    col_px = np.repeat(grid.rows @ cells, grid.cols)        # pixels per crop column
    ys = np.arange(len(row_px), dtype=np.float64)
    xs = np.arange(len(col_px), dtype=np.float64)
    area = float(row_px.sum())
    cy, cx = float(row_px @ ys) / area, float(col_px @ xs) / area
    vyy = float(row_px @ (ys - cy) ** 2) / area + 1 / 12
    vxx = float(col_px @ (xs - cx) ** 2) / area + 1 / 12
    # sum of (y - cy)(x - cx): per cell, the sum of (y - cy) over its rows times that of (x - cx) over its columns
    dy = grid.rows * (np.cumsum(grid.rows) - grid.rows + (grid.rows - 1) / 2 - cy)
    dx = grid.cols * (np.cumsum(grid.cols) - grid.cols + (grid.cols - 1) / 2 - cx)
    vxy = float(dy @ cells @ dx) / area
    tr, det = vxx + vyy, vxx * vyy - vxy * vxy
    disc = math.sqrt(max(tr * tr / 4 - det, 0.0))
    l1, l2 = tr / 2 + disc, max(tr / 2 - disc, 1e-12)
    elong = math.sqrt(l1 / l2)
    angle = abs(math.degrees(0.5 * math.atan2(2 * vxy, vxx - vyy)))   # 0 = along x (horizontal)
    return area, cy, cx, elong, angle


def _hull(grid: Grid) -> tuple[float, float]:
    """(area, perimeter) of the convex hull of the pixel squares of one 8-connected component's merged crop.

    The hull of the component equals the hull of the outer corners of each row's leftmost and rightmost pixel
    (the rows of a connected component are contiguous). Corners on vertical runs of equal row ends are
    collinear and dropped before qhull.
    """
    cells = grid.cells
    rows = np.flatnonzero(cells.any(axis=1))
    body = cells[rows[0]:rows[-1] + 1]
    col_edges = np.concatenate(([0], np.cumsum(grid.cols)))
    height = grid.rows[rows[0]:rows[-1] + 1]
    left = np.repeat(col_edges[body.argmax(axis=1)], height)
    right = np.repeat(col_edges[body.shape[1] - body[:, ::-1].argmax(axis=1)], height)   # exclusive right edge
    top = int(grid.rows[:rows[0]].sum())
    y = np.arange(top, top + len(left))
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
        area = float(grid.area())
        return area, 4.0 * math.sqrt(area)
    return float(hull.volume), float(hull.area)


def _runs_and_euler(grid: Grid) -> tuple[int, int, int]:
    """(horizontal runs, vertical runs, 8-connected Euler number) of a merged crop, by bit-quad counting."""
    p = np.zeros((grid.cells.shape[0] + 2, grid.cells.shape[1] + 2), np.uint8)
    p[1:-1, 1:-1] = grid.cells
    h_runs = int(np.count_nonzero(p[1:-1, 1:] > p[1:-1, :-1], axis=1) @ grid.rows)
    v_runs = int(np.count_nonzero(p[1:, 1:-1] > p[:-1, 1:-1], axis=0) @ grid.cols)
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

    def __init__(self, comps: Components, grid: Grid, total: float, full: bool):
        y0, y1, x0, x1 = comps.bbox
        h, w = comps.binary.shape
        n = comps.binary.size
        area, _, _, self.elong, self.angle = _moments(grid)
        self.comps, self.grid, self.area = comps, grid, area
        self.height, self.width = int(grid.rows.sum()), int(grid.cols.sum())   # of D's bounding box
        self.min_side = min(h, w)
        self.rect = area == self.height * self.width   # D is its bounding rectangle (NEU-DET box masks): closed forms
        self.f: dict[str, Any] = {
            "scale_ratio": total / n,
            "component_count": comps.count,
            "largest_ratio": area / total,
            "extent": max((y1 - y0) / h, (x1 - x0) / w),
            "area_ratio": area / n,
            "elongation": self.elong,
            "angle": self.angle,
            "fill": area / float(self.height * self.width),
            "union_fill": total / float((y1 - y0) * (x1 - x0)),
        }
        if full:
            self.hull()
            self.runs()
            self.mask_moments()

    def hull(self) -> None:
        """solidity and roundness (of D's convex hull)."""
        if "solidity" not in self.f:
            hull_area, hull_perim = (float(self.height * self.width), 2.0 * (self.height + self.width)) \
                if self.rect else _hull(self.grid)
            self.f["solidity"] = min(self.area / hull_area, 1.0)
            self.f["roundness"] = 4 * math.pi * hull_area / (hull_perim * hull_perim)

    def runs(self) -> None:
        """thickness, slenderness and holes (of D)."""
        if "holes" not in self.f:
            h_runs, v_runs, euler = (self.height, self.width, 1) if self.rect else _runs_and_euler(self.grid)
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
                _, _, _, self.f["mask_elongation"], self.f["mask_angle"] = _moments(self.comps.grid)


def _dominant(comps: Components) -> Grid:
    """The dominant component D (largest; the first in raster order on a tie), merged, cropped to its bounding box."""
    return comps.grid if comps.count == 1 else comps.component(int(comps.sizes.argmax()))


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
    total = float(comps.area)
    if total / comps.binary.size >= DIFFUSE_MIN_SCALE and not full:
        # "diffuse" needs no outline feature: only the distribution is still to decide
        (y0, y1, x0, x1), (h, w) = comps.bbox, comps.binary.shape
        largest = comps.area if comps.count == 1 else int(comps.sizes.max())
        f = {"scale_ratio": total / comps.binary.size, "component_count": comps.count,
             "largest_ratio": float(largest) / total,
             "extent": max((y1 - y0) / h, (x1 - x0) / w), "union_fill": total / float((y1 - y0) * (x1 - x0))}
        return {"Shape": "diffuse", "Direction": "none", "Spatial Distribution": _distribution(comps.count, f),
                "features": f}
    ft = _Features(comps, _dominant(comps), total, full)
    shape = _shape(ft)
    direction = _direction(ft, shape)
    return {"Shape": shape, "Direction": direction, "Spatial Distribution": _distribution(comps.count, ft.f),
            "features": ft.f}
