"""The data gallery: images with their masks and every text level T0-T4 (for the README and the main job)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import datasets
import numpy as np
from scipy import ndimage

from sdx.data import levels as T
from sdx.report.plots import pyplot


def _pick_rows(data, n_rows: int, seed: int) -> list[int]:
    """``n_rows`` rows of different classes (rows with a mask first), sorted by class name."""
    raw = data.cast_column("mask", datasets.Image(decode=False)) if "mask" in data.column_names else data
    has_mask = [m is not None for m in raw["mask"]]
    classes = list(raw["class_name"])
    order = np.random.default_rng(seed).permutation(len(classes))
    picked, seen = [], set()
    for want_mask in (True, False):  # one image per class, images with a mask first
        for i in order:
            if len(picked) == n_rows:
                break
            if has_mask[i] == want_mask and classes[i] not in seen:
                picked.append(int(i))
                seen.add(classes[i])
    return sorted(picked, key=lambda i: classes[i])


def _text_block(ex: dict) -> str:
    attrs = ex["t3"]
    lines = [("T0", ex["t0"]), ("T1", ex["t1"]),
             ("T2", ex["t2"] or "(none in this release)"),
             ("T3", T.render_t3({**attrs, "Position": T.position_from_records(attrs["Position"])})
              if attrs else "(none in this release)"),
             ("T4", ex["t4"] or "(none in this release)")]
    return "\n".join(textwrap.fill(f"{lv}: {txt}", 120, subsequent_indent="      ") for lv, txt in lines)


def _draw_row(row, ex: dict) -> None:
    """image | image with the mask outlined | the text levels, on one row of axes."""
    img = np.asarray(ex["image"].convert("L"))
    row[0].imshow(img, cmap="gray", vmin=0, vmax=255)
    row[0].set_title(f"{ex['class_name']}\n{ex['image_name']}", fontsize=9)
    row[1].imshow(img, cmap="gray", vmin=0, vmax=255)
    if ex["mask"] is not None:
        m = np.asarray(ex["mask"].convert("L")) > 127
        edge = m & ~ndimage.binary_erosion(m, iterations=2)
        overlay = np.zeros((*m.shape, 4))
        overlay[m] = (1, 0.2, 0.2, 0.25)
        overlay[edge] = (1, 0, 0, 1)
        row[1].imshow(overlay)
        row[1].set_title("mask (> 127)", fontsize=9)
    else:
        row[1].set_title("no mask in the release", fontsize=9)
    row[2].text(0.0, 1.0, _text_block(ex), va="top", ha="left", fontsize=7.5, family="monospace", wrap=False)
    for ax in row:
        ax.set_xticks([])
        ax.set_yticks([])
    row[2].axis("off")


def data_gallery(ds, out_png: str | os.PathLike, *, split: str = "test", n_rows: int = 8, seed: int = 0,
                 title: str | None = None, dpi: int = 110) -> Path:
    """Draw ``n_rows`` images of different classes (those with a mask first) with their mask outlined and
    their text at every level T0-T4, marking the levels the record lacks. ``ds``: a DatasetDict or Dataset
    from sdx.data.builder.load_steeldefectx."""
    plt = pyplot()
    data = ds[split] if hasattr(ds, "keys") else ds
    picked = _pick_rows(data, n_rows, seed)
    fig, axes = plt.subplots(len(picked), 3, figsize=(15, 2.9 * len(picked)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 3.6]})
    for row, i in zip(axes, picked):
        _draw_row(row, data[i])
    fig.suptitle(title or f"SteelDefectX {split} split: images, masks and text levels T0-T4", fontsize=11)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
