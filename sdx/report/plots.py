"""The report's plots: confusion matrix, k-shot curve, Tx-Ty heatmap, localization overlays (PNG files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

SYNTHETIC_TAG = " [SYNTHETIC DATA]"  # appended to the title of every plot drawn from synthetic data


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported on first use: heavy, and only for drawing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(conf: dict, path: Path, title: str) -> Path:
    plt = pyplot()
    m = np.asarray(conf["matrix"], dtype=float)
    norm = m / np.clip(m.sum(axis=1, keepdims=True), 1, None)
    n = len(conf["labels"])
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), conf["labels"], rotation=90, fontsize=7)
    ax.set_yticks(range(n), conf["labels"], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, label="row share")
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.3, bottom=0.3, right=0.95, top=0.92)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_kshot(task3: dict, path: Path, title: str) -> Path | None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for model, res in task3.items():
        for method, per_k in (res.get("few_shot") or {}).items():
            ks = sorted(int(k) for k in per_k)
            if not ks:
                continue
            mean = np.array([per_k[str(k)]["acc_mean"] for k in ks])
            std = np.array([per_k[str(k)]["acc_std"] for k in ks])
            ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=f"{model}: {method}")
            drawn = True
        zs = (res.get("zero_shot") or {}).get("t0", {})
        if zs.get("available"):
            ax.axhline(zs["acc"], ls="--", lw=1, color="grey", label=f"{model}: zero-shot T0")
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shots per class (k)")
    ax.set_ylabel("test Acc (%)  mean +- std over seeds")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.12, bottom=0.12, right=0.97, top=0.92)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_txty(task2: dict, path: Path, metric: str, title: str) -> Path | None:
    plt = pyplot()
    rows = task2.get("rows") or []
    levels = task2.get("test_levels") or []
    if not rows or not levels:
        return None
    m = np.full((len(rows), len(levels)), np.nan)
    for i, r in enumerate(rows):
        for j, lv in enumerate(levels):
            cell = r["results"].get(lv, {})
            if cell.get("available"):
                m[i, j] = cell[metric]
    fig, ax = plt.subplots(figsize=(1.5 + 1.0 * len(levels), 1.2 + 0.6 * len(rows)))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(levels)), [f"T{lv[1]}" for lv in levels])
    ax.set_yticks(range(len(rows)), [f"{r['model']} (train {r['train_level'].upper()})" for r in rows], fontsize=7)
    ax.set_xlabel("prompt level at test (Ty)")
    for i in range(len(rows)):
        for j in range(len(levels)):
            ax.text(j, i, "n/a" if np.isnan(m[i, j]) else f"{m[i, j]:.1f}", ha="center", va="center",
                    fontsize=7, color="black" if np.isnan(m[i, j]) or m[i, j] > 60 else "white")
    fig.colorbar(im, ax=ax, fraction=0.04, label=f"{metric} (%)")
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.4, bottom=0.2, right=0.95, top=0.88)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_overlays(items: list, path: Path, title: str) -> Path | None:
    """items: (image name, PIL image, score map [H, W], binary mask [H, W]) -> one PNG, a row per image:
    image | mask | image blended with the min-max scaled score map (jet) and the mask outline in white.
    Drawn with numpy + PIL (a matplotlib figure of this size costs seconds)."""
    if not items:
        return None
    jet = pyplot().colormaps["jet"]
    rows = []
    for name, im, score, mask in items:
        h, w = mask.shape
        img = np.asarray(im.convert("RGB").resize((w, h)), dtype=np.float32)
        sc = (score - score.min()) / max(float(np.ptp(score)), 1e-12)
        heat = jet(sc)[..., :3] * 255.0
        blend = 0.5 * img + 0.5 * heat
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
        blend[edge] = 255.0
        m = np.repeat(mask[..., None].astype(np.float32) * 255.0, 3, axis=2)
        row = np.concatenate([img, np.full((h, 4, 3), 255.0), m, np.full((h, 4, 3), 255.0), blend], axis=1)
        label = np.full((14, row.shape[1], 3), 255.0)
        rows.append(np.concatenate([label, row], axis=0).astype(np.uint8))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    canvas = PILImage.fromarray(np.concatenate([np.full((16, width, 3), 255, np.uint8)] + rows, axis=0))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), title, fill=(0, 0, 0))
    y = 16
    for (name, _, _, mask), r in zip(items, rows):
        draw.text((2, y + 1), f"{name}: image | mask (> 127) | text-patch score", fill=(0, 0, 0))
        y += r.shape[0]
    canvas.save(path)
    return path
