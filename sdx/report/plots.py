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


def _save_heatmap(plt, fig, ax, im, label: str, title: str, path: Path, margins: tuple[float, float, float]) -> Path:
    """Colour bar, title and margins (left, bottom, top) of a heatmap figure; written to ``path`` and closed."""
    fig.colorbar(im, ax=ax, fraction=0.04, label=label)
    ax.set_title(title, fontsize=9)
    left, bottom, top = margins
    fig.subplots_adjust(left=left, bottom=bottom, right=0.95, top=top)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    return _save_heatmap(plt, fig, ax, im, "row share", title, path, (0.3, 0.3, 0.92))


# task 3's methods as the report names them, and the paper curve each one is drawn beside
FEWSHOT_METHOD_LABELS = {"zero_shot": "zero-shot", "linear_probe": "linear probe",
                         "tip_adapter": "Tip-Adapter (training-free)", "tip_adapter_f": "Tip-Adapter-F",
                         "clip_adapter": "CLIP-Adapter"}
FEWSHOT_PAPER_METHOD = {"clip_adapter": "Long-CLIP-Adapter", "tip_adapter_f": "Tip-Adapter-F"}


def _kshot_axes(ax, model: str, fs: dict, text_level: str, paper: dict, paper_label: str, colors: dict,
                legend: dict) -> None:
    """One model's panel: a curve per method (mean +- std), its zero-shot line, the paper points of a method
    beside it (hollow squares in the method's colour, no line: two points read off a figure). Legend entries go
    to ``legend`` (label -> handle) in drawing order."""
    for method, per_k in fs.items():
        ks = sorted(int(k) for k in per_k)
        mean = np.array([per_k[str(k)]["acc_mean"] for k in ks])
        color = colors.setdefault(method, f"C{len(colors)}")
        label = FEWSHOT_METHOD_LABELS.get(method, method)
        if method == "zero_shot":
            label = f"ours: {label} ({text_level.upper()} prompts)"
            legend.setdefault(label, ax.axhline(mean[0], ls="--", lw=1, color=color))
            continue
        std = np.array([per_k[str(k)]["acc_std"] for k in ks])
        legend.setdefault(f"ours: {label}", ax.errorbar(ks, mean, yerr=std, marker="o", ms=4, capsize=3,
                                                        color=color))
        points = paper.get(FEWSHOT_PAPER_METHOD.get(method), {})
        if points:
            pk = sorted(points)
            handle = ax.plot(pk, [points[k] for k in pk], ls="none", marker="s", ms=7, mfc="none", color=color)[0]
            legend.setdefault(f"paper: {FEWSHOT_PAPER_METHOD[method]} ({paper_label})", handle)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({int(k) for per in fs.values() for k in per}))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.set_xlabel("shots per class (k)")
    ax.set_title(model, fontsize=8)


def plot_kshot(task3: dict, path: Path, title: str, paper: dict | None = None, paper_label: str = "",
               chance: dict | None = None) -> Path | None:
    """Few-shot test Acc against k: one panel per model (every method with its mean +- std over seeds, the
    model's zero-shot line, the paper's curves ({paper method: {k: Acc}}, labelled ``paper_label``) beside the
    method each belongs to, the majority-class Acc of ``chance`` as a grey line), one legend outside the panels."""
    models = [(m, r) for m, r in task3.items() if r.get("few_shot")]
    if not models:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(1.5 + 3.6 * len(models), 4.0), sharey=True, squeeze=False)
    colors: dict[str, str] = {}
    legend: dict = {}
    for ax, (model, res) in zip(axes[0], models):
        _kshot_axes(ax, model, res["few_shot"], (res.get("few_shot_text") or {}).get("level", "t0"), paper or {},
                    paper_label, colors, legend)
        if chance:
            legend.setdefault(f"chance: always the majority class ({chance['classes']} classes)",
                              ax.axhline(chance["majority_acc"], ls=":", lw=1, color="grey"))
    axes[0][0].set_ylabel("test Acc (%), mean +- std over seeds")
    fig.legend(list(legend.values()), list(legend), loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7,
               frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
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
    return _save_heatmap(plt, fig, ax, im, f"{metric} (%)", title, path, (0.4, 0.2, 0.88))


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
