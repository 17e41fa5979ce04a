"""results.json, report.md and the PNG plots of a benchmark run.

``write_report(results, output_dir, artifacts)`` writes:

- ``results.json``: everything the tasks returned plus ``meta`` (data, models, seeds, shots, versions, time);
- ``report.md``: our numbers beside the paper's (``PAPER``, from the project reference, section 3) where task and
  metric match, and, before any number, what produced it: the data (a synthetic set is flagged as synthetic in the
  title and before every table: it is NOT SteelDefectX and its numbers say nothing about the paper), each model's
  origin (pretrained / random init / unknown), training caption level, method, and the seeds and shots;
- PNGs: ``confusion_task1.png`` (row-normalised), ``kshot_curve.png`` (mean +- std over seeds per k),
  ``txty_heatmap_<metric>.png`` (Task 2), ``localization_<model>.png`` (image, mask, score map overlay).

``data_gallery(ds, png)`` (written by the lead) draws a few images with their masks and every text level T0-T4.

Paper numbers are the paper's models on the full SteelDefectX val split; ours are whatever checkpoint was given,
so a side-by-side is a reference point, not a like-for-like comparison unless the model and data match.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np

# The paper's numbers (reference section 3); "approx" marks values read off a figure.
PAPER = {
    "task1": [  # (model, Acc, mAcc) on val, first version
        ("ShuffleNetV2", 96.34, 94.98), ("ResNet-101 (may be a transcription error)", 93.63, 91.19),
        ("ViT-B/16", 44.84, 40.31)],
    "task2": [  # (model, train level, test level, Acc, mAcc)
        ("Long-CLIP ViT-L/14 + CLIP-Adapter", "t2", "t0", 93.63, 92.56),
        ("Long-CLIP ViT-L/14 + CLIP-Adapter", "t3", "t0", 94.45, 93.66),
        ("OpenCLIP ViT-L/14 + CLIP-Adapter (v1, fine text)", "t2", "t0", 88.21, 87.54),
        ("CLIP ViT-B/16 + CLIP-Adapter (v1, fine text)", "t2", "t0", 81.84, 81.14)],
    "zero_shot": {"t0": 7.57, "t1": 11.27},  # Acc
    "few_shot": {  # Acc, approx (read off a figure), k = 1 and 8
        "Long-CLIP-Adapter": {1: 60.0, 8: 88.0}, "Tip-Adapter-F": {1: 55.0, 8: 85.0}},
    "transfer": [  # (text used in training, aluminium MSD-Cls, steel tube CGFSDS-9), Long-CLIP ViT-L/14 Acc
        ("none (plain zero-shot)", 8.60, 25.11), ("T0", 12.90, 28.31), ("T1", 20.43, 33.79),
        ("raw GPT-4o", 25.27, 34.25), ("refined description (T2)", 29.03, 40.18)],
    "localization": [  # (method, pixel AUROC, F1-max, IoU)
        ("AnomalyCLIP", 88.21, 53.36, 37.49), ("Long-CLIP with T0", 78.96, 40.46, 21.92),
        ("WinCLIP (about)", 71.87, 31.16, 16.68)],
}


def _jsonable(obj: Any):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _f(x, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def data_is_synthetic(data: dict) -> bool:
    return bool(data.get("synthetic"))


# ---------------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(conf: dict, path: Path, title: str) -> Path:
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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
    from matplotlib import colormaps
    from PIL import Image as PILImage
    from PIL import ImageDraw

    jet = colormaps["jet"]
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


# ---------------------------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------------------------
def _data_lines(meta: dict) -> list[str]:
    data = meta.get("data", {})
    lines = ["## Data", ""]
    if data_is_synthetic(data):
        lines += [("> **SYNTHETIC DEMO DATA.** These images were drawn by sdx.data.synthetic; they are not SteelDefectX "
                  "and not steel photographs. No number below says anything about the paper's benchmark."), ""]
    lines += [(f"- data: `{data.get('data_dir')}` (config `{data.get('config')}`), "
              f"{data.get('description', 'no description')}"),
              ("- evaluated on split `test` (= the official val split); hyper-parameters selected on `validation` "
              "(a carve-out of official train)")]
    for name, s in (meta.get("splits") or {}).items():
        lines.append(f"- split `{name}`: {s['images']} images used (fingerprint {s['fingerprint']})")
    if meta.get("max_eval_samples"):
        lines.append(f"- **subsampled**: validation and test limited to {meta['max_eval_samples']} images "
                     "(seeded); numbers are not comparable to full-split numbers")
    lines.append("")
    return lines


def _model_lines(results: dict) -> list[str]:
    lines = ["## Models", "", "| name | kind | origin | trained with | method | training seed | fingerprint |",
             "|---|---|---|---|---|---|---|"]
    models = list(results.get("models") or [])
    t1 = results.get("task1") or {}
    if isinstance(t1, dict) and t1.get("model"):
        models.append(t1["model"])
    for m in models:
        lvl = m.get("train_level")
        lines.append(f"| {m['name']} | {m['kind']} | {m.get('origin') or 'unknown'} | "
                     f"{lvl.upper() if lvl else '-'} | {m.get('method') or '-'} | {'-' if m.get('seed') is None else m['seed']} | "
                     f"{m.get('fingerprint')} |")
    lines.append("")
    return lines


def render_markdown(results: dict) -> str:
    meta = results.get("meta", {})
    synthetic = data_is_synthetic(meta.get("data", {}))
    flag = " (SYNTHETIC DATA)" if synthetic else ""
    warn = ["> Synthetic data: not SteelDefectX; paper numbers shown only as the target scale.", ""] if synthetic else []
    L = [f"# SteelDefectX benchmark report{flag}", "",
         (f"Generated {meta.get('created')} by eval_benchmark.py; tasks: {', '.join(meta.get('tasks', []))}. "
         f"Few-shot seeds {meta.get('seeds')}, shots {meta.get('shots')}. Percentages throughout. Paper numbers are "
         "the paper's models on the full SteelDefectX val split (reference section 3): a reference point, not a "
         "like-for-like comparison unless model and data match."), ""]
    L += _data_lines(meta) + _model_lines(results)

    t1 = results.get("task1")
    if t1:
        L += ["## Task 1: vision-only classification", ""] + warn
        if t1.get("skipped"):
            L += [f"Skipped: {t1['skipped']}.", ""]
        else:
            L += ["| model | Acc | mAcc | macro-F1 | n |", "|---|---|---|---|---|",
                  (f"| ours: {t1['model']['name']} ({t1['model'].get('origin')}) | {_f(t1['acc'])} | {_f(t1['macc'])} | "
                  f"{_f(t1['macro_f1'])} | {t1['n']} |")]
            L += [f"| paper: {m} | {a:.2f} | {b:.2f} | - | 2324 |" for m, a, b in PAPER["task1"]]
            L += ["", "Per class (test):", "", "| class | support | recall | precision | F1 |", "|---|---|---|---|---|"]
            L += [f"| {r['class']} | {r['support']} | {_f(r['recall'])} | {_f(r['precision'])} | {_f(r['f1'])} |"
                  for r in t1["per_class"]]
            L += ["", "![confusion matrix](confusion_task1.png)", ""]

    t2 = results.get("task2")
    if t2:
        levels = t2["test_levels"]
        L += ["## Task 2: vision-language classification (Tx-Ty: train with Tx, class prompts at Ty)", ""] + warn
        L += [(f"Candidate classes: {len(t2['candidates'])}. Sample-level prompts (T2-T4) are the mean embedding of "
              "the class's training captions. Acc / mAcc:"), "",
              "| model (train level) | " + " | ".join(f"T{lv[1]}" for lv in levels) + " |",
              "|---" * (len(levels) + 1) + "|"]
        notes = []
        for r in t2["rows"]:
            cells = []
            for lv in levels:
                c = r["results"][lv]
                if not c.get("available"):
                    cells.append("n/a")
                    notes.append(f"{r['model']} T{lv[1]}: {c.get('unavailable')}")
                else:
                    cells.append(f"{_f(c['acc'])} / {_f(c['macc'])}")
                    if c.get("fallback_to_t1"):
                        notes.append(f"{r['model']} T{lv[1]}: {len(c['fallback_to_t1'])} class(es) without captions "
                                     f"at this level used their T1 sentence ({', '.join(c['fallback_to_t1'])})")
            L.append(f"| ours: {r['model']} ({r['train_level'].upper()}) | " + " | ".join(cells) + " |")
        for m, x, y, a, b in PAPER["task2"]:
            cells = [f"{a:.2f} / {b:.2f}" if lv == y else "" for lv in levels]
            L.append(f"| paper: {m} ({x.upper()}) | " + " | ".join(cells) + " |")
        L += [""] + [f"- {n}" for n in dict.fromkeys(notes)] + ["", "![Tx-Ty Acc](txty_heatmap_acc.png)", ""]

    t3 = results.get("task3")
    if t3:
        L += ["## Task 3: zero-shot and few-shot", ""] + warn
        for model, res in t3.items():
            zs = res.get("zero_shot", {})
            L += [f"### {model}", "", "Zero-shot (test Acc / mAcc per prompt level):", "",
                  "| level | ours Acc | ours mAcc | paper Acc |", "|---|---|---|---|"]
            for lv, c in zs.items():
                paper = PAPER["zero_shot"].get(lv)
                ours = (f"{_f(c['acc'])} | {_f(c['macc'])}" if c.get("available") else "n/a | n/a")
                L.append(f"| T{lv[1]} | {ours} | {_f(paper) if paper else '-'} |")
            fs = res.get("few_shot") or {}
            if res.get("few_shot_skipped"):
                L += ["", f"Few-shot skipped: {res['few_shot_skipped']}."]
            if fs:
                ks = sorted({int(k) for per in fs.values() for k in per})
                L += ["", ("Few-shot, test Acc mean +- std over seeds (support from train only; C / alpha, beta "
                      "selected on validation):"), "", "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
                      "|---" * (len(ks) + 1) + "|"]
                for method, per_k in fs.items():
                    L.append(f"| ours: {method} | " + " | ".join(
                        f"{_f(per_k[str(k)]['acc_mean'])} +- {_f(per_k[str(k)]['acc_std'])}" if str(k) in per_k
                        else "-" for k in ks) + " |")
                for method, vals in PAPER["few_shot"].items():
                    L.append(f"| paper (approx, figure): {method} | " + " | ".join(
                        f"~{vals[k]:.0f}" if k in vals else "" for k in ks) + " |")
            L.append("")
        L += ["![k-shot curve](kshot_curve.png)", ""]

    t4 = results.get("task4")
    if t4:
        L += ["## Task 4: zero-shot transfer", ""] + warn
        for model, res in t4.items():
            cc = res.get("cross_class", {})
            L += [f"### {model}", "",
                  (f"Cross-class on SteelDefectX: unseen classes {cc.get('unseen_classes')} ({cc.get('source')}); "
                  f"the model {'excluded' if cc.get('model_excluded_unseen') else 'is NOT known to have excluded'} "
                  "them in training; "
                  f"{cc.get('n_test')} test images."), ""]
            if cc.get("levels"):
                L += ["| prompt level | Acc | mAcc |", "|---|---|---|"]
                for lv, c in cc["levels"].items():
                    L.append(f"| T{lv[1]} | {_f(c.get('acc'))} | {_f(c.get('macc'))} |" if c.get("available")
                             else f"| T{lv[1]} | n/a | n/a |")
            elif cc.get("skipped"):
                L.append(f"Skipped: {cc['skipped']}.")
            for name, ext in (res.get("external") or {}).items():
                L += ["", (f"External set `{name}` ({ext['n_images']} images, {len(ext['classes'])} classes): "
                      f"T0 Acc {_f(ext['t0']['acc'])}, T1 (descriptions) Acc {_f(ext['t1']['acc'])}.")]
            L.append("")
        L += ["Paper (Long-CLIP ViT-L/14 trained on SteelDefectX, Acc on external sets; for reference):", "",
              "| text used in training | aluminium (MSD-Cls) | steel tube (CGFSDS-9) |", "|---|---|---|"]
        L += [f"| {t} | {a:.2f} | {b:.2f} |" for t, a, b in PAPER["transfer"]] + [""]

    rt = results.get("retrieval")
    if rt:
        L += ["## Retrieval (test images vs their own sample-level captions)", ""] + warn
        L += ["| model | captions | images | distinct texts | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for model, res in rt.items():
            for lv, c in res.items():
                if not c.get("available"):
                    L.append(f"| {model} | T{lv[1]} | n/a: {c.get('reason')} |||||||| ")
                    continue
                i, t = c["i2t"], c["t2i"]
                L.append(f"| {model} | T{lv[1]} | {c['images']} | {c['texts']} | {_f(i['R@1'])} | {_f(i['R@5'])} | "
                         f"{_f(i['R@10'])} | {_f(t['R@1'])} | {_f(t['R@5'])} | {_f(t['R@10'])} |")
        L += ["", "The paper's retrieval tables were not found; no paper numbers to compare.", ""]

    loc = results.get("localization")
    if loc:
        L += ["## Text-guided localization (pixel-level, test images with masks)", ""] + warn
        if loc.get("skipped"):
            L += [f"Skipped: {loc['skipped']}.", ""]
        else:
            L += ["| method | prompt | pixel AUROC | F1-max | IoU | images |", "|---|---|---|---|---|---|"]
            for model, res in loc.items():
                if res.get("skipped"):
                    L.append(f"| ours: {model} | - | skipped: {res['skipped']} | | | |")
                    continue
                for lv in ("t0", "t1"):
                    c = res.get(lv)
                    if c and c.get("pixel_auroc") is not None:
                        L.append(f"| ours: {model} | T{lv[1]} | {_f(c['pixel_auroc'])} | {_f(c['f1_max'])} | "
                                 f"{_f(c['iou'])} | {res['images']} |")
            L += [f"| paper: {m} | {'T0' if 'T0' in m else '-'} | {a:.2f} | {b:.2f} | {c:.2f} | val |"
                  for m, a, b, c in PAPER["localization"]]
            L += [""] + [f"![overlays {m}](localization_{_slug(m)}.png)" for m in loc] + [""]

    hp = results.get("hyperparameters") or []
    if hp:
        splits = sorted({h["selected_on"] for h in hp})
        L += ["## Selected hyper-parameters", "",
              (f"{len(hp)} selections, all on split(s): {', '.join(splits)} (grid order breaks ties). "
              "Full list with grids and validation scores in results.json."), "",
              "| model | method | k | seed | name | value | val Acc | selected on |", "|---|---|---|---|---|---|---|---|"]
        L += [f"| {h['model']} | {h['method']} | {h['k']} | {h['seed']} | {h['name']} | {h['value']} | "
              f"{_f(h['score'])} | {h['selected_on']} |" for h in hp[:60]]
        if len(hp) > 60:
            L.append(f"| ... {len(hp) - 60} more in results.json |||||||")
        L.append("")
    cache = results.get("cache") or {}
    L += ["## Run", "", "- encoder cache: " + ", ".join(f"{k}: {v['encoded']} encoded / {v['reused']} reused"
                                                       for k, v in cache.items()),
          "- time per task (s): " + ", ".join(f"{k} {v:.1f}" for k, v in (results.get("timings_s") or {}).items()),
          f"- software: {meta.get('versions')}", ""]
    return "\n".join(L)


def write_report(results: dict, output_dir: str | Path, artifacts: dict | None = None) -> dict[str, str]:
    """Write results.json, report.md and the plots; returns {"results": path, "report": path, "plots": [...]}."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = results.setdefault("meta", {})
    meta.setdefault("created", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    meta.setdefault("versions", _versions())
    synthetic = data_is_synthetic(meta.get("data", {}))
    tag = " [SYNTHETIC DATA]" if synthetic else ""
    plots = []
    t1 = results.get("task1") or {}
    if t1.get("confusion"):
        plots.append(plot_confusion(t1["confusion"], out / "confusion_task1.png",
                                    f"Task 1 confusion: {t1['model']['name']}{tag}"))
    if results.get("task2"):
        for metric in ("acc", "macc"):
            p = plot_txty(results["task2"], out / f"txty_heatmap_{metric}.png", metric, f"Tx-Ty {metric}{tag}")
            if p:
                plots.append(p)
    if results.get("task3"):
        p = plot_kshot(results["task3"], out / "kshot_curve.png", f"few-shot test Acc{tag}")
        if p:
            plots.append(p)
    for model, items in ((artifacts or {}).get("overlays") or {}).items():
        p = plot_overlays(items, out / f"localization_{_slug(model)}.png", f"{model}: T0 prompt{tag}")
        if p:
            plots.append(p)
    meta["plots"] = [p.name for p in plots]
    clean = _jsonable(results)
    (out / "results.json").write_text(json.dumps(clean, indent=1))
    (out / "report.md").write_text(render_markdown(clean))
    return {"results": str(out / "results.json"), "report": str(out / "report.md"), "plots": [str(p) for p in plots]}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "datasets", "scikit-learn", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------------------------
# Data gallery: images, masks and every text level, for the README and the pipeline

def data_gallery(ds, out_png: str | os.PathLike, *, split: str = "test", n_rows: int = 8, seed: int = 0,
                 title: str | None = None, dpi: int = 110) -> Path:
    """Draw ``n_rows`` images of different classes (those with a mask first) with their mask outlined and
    their text at every level T0-T4, marking the levels the record lacks. ``ds``: a DatasetDict or Dataset
    from sdx.data.builder.load_steeldefectx."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from scipy import ndimage

    from sdx.data import levels as T

    data = ds[split] if hasattr(ds, "keys") else ds
    raw = data.cast_column("mask", datasets.Image(decode=False)) if "mask" in data.column_names else data
    has_mask = [m is not None for m in raw["mask"]]
    classes = list(raw["class_name"])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(classes))
    picked, seen = [], set()
    for want_mask in (True, False):  # one image per class, images with a mask first
        for i in order:
            if len(picked) == n_rows:
                break
            if has_mask[i] == want_mask and classes[i] not in seen:
                picked.append(int(i))
                seen.add(classes[i])
    picked.sort(key=lambda i: classes[i])
    fig, axes = plt.subplots(len(picked), 3, figsize=(15, 2.9 * len(picked)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 3.6]})
    for row, i in zip(axes, picked):
        ex = data[i]
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
        attrs = ex["t3"]
        lines = [("T0", ex["t0"]), ("T1", ex["t1"]),
                 ("T2", ex["t2"] or "(none in this release)"),
                 ("T3", T.render_t3({**attrs, "Position": T.position_from_records(attrs["Position"])})
                  if attrs else "(none in this release)"),
                 ("T4", ex["t4"] or "(none in this release)")]
        body = "\n".join(textwrap.fill(f"{lv}: {txt}", 120, subsequent_indent="      ") for lv, txt in lines)
        row[2].text(0.0, 1.0, body, va="top", ha="left", fontsize=7.5, family="monospace", wrap=False)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[2].axis("off")
    fig.suptitle(title or f"SteelDefectX {split} split: images, masks and text levels T0-T4", fontsize=11)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
