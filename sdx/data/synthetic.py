"""The embedded synthetic steel-defect generator: seeded demo and test data in the official SteelDefectX layout.

A fresh clone runs end to end without a download: ``generate`` draws grayscale "steel" images with defects of
25 kinds, one per SteelDefectX class, their masks and T1-T4 text; ``default_dataset_dir`` caches one such folder.
THIS IS NOT STEEL DATA: nothing measured on it is a result about steel (each folder carries SYNTHETIC.md).
Kinds, drawing rules, text levels, determinism and the cache: docs/synthetic.md.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from sdx.annotate.engine import annotate, compute_position
from sdx.annotate.geometry import axis_direction
from sdx.annotate.phrases import (NUMBER_WORDS, count_phrase, fix_articles, orientation_phrase, position_phrase,
                                  size_adjective, tone)
from sdx.data.levels import CLASS_NAMES, CLASS_TO_PREFIX, DIRECTIONS, DISTRIBUTIONS, SHAPES

__all__ = [
    "GENERATOR_VERSION", "KINDS", "DEFAULT_CLASSES", "T1_SENTENCES", "generate", "render_sample",
    "default_dataset_dir", "contact_sheet", "register_cli",
]

GENERATOR_VERSION = "2.0"
JPEG_QUALITY = 92
SPLITS = ("train", "val")
CLUSTER_SPREAD = 0.2       # mean centroid distance / image size below which several components are "clustered"
DIRECTION_TOLERANCE = 22.5  # degrees from the rolling axis still called "along the rolling direction" in T2

# T1: written for this generator in the release's style (not the release's sentences).
T1_SENTENCES: dict[str, str] = {
    "Bright scratch": "A photo of Bright scratch, which shows thin, long, light-toned lines running across the "
                      "strip surface, caused by hard particles or guide parts rubbing the steel during rolling "
                      "and coiling.",
    "Crazing": "A photo of Crazing, which shows a fine web of short dark cracks linked into a net over a wide area, "
               "caused by thermal stress and uneven cooling that split the surface layer.",
    "Crescent gap": "A photo of Crescent gap, which shows a dark half-moon shaped notch near the edge of the "
                    "strip, caused by a cutting or shearing fault that leaves a curved gap.",
    "Dark scratches": "A photo of Dark scratches, which shows hair-thin dark lines scored into the surface, "
                      "caused by sharp debris or worn rollers dragging across the moving strip.",
    "Inclusion": "A photo of Inclusion, which shows short dark streaks stretched along the rolling direction, "
                 "caused by non-metallic particles trapped in the steel and elongated by rolling.",
    "Oil spot": "A photo of Oil spot, which shows soft-edged dark stains of irregular outline, caused by "
                "lubricant or rolling oil dripping onto the strip surface.",
    "Patches": "A photo of Patches, which shows large dark irregular areas with blurred borders, caused by "
               "uneven oxidation or local contamination of the surface.",
    "Pitted surface": "A photo of Pitted surface, which shows many small dark round pits gathered in a region, "
                      "caused by corrosion or scale pressed into the surface and later removed.",
    "Punching": "A photo of Punching, which shows a round, very dark hole with a sharp rim, caused by a punching "
                "tool or a mechanical hit that perforated the strip.",
    "Rolled in scale": "A photo of Rolled in scale, which shows scattered dark flaky fragments stretched along "
                       "the rolling direction, caused by oxide scale being pressed into the steel by the rolls.",
    "Water spot": "A photo of Water spot, which shows round stains with a darker rim and a lighter centre, "
                  "caused by water droplets drying on the strip after cooling.",
    "Welding line": "A photo of Welding line, which shows a straight band crossing the whole strip, caused by "
                    "the weld seam that joins two coils together.",
    "Crease": "A photo of Crease, which shows one or two fold lines lying across the strip, light on one flank "
              "and dark on the other, caused by the strip buckling locally as it is uncoiled.",
    "Finishing roll printing": "A photo of Finishing roll printing, which shows a regular grid of small shallow "
                               "dents over part of the strip, caused by a marked work roll printing its surface "
                               "onto the steel during finishing.",
    "Iron scale compression": "A photo of Iron scale compression, which shows a large dark grey region with a rough, "
                              "uneven outline and grainy inside, caused by iron scale being pressed into the "
                              "surface.",
    "Iron sheet ash": "A photo of Iron sheet ash, which shows a dark smudge surrounded by a dusting of fine black "
                      "particles, caused by metallic dust and oil settling on the strip.",
    "Oxide scale of plate system": "A photo of Oxide scale of plate system, which shows a few short thick dark "
                                   "bruise marks lying across the strip in a row, caused by oxide particles "
                                   "embedded by a damaged roll.",
    "Oxide scale of temperature system": "A photo of Oxide scale of temperature system, which shows many small "
                                         "light flakes of scale scattered loosely over the surface, caused by "
                                         "overheating or uneven cooling.",
    "Red iron sheet": "A photo of Red iron sheet, which shows wide lighter patches with a mottled texture stretched "
                      "along the rolling direction, caused by oxidation of high-silicon steel during heating.",
    "Rolled pit": "A photo of Rolled pit, which shows a row of round pits repeating at an even spacing along the "
                  "strip, caused by a damaged roll pressing the same dent once per turn.",
    "Secondary rust skin": "A photo of Secondary rust skin, which shows a large area of flaky scales in uneven "
                           "shades with light seams between them, caused by corrosion of a long-exposed surface.",
    "Silk spot": "A photo of Silk spot, which shows a band of faint wavy stripes running along the strip, caused by "
                 "uneven roll pressure or temperature.",
    "Slag inclusion": "A photo of Slag inclusion, which shows small black angular particles with sharp edges, "
                      "caused by slag exposed on the surface during hot rolling.",
    "Waist folding": "A photo of Waist folding, which shows a group of short wavy wrinkles side by side, caused by "
                     "severe local deformation of soft low-carbon steel.",
    "White rust": "A photo of White rust, which shows soft-edged whitish patches with a powdery look, caused by "
                  "zinc corrosion in humid conditions.",
}


# ------------------------------------------------------------------------------------------------------------
# small drawing primitives (all work on a local bounding box with coordinate grids)
# ------------------------------------------------------------------------------------------------------------
def _box(cx: float, cy: float, r: float, h: int, w: int):
    """Slices of the bounding box of radius r around (cx, cy) clipped to the image, and its x/y grids."""
    x0, x1 = max(int(math.floor(cx - r)), 0), min(int(math.ceil(cx + r)) + 1, w)
    y0, y1 = max(int(math.floor(cy - r)), 0), min(int(math.ceil(cy + r)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), xx, yy


def _stamp(canvas: np.ndarray, box, alpha: np.ndarray) -> None:
    sl = box[0]
    np.maximum(canvas[sl], alpha, out=canvas[sl])


def _arc_distance(xx, yy, cx, cy, length, angle, bend):
    """Distance to a gently bent line (parabolic arc of sagitta bend*length), in rotated coordinates:
    |v - f(u)| / sqrt(1 + f'(u)^2) along the arc, distance to the end points beyond it."""
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    half = length / 2
    sag = bend * length
    f = sag * (1.0 - (u / half) ** 2)
    fp = -2.0 * sag * u / half ** 2
    inside = np.abs(v - f) / np.sqrt(1.0 + fp * fp)
    beyond = np.hypot(np.abs(u) - half, v)
    return np.where(np.abs(u) <= half, inside, beyond)


def _blob_alpha(xx, yy, cx, cy, a, b, angle, lobes, softness):
    """Alpha of an irregular ellipse: outline radius 1 + sum c_k cos(k*theta + phi_k) in ellipse units."""
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    theta = np.arctan2(v / b, u / a)
    outline = np.ones_like(rho)
    for k, (amp, phase) in enumerate(lobes, start=2):
        outline += amp * np.cos(k * theta + phase)
    # distance to the outline in pixels (approximately), then a soft ramp of `softness` pixels
    d = (outline - rho) * min(a, b)
    return np.clip(0.5 + d / max(softness, 1e-6), 0.0, 1.0)


@functools.lru_cache(maxsize=64)
def _upsample_matrix(n: int, cells: int) -> np.ndarray:
    """(n, cells) cubic-spline interpolation matrix: M @ g upsamples a length-`cells` vector to length n."""
    m = ndimage.zoom(np.eye(cells), ((n + 1) / cells * 1.0001, 1.0), order=3)[:n]
    m.setflags(write=False)
    return m


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth random field, zero mean, unit std: a (cells+3)^2 random grid upsampled with cubic splines
    (separable, as two small matrix products)."""
    g = rng.normal(size=(cells + 3, cells + 3))
    f = (_upsample_matrix(h, cells + 3) @ g @ _upsample_matrix(w, cells + 3).T).astype(np.float32)
    f -= f.mean()
    f /= f.std() + 1e-9
    return f


def _direction(angle: float) -> str:
    """The Direction of a drawn orientation (radians, 0 = along x), by the annotation engine's rule."""
    deg = abs(math.degrees(angle)) % 180.0
    return axis_direction(min(deg, 180.0 - deg))  # 0 = horizontal, 90 = vertical


# ------------------------------------------------------------------------------------------------------------
# background
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Surface:
    size: int
    axis: int           # 0: rolling streaks vertical (profile varies along x), 1: horizontal
    image: np.ndarray   # float64 gray
    contrast: float

    @property
    def rolling_angle(self) -> float:
        return math.pi / 2 if self.axis == 0 else 0.0


def _steel_surface(rng: np.random.Generator, size: int) -> Surface:
    s = size / 256.0
    axis = int(rng.integers(2))
    base = rng.uniform(70, 175)
    contrast = rng.uniform(0.6, 1.4)
    # rolling streaks: 1-D profiles across the rolling axis, slowly modulated along it
    fine = ndimage.gaussian_filter1d(rng.normal(size=size), sigma=rng.uniform(0.6, 2.5) * s, mode="wrap")
    coarse = ndimage.gaussian_filter1d(rng.normal(size=size), sigma=rng.uniform(6, 14) * s, mode="wrap")
    profile = fine / (fine.std() + 1e-9) * rng.uniform(2, 7) + coarse / (coarse.std() + 1e-9) * rng.uniform(2, 6)
    modulation = 1.0 + 0.35 * _smooth_field(rng, size, size, 3)
    profile = profile.astype(np.float32)
    streaks = (profile[None, :] if axis == 0 else profile[:, None]) * modulation
    grain = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 0.6, truncate=2.5)
    grain *= np.float32(rng.uniform(3, 9) * 2.2)
    uneven = _smooth_field(rng, size, size, 4) * np.float32(rng.uniform(2, 8))
    t = (np.arange(size, dtype=np.float32) / max(size - 1, 1) - 0.5)
    ramp = rng.uniform(-30, 30) * t[None, :] + rng.uniform(-30, 30) * t[:, None]
    cx, cy = rng.uniform(-0.3, 0.3, size=2)
    vignette = -rng.uniform(0, 25) * ((t[None, :] - cx) ** 2 + (t[:, None] - cy) ** 2)
    img = streaks
    img += grain
    img += uneven
    img += (ramp + vignette).astype(np.float32)
    img *= np.float32(contrast)
    img += np.float32(base)
    return Surface(size=size, axis=axis, image=img, contrast=contrast)


# ------------------------------------------------------------------------------------------------------------
# defect kinds
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Drawn:
    """What a kind drew: alpha (union of objects), signed delta image, and the geometry for T2/T3."""
    alpha: np.ndarray
    delta: np.ndarray
    shape: str
    angle: float | None              # orientation in radians, None for kinds without one
    noun: tuple[str, str]            # singular, plural noun for T2
    extent: float                    # characteristic size in pixels (line length, diameter, ...)
    extent_word: str                 # "long", "across", "wide"
    extras: list[str] = field(default_factory=list)  # optional extra T2 clauses
    collective: str | None = None    # one object made of pieces (a crack network): T2 names it once


def _near_axis_angle(rng: np.random.Generator, surf: Surface, spread_deg: float, p_free: float) -> float:
    if rng.random() < p_free:
        return rng.uniform(0, math.pi)
    return surf.rolling_angle + math.radians(rng.normal(0, spread_deg))


def _canvas(surf: Surface) -> tuple[int, float, np.ndarray]:
    """(image side, scale relative to 256 px, an empty alpha map): what every drawer starts from."""
    return surf.size, surf.size / 256.0, np.zeros((surf.size, surf.size))


def _placements(rng, n_px: int, s: float, count: int, radius: tuple[float, float], centre: tuple[float, float]):
    """(radius x s, cx, cy) of each of ``count`` defects; each drawn when it is asked for, so draws the caller makes
    in between keep their place in the random stream."""
    for _ in range(count):
        r = rng.uniform(*radius) * s
        cx, cy = rng.uniform(*centre, size=2) * n_px
        yield r, cx, cy


def _draw_scratch(rng, surf: Surface, bright: bool) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    delta = np.zeros((n_px, n_px))
    count = int(rng.integers(1, 4 if bright else 5))
    angle = _near_axis_angle(rng, surf, 6.0, 0.35)
    bend = rng.uniform(0.0, 0.1)
    lengths = []
    cx0, cy0 = rng.uniform(0.2, 0.8, size=2) * n_px
    for _ in range(count):
        length = rng.uniform(0.45, 0.95) * n_px
        width = max(rng.uniform(2.0, 4.5) * s if bright else rng.uniform(1.5, 3.0) * s, 1.0)
        cx = cx0 + rng.normal(0, 35 * s)
        cy = cy0 + rng.normal(0, 35 * s)
        ang = angle + math.radians(rng.normal(0, 3))
        box = _box(cx, cy, length / 2 + width + 2, n_px, n_px)
        if box is None:
            continue
        d = _arc_distance(box[1], box[2], cx, cy, length, ang, bend * rng.choice([-1, 1]))
        a = np.clip(width / 2 + 0.5 - d, 0.0, 1.0)
        _stamp(alpha, box, a)
        lengths.append(length)
    strength = rng.uniform(50, 95) if bright else -rng.uniform(40, 80)
    variation = 0.75 + 0.25 * _smooth_field(rng, n_px, n_px, 6)
    delta[:] = strength * np.clip(variation, 0.3, 1.3)
    shape = "curved" if bend > 0.06 else "linear"
    noun = ("scratch line", "scratch lines") if bright else ("scratch", "scratches")
    return Drawn(alpha, delta, shape, angle, noun, float(np.mean(lengths) if lengths else 0), "long")


def _draw_bright_scratch(rng, surf):
    return _draw_scratch(rng, surf, bright=True)


def _draw_dark_scratch(rng, surf):
    return _draw_scratch(rng, surf, bright=False)


def _draw_crazing(rng, surf: Surface) -> Drawn:
    n_px, s, _ = _canvas(surf)
    # jittered-grid seeds (no two seeds nearly coincide, which would give a thick dark wedge)
    g = int(rng.integers(4, 8))
    cells = (np.stack(np.meshgrid(np.arange(g), np.arange(g)), -1).reshape(-1, 2) + 0.5
             + rng.uniform(-0.3, 0.3, size=(g * g, 2)))
    seeds = (cells / g * 1.2 - 0.1) * n_px
    yy, xx = np.mgrid[0:n_px, 0:n_px].astype(np.float32)
    warp = np.float32(5.0 * s)
    wx = xx + warp * _smooth_field(rng, n_px, n_px, 8)
    wy = yy + warp * _smooth_field(rng, n_px, n_px, 8)
    # nearest and second-nearest seed distances, one seed at a time (Voronoi edges where they are equal)
    d1 = np.full((n_px, n_px), np.inf, dtype=np.float32)
    d2 = d1.copy()
    for sx, sy in seeds.astype(np.float32):
        d = np.hypot(wx - sx, wy - sy)
        np.minimum(d2, np.maximum(d1, d), out=d2)
        np.minimum(d1, d, out=d1)
    gap = d2 - d1
    width = max(rng.uniform(1.5, 3.0) * s, 1.0)
    a = np.clip(width / 2 + 0.5 - gap, 0.0, 1.0)
    # region: a large ellipse, and parts of the network faded out
    cx, cy = rng.uniform(0.3, 0.7, size=2) * n_px
    rx, ry = rng.uniform(0.3, 0.6, size=2) * n_px
    region = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0
    keep = _smooth_field(rng, n_px, n_px, 5) > rng.uniform(-1.0, -0.3)
    alpha = a * region * keep
    delta = -rng.uniform(45, 80) * (0.8 + 0.2 * _smooth_field(rng, n_px, n_px, 10))
    return Drawn(alpha, delta, "network-like", None, ("crack", "cracks"), float(2 * max(rx, ry)), "wide",
                 collective="network of fine cracks")


def _draw_crescent(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    r = rng.uniform(22, 48) * s
    side = int(rng.integers(4))
    t = rng.uniform(0.2, 0.8) * n_px
    inset = rng.uniform(0.15, 0.5) * r
    cx, cy = [(inset, t), (n_px - inset, t), (t, inset), (t, n_px - inset)][side]
    # the cut disc is offset towards the image edge, leaving a crescent facing inward
    out = [(-1, 0), (1, 0), (0, -1), (0, 1)][side]
    off = rng.uniform(0.3, 0.55) * r
    tilt = rng.normal(0, 0.35)
    ox = off * (out[0] * math.cos(tilt) - out[1] * math.sin(tilt))
    oy = off * (out[0] * math.sin(tilt) + out[1] * math.cos(tilt))
    box = _box(cx, cy, r + 2, n_px, n_px)
    xx, yy = box[1], box[2]
    outer = np.clip(r + 0.5 - np.hypot(xx - cx, yy - cy), 0, 1)
    inner = np.clip(np.hypot(xx - cx - ox, yy - cy - oy) - (r * rng.uniform(0.85, 1.0)) + 0.5, 0, 1)
    _stamp(alpha, box, outer * inner)
    delta = -rng.uniform(45, 90) * (0.85 + 0.15 * _smooth_field(rng, n_px, n_px, 6))
    return Drawn(alpha, delta, "curved", None, ("crescent-shaped gap", "crescent-shaped gaps"), 2 * r, "across",
                 extras=["at the edge of the strip"])


def _draw_inclusion(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    chains = int(rng.integers(1, 4))
    angle = surf.rolling_angle + math.radians(rng.normal(0, 4))
    c, sn = math.cos(angle), math.sin(angle)
    cx0, cy0 = rng.uniform(0.15, 0.85, size=2) * n_px
    lengths = []
    for _ in range(chains):
        # a chain of 2-5 tapered dark segments strung along the rolling axis, with small gaps
        across = rng.normal(0, 14 * s)
        along = rng.normal(0, 25 * s)
        width = rng.uniform(4.0, 8.0) * s
        for _seg in range(int(rng.integers(3, 7))):
            length = rng.uniform(8, 26) * s
            cx, cy = cx0 + along * c - across * sn, cy0 + along * sn + across * c
            along += length + rng.uniform(2, 9) * s
            lobes = [(rng.uniform(0, 0.12), rng.uniform(0, 2 * math.pi)) for _ in range(3)]
            box = _box(cx, cy, length / 2 + 3, n_px, n_px)
            if box is None:
                continue
            a = _blob_alpha(box[1], box[2], cx, cy, length / 2, width / 2 * rng.uniform(0.7, 1.0),
                            angle + math.radians(rng.normal(0, 2)), lobes, softness=1.2 * s)
            _stamp(alpha, box, a)
            lengths.append(length)
    delta = -rng.uniform(40, 85) * np.clip(0.8 + 0.3 * _smooth_field(rng, n_px, n_px, 14), 0.3, 1.3)
    return Drawn(alpha, delta, "elongated", angle, ("streak", "streaks"), float(np.mean(lengths or [0])), "long")


def _draw_oil_spot(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    count = int(rng.integers(1, 4))
    lobe_amp = rng.uniform(0.03, 0.3)
    diameters = []
    for _ in range(count):
        r = rng.uniform(10, 38) * s
        cx, cy = rng.uniform(0.12, 0.88, size=2) * n_px
        lobes = [(lobe_amp * rng.uniform(0.4, 1.0), rng.uniform(0, 2 * math.pi)) for _ in range(4)]
        box = _box(cx, cy, r * 1.6 + 6 * s, n_px, n_px)
        a = _blob_alpha(box[1], box[2], cx, cy, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi), lobes,
                        softness=rng.uniform(4, 9) * s)
        _stamp(alpha, box, a)
        diameters.append(2 * r)
    delta = -rng.uniform(25, 50) * (0.85 + 0.15 * _smooth_field(rng, n_px, n_px, 8))
    shape = "irregular" if lobe_amp > 0.18 else "spot-like"
    return Drawn(alpha, delta, shape, None, ("stain", "stains"), float(np.mean(diameters)), "across")


def _draw_patches(rng, surf: Surface) -> Drawn:
    n_px = surf.size
    f = _smooth_field(rng, n_px, n_px, int(rng.integers(5, 10)))
    yy, xx = np.mgrid[0:n_px, 0:n_px].astype(np.float32) / n_px
    cx, cy = rng.uniform(0.25, 0.75, size=2)
    # a broad random region, so patches do not fill the whole frame
    region = np.exp(-(((xx - cx) / rng.uniform(0.3, 0.6)) ** 2 + ((yy - cy) / rng.uniform(0.3, 0.6)) ** 2))
    g = f + 1.6 * region
    thr = np.quantile(g, 1.0 - rng.uniform(0.12, 0.35))
    alpha = np.clip(0.5 + (g - thr) / 0.12, 0.0, 1.0)
    delta = -rng.uniform(40, 85) * np.clip(0.8 + 0.25 * _smooth_field(rng, n_px, n_px, 12), 0.3, 1.3)
    return Drawn(alpha, delta, "patch-like", None, ("patch", "patches"), 0.0, "area")


def _draw_pits(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    count = int(rng.integers(12, 71))
    cx0, cy0 = rng.uniform(0.25, 0.75, size=2) * n_px
    band = rng.random() < 0.5
    sx, sy = (rng.uniform(15, 45) * s,) * 2
    if band:  # a band along the rolling axis
        if surf.axis == 0:
            sx, sy = rng.uniform(10, 25) * s, rng.uniform(60, 120) * s
        else:
            sx, sy = rng.uniform(60, 120) * s, rng.uniform(10, 25) * s
    xs = cx0 + rng.normal(0, sx, size=count)
    ys = cy0 + rng.normal(0, sy, size=count)
    radii = rng.uniform(1.5, 4.0, size=count) * s
    for cx, cy, r in zip(xs, ys, radii):
        box = _box(cx, cy, r + 2, n_px, n_px)
        if box is None:
            continue
        a = np.clip(r + 0.5 - np.hypot(box[1] - cx, box[2] - cy), 0, 1)
        _stamp(alpha, box, a)
    delta = -rng.uniform(40, 90) * np.ones((n_px, n_px))
    return Drawn(alpha, delta, "spot-like", None, ("pit", "pits"), float(2 * radii.mean()), "across")


def _draw_punching(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    diameters = []
    for r, cx, cy in _placements(rng, n_px, s, 1 if rng.random() < 0.8 else 2, (9, 26), (0.15, 0.85)):
        box = _box(cx, cy, r + 2, n_px, n_px)
        a = np.clip(r + 0.5 - np.hypot(box[1] - cx, box[2] - cy), 0, 1)
        _stamp(alpha, box, a)
        diameters.append(2 * r)
    # a hole: nearly black whatever the surface brightness
    target = rng.uniform(5, 30)
    delta = (target - surf.image) + rng.normal(0, 1.5, size=(n_px, n_px))
    return Drawn(alpha, delta, "circular", None, ("round hole", "round holes"), float(np.mean(diameters)),
                 "across")


def _draw_rolled_scale(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    count = int(rng.integers(8, 31))
    angle = surf.rolling_angle
    lengths = []
    for _ in range(count):
        cx, cy = rng.uniform(0.05, 0.95, size=2) * n_px
        a_len = rng.uniform(4, 12) * s
        b_len = rng.uniform(1.8, 4.5) * s
        lobes = [(rng.uniform(0, 0.25), rng.uniform(0, 2 * math.pi)) for _ in range(4)]
        box = _box(cx, cy, a_len * 1.5 + 2, n_px, n_px)
        a = _blob_alpha(box[1], box[2], cx, cy, a_len, b_len, angle + math.radians(rng.normal(0, 8)), lobes,
                        softness=1.0 * s)
        _stamp(alpha, box, a)
        lengths.append(2 * a_len)
    delta = -rng.uniform(30, 70) * np.clip(0.75 + 0.35 * _smooth_field(rng, n_px, n_px, 20), 0.2, 1.4)
    return Drawn(alpha, delta, "fragmented", angle, ("scale flake", "scale flakes"), float(np.mean(lengths)),
                 "long")


def _draw_water_spot(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    delta = np.zeros((n_px, n_px))
    count = int(rng.integers(1, 5))
    rim_dark = rng.uniform(30, 60)
    fill_light = rng.uniform(4, 14)
    diameters = []
    for _ in range(count):
        r = rng.uniform(8, 28) * s
        cx, cy = rng.uniform(0.1, 0.9, size=2) * n_px
        ecc = rng.uniform(0.8, 1.0)
        box = _box(cx, cy, r + 3, n_px, n_px)
        xx, yy = box[1], box[2]
        rho = np.hypot(xx - cx, (yy - cy) / ecc)
        disc = np.clip(r + 0.5 - rho, 0, 1)
        rim_w = rng.uniform(1.5, 3.5) * s
        rim = np.exp(-(((rho - (r - rim_w)) / rim_w) ** 2))
        _stamp(alpha, box, disc)
        sl = box[0]
        # tone: rim darker, inside faintly lighter (set where this disc lies; the image gets delta * alpha)
        delta[sl] = np.where(disc > 0, fill_light - (rim_dark + fill_light) * rim, delta[sl])
        diameters.append(2 * r)
    return Drawn(alpha, delta, "circular", None, ("ring-shaped stain", "ring-shaped stains"),
                 float(np.mean(diameters)), "across", extras=["with a darker rim"])


def _draw_welding_line(rng, surf: Surface) -> Drawn:
    n_px, s, _ = _canvas(surf)
    angle = surf.rolling_angle + math.pi / 2 + math.radians(rng.normal(0, 2))
    width = rng.uniform(4, 13) * s
    pos = rng.uniform(0.15, 0.85) * n_px
    yy, xx = np.mgrid[0:n_px, 0:n_px].astype(np.float32)
    c, sn = math.cos(angle), math.sin(angle)
    # signed distance across the band (band passes through (pos, pos) along `angle`)
    d = -(xx - pos) * sn + (yy - pos) * c
    alpha = np.clip(width / 2 + 0.5 - np.abs(d), 0.0, 1.0)
    along = (xx - pos) * c + (yy - pos) * sn
    ripple = 0.8 + 0.2 * np.cos(2 * math.pi * along / (rng.uniform(4, 9) * s))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    delta = sign * rng.uniform(30, 65) * ripple
    return Drawn(alpha, delta, "linear", angle, ("weld band", "weld bands"), width, "wide",
                 extras=["crossing the whole image"])


# ---- the 13 kinds added in generator version 2.0 (drawn after the twelve above; their streams are their own) ----
def _aniso_field(rng: np.random.Generator, n_px: int, cells_along: int, cells_across: int, axis: int) -> np.ndarray:
    """Smooth random field, zero mean, unit std, `cells_along` cells along the rolling axis and `cells_across`
    across it (axis as Surface.axis: 0 = streaks vertical)."""
    rows, cols = (cells_along, cells_across) if axis == 0 else (cells_across, cells_along)
    g = rng.normal(size=(rows + 3, cols + 3))
    f = (_upsample_matrix(n_px, rows + 3) @ g @ _upsample_matrix(n_px, cols + 3).T).astype(np.float32)
    f -= f.mean()
    f /= f.std() + 1e-9
    return f


def _fold(n_px: int, cx: float, cy: float, length: float, width: float, angle: float, bend: float,
          alpha: np.ndarray, delta: np.ndarray, amp: float) -> None:
    """One fold (a ridge) stamped into alpha/delta: bright on one side of its centre line, dark on the other."""
    box = _box(cx, cy, length / 2 + width + 2, n_px, n_px)
    if box is None:
        return
    xx, yy = box[1], box[2]
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    half = length / 2
    v = -(xx - cx) * s + (yy - cy) * c - bend * length * (1.0 - np.clip(u / half, -1, 1) ** 2)
    taper = np.clip((half - np.abs(u)) / (0.15 * half) + 0.2, 0.0, 1.0)
    a = np.clip(width / 2 + 0.5 - np.abs(v), 0.0, 1.0) * (np.abs(u) <= half) * (taper > 0.35)
    sl = box[0]
    _stamp(alpha, box, a)
    delta[sl] = np.where(a > 0, amp * np.tanh(v / max(width / 4, 0.5)) * taper, delta[sl])


def _draw_crease(rng, surf: Surface) -> Drawn:
    n_px, s, _ = _canvas(surf)
    alpha, delta = np.zeros((n_px, n_px)), np.zeros((n_px, n_px))
    angle = surf.rolling_angle + math.pi / 2 + math.radians(rng.normal(0, 5))
    count = int(rng.integers(1, 3))
    c, sn = math.cos(angle), math.sin(angle)
    cx0, cy0 = rng.uniform(0.3, 0.7, size=2) * n_px
    lengths = []
    for i in range(count):
        length = rng.uniform(0.4, 0.8) * n_px
        off = (i - (count - 1) / 2) * rng.uniform(18, 40) * s   # parallel folds side by side
        _fold(n_px, cx0 - off * sn, cy0 + off * c, length, rng.uniform(7, 12) * s, angle,
              rng.uniform(-0.03, 0.03), alpha, delta, rng.uniform(35, 60))
        lengths.append(length)
    return Drawn(alpha, delta, "linear", angle, ("fold mark", "fold marks"), float(np.mean(lengths)), "long",
                 extras=["across the rolling direction"])


def _draw_roll_printing(rng, surf: Surface) -> Drawn:
    n_px, s, _ = _canvas(surf)
    alpha, delta = np.zeros((n_px, n_px)), np.zeros((n_px, n_px))
    pitch = rng.uniform(20, 32) * s
    x0, y0 = rng.uniform(0.05, 0.35, size=2) * n_px
    x1, y1 = x0 + rng.uniform(0.45, 0.65) * n_px, y0 + rng.uniform(0.45, 0.65) * n_px
    shift = rng.uniform(0, 0.5)                       # rows staggered like a roll's surface pattern
    a_len, b_len = rng.uniform(4, 7) * s, rng.uniform(2.5, 4) * s
    angle = surf.rolling_angle + math.radians(rng.normal(0, 3))
    depth = rng.uniform(30, 55)
    for row, y in enumerate(np.arange(y0, y1, pitch)):
        for x in np.arange(x0 + (row % 2) * shift * pitch, x1, pitch):
            box = _box(x, y, a_len + 3, n_px, n_px)
            if box is None:
                continue
            a = _blob_alpha(box[1], box[2], x, y, a_len, b_len, angle, [], softness=1.5 * s)
            sl = box[0]
            _stamp(alpha, box, a)
            # a dent: dark, with a lighter lip on one side
            lip = np.clip(((box[1] - x) * math.cos(angle) + (box[2] - y) * math.sin(angle)) / a_len, -1, 1)
            delta[sl] = np.where(a > 0, -depth * (0.8 - 0.5 * lip), delta[sl])
    return Drawn(alpha, delta, "spot-like", None, ("dent", "dents"), float(2 * a_len), "long",
                 extras=[f"in a regular grid about {max(1, round(pitch))} pixels apart"])


def _draw_scale_compression(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    diameters = []
    for r, cx, cy in _placements(rng, n_px, s, 1 if rng.random() < 0.7 else 2, (28, 55), (0.25, 0.75)):
        lobes = [(rng.uniform(0.1, 0.3), rng.uniform(0, 2 * math.pi)) for _ in range(5)]
        box = _box(cx, cy, r * 2.0, n_px, n_px)
        _stamp(alpha, box, _blob_alpha(box[1], box[2], cx, cy, r, r * rng.uniform(0.55, 0.9), rng.uniform(0, math.pi),
                                       lobes, softness=2.0 * s))
        diameters.append(2 * r)
    rough = ndimage.gaussian_filter(rng.standard_normal((n_px, n_px)), max(1.2 * s, 0.6))
    rough /= rough.std() + 1e-9
    delta = -rng.uniform(30, 55) * np.clip(1.0 + 0.45 * rough, 0.1, 2.0)
    return Drawn(alpha, delta, "irregular", None, ("compressed scale region", "compressed scale regions"),
                 float(np.mean(diameters)), "across", extras=["with a rough texture"])


def _draw_sheet_ash(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    cx, cy = rng.uniform(0.3, 0.7, size=2) * n_px
    rx, ry = rng.uniform(45, 90, size=2) * s
    yy, xx = np.mgrid[0:n_px, 0:n_px].astype(np.float32)
    haze = np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)) * (0.8 + 0.2 * _smooth_field(rng, n_px, n_px, 5))
    count = int(rng.integers(60, 160))
    xs, ys = cx + rng.normal(0, rx / 1.6, size=count), cy + rng.normal(0, ry / 1.6, size=count)
    for x, y, r in zip(xs, ys, rng.uniform(1.0, 2.4, size=count) * s):
        box = _box(x, y, r + 2, n_px, n_px)
        if box is not None:
            _stamp(alpha, box, np.clip(r + 0.5 - np.hypot(box[1] - x, box[2] - y), 0, 1))
    np.maximum(alpha, np.clip((haze - 0.55) / 0.1, 0.0, 1.0), out=alpha)    # the stain's dense core
    strength = rng.uniform(55, 90)
    delta = -strength * np.where(alpha >= 0.99, 1.0, 0.35 + 0.65 * haze) * np.ones((n_px, n_px))
    return Drawn(alpha, delta, "diffuse", None, ("black particle", "black particles"), float(2 * max(rx, ry)), "wide",
                 extras=["around a dark ash stain"])


def _draw_plate_oxide(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    count = int(rng.integers(2, 6))
    across = surf.rolling_angle + math.pi / 2 + math.radians(rng.normal(0, 12))
    along = surf.rolling_angle
    step = rng.uniform(25, 45) * s
    cx0, cy0 = rng.uniform(0.25, 0.75, size=2) * n_px
    lengths = []
    for i in range(count):
        t = (i - (count - 1) / 2) * step
        cx, cy = cx0 + t * math.cos(along), cy0 + t * math.sin(along)
        length = rng.uniform(16, 40) * s
        width = rng.uniform(4, 9) * s
        lobes = [(rng.uniform(0, 0.15), rng.uniform(0, 2 * math.pi)) for _ in range(3)]
        box = _box(cx, cy, length / 2 + 4, n_px, n_px)
        if box is None:
            continue
        _stamp(alpha, box, _blob_alpha(box[1], box[2], cx, cy, length / 2, width / 2,
                                       across + math.radians(rng.normal(0, 5)), lobes, softness=2.5 * s))
        lengths.append(length)
    delta = -rng.uniform(45, 80) * np.clip(0.85 + 0.2 * _smooth_field(rng, n_px, n_px, 10), 0.4, 1.2)
    return Drawn(alpha, delta, "elongated", across, ("bruise mark", "bruise marks"), float(np.mean(lengths or [0])),
                 "long", extras=["repeated along the strip"])


def _draw_temperature_oxide(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    count = int(rng.integers(15, 45))
    sizes = []
    for _ in range(count):
        cx, cy = rng.uniform(0.04, 0.96, size=2) * n_px
        r = rng.uniform(3, 8) * s
        lobes = [(rng.uniform(0.05, 0.3), rng.uniform(0, 2 * math.pi)) for _ in range(4)]
        box = _box(cx, cy, r * 1.8 + 2, n_px, n_px)
        _stamp(alpha, box, _blob_alpha(box[1], box[2], cx, cy, r, r * rng.uniform(0.5, 1.0), rng.uniform(0, math.pi),
                                       lobes, softness=1.0 * s))
        sizes.append(2 * r)
    delta = rng.uniform(35, 65) * np.clip(0.8 + 0.3 * _smooth_field(rng, n_px, n_px, 16), 0.3, 1.3)
    return Drawn(alpha, delta, "fragmented", None, ("light scale mark", "light scale marks"), float(np.mean(sizes)),
                 "across")


def _draw_red_iron(rng, surf: Surface) -> Drawn:
    n_px = surf.size
    f = _aniso_field(rng, n_px, int(rng.integers(2, 4)), int(rng.integers(5, 9)), surf.axis)
    thr = np.quantile(f, 1.0 - rng.uniform(0.2, 0.45))
    alpha = np.clip(0.5 + (f - thr) / 0.25, 0.0, 1.0)
    mottle = ndimage.gaussian_filter(rng.standard_normal((n_px, n_px)), max(2.0 * n_px / 256.0, 0.6))
    mottle /= mottle.std() + 1e-9
    delta = rng.uniform(25, 45) * np.clip(1.0 + 0.5 * mottle, 0.0, 2.0)
    return Drawn(alpha, delta, "patch-like", None, ("oxide patch", "oxide patches"), 0.0, "area",
                 extras=["with a mottled texture"])


def _draw_rolled_pit(rng, surf: Surface) -> Drawn:
    n_px, s, _ = _canvas(surf)
    alpha, delta = np.zeros((n_px, n_px)), np.zeros((n_px, n_px))
    count = int(rng.integers(2, 6))
    angle = surf.rolling_angle + math.radians(rng.normal(0, 3))
    step = rng.uniform(38, 60) * s
    cx0, cy0 = rng.uniform(0.3, 0.7, size=2) * n_px
    r = rng.uniform(5, 10) * s
    depth = rng.uniform(50, 85)
    light = rng.uniform(0, 2 * math.pi)
    for i in range(count):
        t = (i - (count - 1) / 2) * step
        cx, cy = cx0 + t * math.cos(angle), cy0 + t * math.sin(angle)
        box = _box(cx, cy, r + 3, n_px, n_px)
        if box is None:
            continue
        xx, yy = box[1], box[2]
        rho = np.hypot(xx - cx, yy - cy)
        a = np.clip(r + 0.5 - rho, 0, 1)
        side = ((xx - cx) * math.cos(light) + (yy - cy) * math.sin(light)) / max(r, 1.0)
        _stamp(alpha, box, a)
        delta[box[0]] = np.where(a > 0, -depth * (1.0 - 0.6 * np.clip(side, 0, 1) * (rho > 0.6 * r)), delta[box[0]])
    return Drawn(alpha, delta, "circular", angle, ("pit", "pits"), float(2 * r), "across",
                 extras=["repeating at a regular spacing"])


def _draw_rust_skin(rng, surf: Surface) -> Drawn:
    n_px, s, _ = _canvas(surf)
    f = _smooth_field(rng, n_px, n_px, int(rng.integers(3, 6)))
    alpha = np.clip(0.5 + (f - np.quantile(f, 1.0 - rng.uniform(0.3, 0.55))) / 0.15, 0.0, 1.0)
    # flakes: Voronoi cells, each its own shade, thin light seams between them
    g = int(rng.integers(7, 12))
    seeds = (np.stack(np.meshgrid(np.arange(g), np.arange(g)), -1).reshape(-1, 2) + 0.5
             + rng.uniform(-0.4, 0.4, size=(g * g, 2))) / g * n_px
    shades = rng.uniform(-70, -10, size=len(seeds))
    yy, xx = np.mgrid[0:n_px, 0:n_px].astype(np.float32)
    d1 = np.full((n_px, n_px), np.inf, dtype=np.float32)
    d2, label = d1.copy(), np.zeros((n_px, n_px), dtype=np.int64)
    for k, (sx, sy) in enumerate(seeds.astype(np.float32)):
        d = np.hypot(xx - sx, yy - sy)
        closer = d < d1
        np.minimum(d2, np.where(closer, d1, d), out=d2)
        label[closer] = k
        np.minimum(d1, d, out=d1)
    seam = np.clip(1.5 * s + 0.5 - (d2 - d1), 0.0, 1.0)
    delta = shades[label] * (1.0 - seam) + rng.uniform(10, 25) * seam
    return Drawn(alpha, delta, "irregular", None, ("rust layer", "rust layers"), 0.0, "area",
                 extras=["made of flaky scales"])


def _draw_silk_spot(rng, surf: Surface) -> Drawn:
    n_px, s, _ = _canvas(surf)
    yy, xx = np.mgrid[0:n_px, 0:n_px].astype(np.float32)
    along, across = (yy, xx) if surf.axis == 0 else (xx, yy)
    wavelength = rng.uniform(9, 16) * s
    wobble = rng.uniform(4, 10) * s
    period = rng.uniform(60, 120) * s
    stripes = np.sin(2 * math.pi * (across + wobble * np.sin(2 * math.pi * along / period + rng.uniform(0, 6.3)))
                     / wavelength)
    c0 = rng.uniform(0.3, 0.7) * n_px
    half_width = rng.uniform(30, 60) * s
    band = np.clip((half_width - np.abs(across - c0)) / (8 * s), 0.0, 1.0)
    fade = np.clip(0.7 + 0.6 * _smooth_field(rng, n_px, n_px, 3), 0.0, 1.0)
    alpha = np.clip((stripes - 0.1) * 2.5, 0.0, 1.0) * band * fade
    delta = -rng.uniform(30, 50) * np.ones((n_px, n_px))
    return Drawn(alpha, delta, "diffuse", surf.rolling_angle, ("wavy stripe", "wavy stripes"), 0.0, "area",
                 extras=["in a band"])


def _draw_slag(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    sizes = []
    for r, cx, cy in _placements(rng, n_px, s, int(rng.integers(2, 6)), (5, 14), (0.15, 0.85)):
        k = int(rng.integers(3, 7))                                      # an angular shard of k corners
        corners = np.sort(rng.uniform(0, 2 * math.pi, size=k))
        radii = r * rng.uniform(0.3, 1.0, size=k)
        box = _box(cx, cy, r + 2, n_px, n_px)
        theta = np.mod(np.arctan2(box[2] - cy, box[1] - cx), 2 * math.pi)
        edge = np.interp(theta, np.concatenate([corners - 2 * math.pi, corners, corners + 2 * math.pi]),
                         np.tile(radii, 3))
        _stamp(alpha, box, np.clip(edge + 0.5 - np.hypot(box[1] - cx, box[2] - cy), 0, 1))
        sizes.append(2 * r)
    target = rng.uniform(0, 20)
    delta = (target - surf.image) + rng.normal(0, 3, size=(n_px, n_px))
    return Drawn(alpha, delta, "irregular", None, ("slag particle", "slag particles"), float(np.mean(sizes)),
                 "across", extras=["with sharp edges"])


def _draw_waist_folding(rng, surf: Surface) -> Drawn:
    n_px, s, _ = _canvas(surf)
    alpha, delta = np.zeros((n_px, n_px)), np.zeros((n_px, n_px))
    angle = rng.uniform(0, math.pi)
    c, sn = math.cos(angle), math.sin(angle)
    count = int(rng.integers(3, 7))
    cx0, cy0 = rng.uniform(0.3, 0.7, size=2) * n_px
    gap = rng.uniform(12, 18) * s
    lengths = []
    for i in range(count):
        off = (i - (count - 1) / 2) * gap + rng.normal(0, 2 * s)
        along = rng.normal(0, 10 * s)
        length = rng.uniform(0.2, 0.45) * n_px
        _fold(n_px, cx0 + along * c - off * sn, cy0 + along * sn + off * c, length, rng.uniform(4, 7) * s,
              angle + math.radians(rng.normal(0, 3)), rng.uniform(0.06, 0.12) * rng.choice([-1, 1]), alpha, delta,
              rng.uniform(30, 55))
        lengths.append(length)
    return Drawn(alpha, delta, "curved", angle, ("wrinkle-like fold", "wrinkle-like folds"), float(np.mean(lengths)),
                 "long")


def _draw_white_rust(rng, surf: Surface) -> Drawn:
    n_px, s, alpha = _canvas(surf)
    diameters = []
    for r, cx, cy in _placements(rng, n_px, s, int(rng.integers(1, 5)), (14, 36), (0.15, 0.85)):
        lobes = [(rng.uniform(0.05, 0.25), rng.uniform(0, 2 * math.pi)) for _ in range(4)]
        box = _box(cx, cy, r * 1.6 + 8 * s, n_px, n_px)
        _stamp(alpha, box, _blob_alpha(box[1], box[2], cx, cy, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi),
                                       lobes, softness=rng.uniform(5, 10) * s))
        diameters.append(2 * r)
    powder = ndimage.gaussian_filter(rng.standard_normal((n_px, n_px)), max(1.0 * s, 0.6))
    powder /= powder.std() + 1e-9
    delta = rng.uniform(40, 70) * np.clip(1.0 + 0.35 * powder, 0.2, 1.8)
    return Drawn(alpha, delta, "irregular", None, ("white patch", "white patches"), float(np.mean(diameters)),
                 "across", extras=["with a powdery look"])


@dataclass(frozen=True)
class Kind:
    class_name: str
    draw: Callable[[np.random.Generator, Surface], Drawn]


KINDS: dict[str, Kind] = {k.class_name: k for k in (
    Kind("Bright scratch", _draw_bright_scratch),
    Kind("Crazing", _draw_crazing),
    Kind("Crescent gap", _draw_crescent),
    Kind("Dark scratches", _draw_dark_scratch),
    Kind("Inclusion", _draw_inclusion),
    Kind("Oil spot", _draw_oil_spot),
    Kind("Patches", _draw_patches),
    Kind("Pitted surface", _draw_pits),
    Kind("Punching", _draw_punching),
    Kind("Rolled in scale", _draw_rolled_scale),
    Kind("Water spot", _draw_water_spot),
    Kind("Welding line", _draw_welding_line),
    Kind("Crease", _draw_crease),
    Kind("Finishing roll printing", _draw_roll_printing),
    Kind("Iron scale compression", _draw_scale_compression),
    Kind("Iron sheet ash", _draw_sheet_ash),
    Kind("Oxide scale of plate system", _draw_plate_oxide),
    Kind("Oxide scale of temperature system", _draw_temperature_oxide),
    Kind("Red iron sheet", _draw_red_iron),
    Kind("Rolled pit", _draw_rolled_pit),
    Kind("Secondary rust skin", _draw_rust_skin),
    Kind("Silk spot", _draw_silk_spot),
    Kind("Slag inclusion", _draw_slag),
    Kind("Waist folding", _draw_waist_folding),
    Kind("White rust", _draw_white_rust),
)}
DEFAULT_CLASSES: tuple[str, ...] = tuple(sorted(KINDS))

for _name in KINDS:  # the label space must be the release's
    assert _name in CLASS_NAMES and _name in T1_SENTENCES, _name


# ------------------------------------------------------------------------------------------------------------
# one sample: image, mask, geometry, T2
# ------------------------------------------------------------------------------------------------------------
def _image_rng(seed: int, class_name: str, split: str, n: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), CLASS_NAMES.index(class_name), SPLITS.index(split), int(n)])


def _encode_jpeg(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray, "L").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _encode_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@dataclass
class Sample:
    class_name: str
    jpeg: bytes
    png: bytes
    gray: np.ndarray        # decoded JPEG (what readers of the file see)
    mask: np.ndarray        # uint8 0 / 255
    shape: str
    direction: str
    distribution: str
    components: int
    t2: str


def _geometry(binary: np.ndarray, drawn: Drawn) -> tuple[str, int, np.ndarray]:
    """(Spatial Distribution, component count, centroids) from the drawn mask (docs/synthetic.md)."""
    labels, count = ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return "unclear", 0, np.zeros((0, 2))
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    n = np.bincount(lab, minlength=count + 1)[1:]
    centroids = np.stack([np.bincount(lab, weights=ys, minlength=count + 1)[1:] / n,
                          np.bincount(lab, weights=xs, minlength=count + 1)[1:] / n], axis=1)
    if count == 1:
        return "isolated", 1, centroids
    spread = np.sqrt(((centroids - centroids.mean(0)) ** 2).sum(1)).mean() / binary.shape[0]
    return ("clustered" if spread < CLUSTER_SPREAD else "scattered"), int(count), centroids


def _size_phrase(drawn: Drawn, area_share: float) -> str:
    if drawn.extent_word == "area" or drawn.extent <= 0:
        return f"covering about {max(1, round(100 * area_share))}% of the image"
    return f"about {max(1, round(drawn.extent))} pixels {drawn.extent_word}"


def _t2_sentence(rng: np.random.Generator, class_name: str, drawn: Drawn, direction: str, count: int,
                 shares: list[list[Any]], area_share: float, diff: float, along_rolling: bool) -> str:
    if drawn.collective:
        noun = drawn.collective
        if count > 1:
            noun += f" in {NUMBER_WORDS[count] if count <= 5 else 'many'} separate pieces"
        be, pron, cnt = "is", "it", "a"
    else:
        noun = drawn.noun[0] if count == 1 else drawn.noun[1]
        be, pron = ("is", "it") if count == 1 else ("are", "they")
        cnt = count_phrase(rng, count)
    size_adj = size_adjective(area_share)
    adv, cmp_word = tone(diff)
    tone_text = (f"{adv} {cmp_word} than the surrounding steel" if adv else "similar in tone to the surrounding steel")
    orient = orientation_phrase(rng, direction, along_rolling)
    pos = position_phrase(rng, shares)
    size = _size_phrase(drawn, area_share)
    extra = f" {drawn.extras[0]}" if drawn.extras else ""
    cls = class_name.lower()
    template = int(rng.integers(4))
    if template == 0:
        parts = [f"The {cls} defect appears as {cnt} {size_adj} {noun}{extra}", orient, tone_text, size, pos]
        text = ", ".join(p for p in parts if p) + "."
    elif template == 1:
        text = f"{cnt[0].upper() + cnt[1:]} {size_adj} {noun}{extra} {be} visible {pos}; {pron} {be} {tone_text}"
        text += (f", {orient}" if orient else "") + f", {size}."
    elif template == 2:
        article = "an" if cls[0] in "aeiou" else "a"
        where = pos if pos.startswith(("spread", "across")) else f"located {pos}"
        text = (f"This steel surface shows {article} {cls} defect: {cnt} {noun}{extra} {size}"
                + (f", {orient}" if orient else "") + f", {where} and {tone_text}.")
    else:
        pos_cap = pos[0].upper() + pos[1:]
        look = f"{adv} {cmp_word}" if adv else "faint"
        text = f"{pos_cap}, {cnt} {size_adj}, {look} {noun}"
        text += f"{extra} can be seen" + (f", {orient}" if orient else "") + f"; {pron} {be} {size}."
    return fix_articles(text)


def render_sample(class_name: str, *, seed: int = 0, split: str = "train", n: int = 1, size: int = 256) -> Sample:
    """Draw one image of `class_name` (deterministic in seed, class, split, n, size); no files written."""
    if class_name not in KINDS:
        raise ValueError(f"no synthetic kind for class {class_name!r}: use one of {', '.join(DEFAULT_CLASSES)}")
    rng = _image_rng(seed, class_name, split, n)
    surf = _steel_surface(rng, size)
    for _attempt in range(50):
        drawn = KINDS[class_name].draw(rng, surf)
        binary = drawn.alpha >= 0.5
        if binary.any():
            break
    else:  # pragma: no cover - would need 50 draws entirely off the image
        raise RuntimeError(f"could not draw a visible {class_name} at size {size}")
    img = surf.image + drawn.delta * drawn.alpha
    gray = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    mask = (binary * 255).astype(np.uint8)
    jpeg = _encode_jpeg(gray)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"))
    distribution, count, _ = _geometry(binary, drawn)
    direction = "none" if drawn.angle is None else _direction(drawn.angle)
    inside = float(decoded[binary].mean())
    outside = float(decoded[~binary].mean()) if (~binary).any() else inside
    area_share = float(binary.mean())
    along_rolling = False
    if drawn.angle is not None:
        off = abs(math.degrees(drawn.angle - surf.rolling_angle)) % 180.0
        along_rolling = min(off, 180.0 - off) <= DIRECTION_TOLERANCE
    if drawn.collective:  # a network: its visible extent, not the drawing region's
        ys, xs = np.nonzero(binary)
        drawn.extent = float(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1)
    t2 = _t2_sentence(rng, class_name, drawn, direction, count, compute_position(mask), area_share, inside - outside,
                      along_rolling)
    assert drawn.shape in SHAPES and direction in DIRECTIONS and distribution in DISTRIBUTIONS
    return Sample(class_name, jpeg, _encode_png(mask), decoded, mask, drawn.shape, direction, distribution,
                  count, t2)


def _annotate(sample: Sample) -> tuple[dict[str, Any], str]:
    """T3 / T4 from the annotation engine (five rule fields measured, three geometry fields as drawn)."""
    t3, t4 = annotate(sample.gray, sample.mask, sample.class_name, shape=sample.shape,
                      direction=sample.direction, distribution=sample.distribution)
    return t3, t4


# ------------------------------------------------------------------------------------------------------------
# writing a dataset
# ------------------------------------------------------------------------------------------------------------
def _resolve_classes(classes: Iterable[str] | str | None) -> list[str]:
    if classes is None:
        return list(DEFAULT_CLASSES)
    if isinstance(classes, str):
        classes = [classes]
    classes = [part for item in classes for part in str(item).split(",")]  # "bs,ds" as well as ["bs", "ds"]
    by_prefix = {CLASS_TO_PREFIX[c]: c for c in KINDS}
    by_lower = {c.lower(): c for c in KINDS}
    out: list[str] = []
    for raw in classes:
        name = str(raw).strip()
        if not name:
            continue
        resolved = KINDS.get(name) and name or by_prefix.get(name) or by_lower.get(name.lower())
        if resolved is None:
            raise ValueError(f"classes: {name!r} is not a synthetic kind; choose from "
                             f"{', '.join(f'{c} ({CLASS_TO_PREFIX[c]})' for c in DEFAULT_CLASSES)}")
        if resolved not in out:
            out.append(resolved)
    if not out:
        raise ValueError("classes: the list is empty")
    return sorted(out)


def _check_params(train_per_class: int, val_per_class: int, seed: int, size: int) -> None:
    for name, value, low in (("train_per_class", train_per_class, 0), ("val_per_class", val_per_class, 0),
                             ("seed", seed, 0), ("size", size, 32)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if train_per_class + val_per_class == 0:
        raise ValueError("train_per_class + val_per_class must be at least 1")


def _synthetic_md(summary: dict[str, Any]) -> str:
    rows = "\n".join(f"| {c} | {CLASS_TO_PREFIX[c]} | {v['train']} | {v['val']} |"
                     for c, v in summary["per_class"].items())
    return f"""# SYNTHETIC demo data -- not SteelDefectX

Every image here was drawn by `sdx.data.synthetic` (generator version {summary['generator_version']}, seed
{summary['seed']}, {summary['size']}x{summary['size']} pixels). It imitates the layout and annotation schema of
the SteelDefectX release so the project runs offline, but it is NOT steel data: no accuracy, retrieval or
segmentation figure obtained on it says anything about real steel defects. Report nothing from it as a result
without saying that it is synthetic.

Regenerate with: `python steeldefectx.py generate OUT --seed {summary['seed']} --size {summary['size']} \\
--train_per_class {summary['train_per_class']} --val_per_class {summary['val_per_class']}`

- T1 (class_descriptions.json): sentences written for the generator, not the release's.
- T2 (natural_language_description): one sentence per image made from the drawn geometry.
- T3 / T4: {summary['t3_source']}.

| class | prefix | train | val |
|---|---|---|---|
{rows}
"""


def generate(out_dir: str | os.PathLike, *, train_per_class: int = 12, val_per_class: int = 6, seed: int = 0,
             size: int = 256, classes: Iterable[str] | str | None = None, progress: bool = True,
             overwrite: bool = False) -> dict[str, Any]:
    """Write a synthetic dataset in the official layout to `out_dir` and return a summary dict.

    classes: class names or file prefixes of KINDS (default: all 25). `out_dir` must be absent or empty unless
    overwrite=True (then the layout's files and folders in it are replaced).
    """
    start = time.perf_counter()
    _check_params(train_per_class, val_per_class, seed, size)
    names = _resolve_classes(classes)
    out = _prepare_out_dir(Path(out_dir), overwrite)
    jobs = [(split, c, n) for c in names for split, n in
            [("train", i) for i in range(1, train_per_class + 1)]
            + [("val", train_per_class + i) for i in range(1, val_per_class + 1)]]
    width = max(2, len(str(train_per_class + val_per_class)))
    records: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for split, c, n in tqdm(jobs, desc="synthetic images", unit="img", disable=not progress):
        stem = f"{CLASS_TO_PREFIX[c]}_{n:0{width}d}"
        records[split].append(_write_sample(out, split, stem, render_sample(c, seed=seed, split=split, n=n,
                                                                             size=size)))
    (out / "class_descriptions.json").write_text(
        json.dumps({c: T1_SENTENCES[c] for c in names}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for split in SPLITS:
        (out / f"{split}-text.json").write_text(json.dumps(records[split], indent=1, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    summary = {
        "out_dir": str(out),
        "synthetic": True,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": int(size),
        "train_per_class": int(train_per_class),
        "val_per_class": int(val_per_class),
        "classes": names,
        "per_class": {c: {"train": train_per_class, "val": val_per_class} for c in names},
        "splits": {"train": len(records["train"]), "val": len(records["val"])},
        "images": len(jobs),
        "t3_source": "sdx.annotate.engine.annotate on the decoded JPEG and the mask (Shape, Direction, Spatial "
                     "Distribution passed from the drawing)",
    }
    (out / "SYNTHETIC.md").write_text(_synthetic_md(summary), encoding="utf-8")
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def _prepare_out_dir(out: Path, overwrite: bool) -> Path:
    """Check `out` (absent, empty, or overwrite=True: the layout's folders removed) and create the folders."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: folder is not empty (pass overwrite=True / --overwrite to replace it)")
        for sub in ("train", "val", "train_mask", "val_mask"):
            shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("train", "val", "train_mask", "val_mask"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    return out


def _write_sample(out: Path, split: str, stem: str, sample: Sample) -> dict[str, Any]:
    """Write one sample's image and mask; returns its record (T3 / T4 from the annotation engine)."""
    (out / split / f"{stem}.jpg").write_bytes(sample.jpeg)
    (out / f"{split}_mask" / f"{stem}.png").write_bytes(sample.png)
    t3, t4 = _annotate(sample)
    return {
        "image_name": f"{stem}.jpg",
        "class_name": sample.class_name,
        "natural_language_description": sample.t2,
        "structured_attributes": t3,
        "template_sentence": t4,
    }


# ------------------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------------------
def cache_root() -> Path:
    env = os.environ.get("STEELDEFECTX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "steeldefectx"


def _code_digest() -> str:
    """Digest of the code that determines the files (this module, the annotation engine and its phrases, the text
    module)."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for name in ("data/synthetic.py", "annotate/engine.py", "annotate/geometry.py", "annotate/images.py",
                 "annotate/phrases.py", "data/levels.py"):
        p = package / name
        h.update(name.encode())
        h.update(p.read_bytes() if p.is_file() else b"<absent>")
    return h.hexdigest()


def cache_key(*, train_per_class: int = 12, val_per_class: int = 6, seed: int = 0, size: int = 256,
              classes: Iterable[str] | str | None = None) -> str:
    _check_params(train_per_class, val_per_class, seed, size)
    params = {"train_per_class": int(train_per_class), "val_per_class": int(val_per_class), "seed": int(seed),
              "size": int(size), "classes": _resolve_classes(classes), "version": GENERATOR_VERSION,
              "code": _code_digest()}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def default_dataset_dir(*, progress: bool = False, **params: Any) -> Path:
    """Path of the cached synthetic dataset for `params` (those of `generate`), generating it once.

    The folder is $STEELDEFECTX_CACHE (default ~/.cache/steeldefectx) / synthetic-<hash of params, generator
    version and code digest>. Generation goes to a temporary sibling folder published with os.replace, so a
    folder that exists is complete.
    """
    unknown = set(params) - {"train_per_class", "val_per_class", "seed", "size", "classes"}
    if unknown:
        raise TypeError(f"default_dataset_dir: unknown parameter(s) {', '.join(sorted(unknown))}")
    root = cache_root()
    final = root / f"synthetic-{cache_key(**params)}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        generate(tmp, progress=progress, **params)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; publish it like any other folder
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # a concurrent writer published it first: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------------------------
# gallery
# ------------------------------------------------------------------------------------------------------------
def contact_sheet(data_dir: str | os.PathLike, out_png: str | os.PathLike, n_per_class: int = 2,
                  split: str = "train") -> Path:
    """Render n_per_class images per class with their mask outlined in red and their T2 caption to a PNG."""
    import matplotlib  # heavy and optional: only the contact sheet draws
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    data_dir = Path(data_dir)
    classes = list(json.loads((data_dir / "class_descriptions.json").read_text(encoding="utf-8")))
    records = json.loads((data_dir / f"{split}-text.json").read_text(encoding="utf-8"))
    by_class: dict[str, list[dict]] = {c: [] for c in classes}
    for r in records:
        if r["class_name"] in by_class and len(by_class[r["class_name"]]) < n_per_class:
            by_class[r["class_name"]].append(r)
    rows = [c for c in classes if by_class[c]]
    fig, axes = plt.subplots(len(rows), 2 * n_per_class, figsize=(4.2 * n_per_class, 2.6 * len(rows)),
                             squeeze=False)
    for i, c in enumerate(rows):
        for j in range(n_per_class):
            ax_img, ax_mask = axes[i][2 * j], axes[i][2 * j + 1]
            for ax in (ax_img, ax_mask):
                ax.set_xticks([])
                ax.set_yticks([])
            if j >= len(by_class[c]):
                ax_img.axis("off")
                ax_mask.axis("off")
                continue
            r = by_class[c][j]
            stem = Path(r["image_name"]).stem
            img = np.asarray(Image.open(data_dir / split / r["image_name"]).convert("L"))
            mask_path = data_dir / f"{split}_mask" / f"{stem}.png"
            ax_img.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax_img.set_title(f"{c} ({r['image_name']})", fontsize=7)
            ax_mask.imshow(img, cmap="gray", vmin=0, vmax=255)
            if mask_path.is_file():
                m = np.asarray(Image.open(mask_path).convert("L")) > 127
                ax_mask.contour(m, levels=[0.5], colors="red", linewidths=0.6)
            t3 = r.get("structured_attributes") or {}
            ax_mask.set_title(" / ".join(str(t3.get(k, "?")) for k in ("Shape", "Scale", "Polarity")), fontsize=6)
            ax_img.set_xlabel("\n".join(textwrap.wrap(r.get("natural_language_description", ""), 60)[:4]),
                              fontsize=5)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------
def _cli_generate(args: argparse.Namespace) -> dict[str, Any]:
    try:
        summary = generate(args.out, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                           seed=args.seed, size=args.size, classes=args.classes, progress=not args.quiet,
                           overwrite=args.overwrite)
    except (FileExistsError, NotADirectoryError) as error:  # one-line CLI error (main catches ValueError)
        raise ValueError(str(error)) from error
    if args.contact_sheet:
        summary["contact_sheet"] = str(contact_sheet(args.out, args.contact_sheet, n_per_class=2))
    print(f"wrote {summary['images']} synthetic images ({summary['splits']['train']} train, "
          f"{summary['splits']['val']} val, {len(summary['classes'])} classes) to {summary['out_dir']} "
          f"in {summary['seconds']:.1f} s")
    return summary


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `generate` subcommand (func returns generate()'s summary dict)."""
    p = subparsers.add_parser(
        "generate", help="write the embedded synthetic demo dataset (official layout) to a folder",
        description="Draw a seeded synthetic steel-defect dataset (grayscale textures with drawn defects of "
                    f"{len(KINDS)} kinds named after SteelDefectX classes, masks, T1-T4 text) in the official "
                    "SteelDefectX layout. Demo and test data only: report nothing from it as a real result.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", metavar="OUT", help="output folder (absent or empty, unless --overwrite)")
    p.add_argument("--train_per_class", type=int, default=12, help="train images per class")
    p.add_argument("--val_per_class", type=int, default=6, help="val images per class")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> byte-identical files)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (>= 32)")
    p.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                   help="class names or file prefixes to draw (default: all of "
                        + ", ".join(CLASS_TO_PREFIX[c] for c in DEFAULT_CLASSES) + ")")
    p.add_argument("--overwrite", action="store_true", help="replace the layout in a non-empty OUT")
    p.add_argument("--contact_sheet", metavar="PNG", default=None,
                   help="also render 2 images per class with masks and captions to this PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli_generate)
    return p
