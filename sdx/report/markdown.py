"""A benchmark run's outputs: ``write_report`` writes results.json, report.md (one section per task, our numbers
beside the paper's where task and metric match, synthetic data flagged) and the PNG plots; docs/benchmark.md
says how to read them."""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdx.report.plots import plot_confusion, plot_kshot, plot_overlays, plot_txty

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


def _header_lines(meta: dict, synthetic: bool) -> list[str]:
    flag = " (SYNTHETIC DATA)" if synthetic else ""
    return [f"# SteelDefectX benchmark report{flag}", "",
            (f"Generated {meta.get('created')} by eval_benchmark.py; tasks: {', '.join(meta.get('tasks', []))}. "
             f"Few-shot seeds {meta.get('seeds')}, shots {meta.get('shots')}. Percentages throughout. Paper numbers "
             "are the paper's models on the full SteelDefectX val split (reference section 3): a reference point, "
             "not a like-for-like comparison unless model and data match."), ""]


def _task1_lines(t1: dict, warn: list[str]) -> list[str]:
    L = ["## Task 1: vision-only classification", ""] + warn
    if t1.get("skipped"):
        return L + [f"Skipped: {t1['skipped']}.", ""]
    L += ["| model | Acc | mAcc | macro-F1 | n |", "|---|---|---|---|---|",
          (f"| ours: {t1['model']['name']} ({t1['model'].get('origin')}) | {_f(t1['acc'])} | {_f(t1['macc'])} | "
           f"{_f(t1['macro_f1'])} | {t1['n']} |")]
    L += [f"| paper: {m} | {a:.2f} | {b:.2f} | - | 2324 |" for m, a, b in PAPER["task1"]]
    L += ["", "Per class (test):", "", "| class | support | recall | precision | F1 |", "|---|---|---|---|---|"]
    L += [f"| {r['class']} | {r['support']} | {_f(r['recall'])} | {_f(r['precision'])} | {_f(r['f1'])} |"
          for r in t1["per_class"]]
    return L + ["", "![confusion matrix](confusion_task1.png)", ""]


def _txty_cell(row: dict, lv: str, notes: list[str]) -> str:
    """One Tx-Ty cell ("Acc / mAcc" or "n/a"); what the reader must know about it goes to ``notes``."""
    c = row["results"][lv]
    if not c.get("available"):
        notes.append(f"{row['model']} T{lv[1]}: {c.get('unavailable')}")
        return "n/a"
    if c.get("fallback_to_t1"):
        notes.append(f"{row['model']} T{lv[1]}: {len(c['fallback_to_t1'])} class(es) without captions "
                     f"at this level used their T1 sentence ({', '.join(c['fallback_to_t1'])})")
    return f"{_f(c['acc'])} / {_f(c['macc'])}"


def _task2_lines(t2: dict, warn: list[str]) -> list[str]:
    levels = t2["test_levels"]
    L = ["## Task 2: vision-language classification (Tx-Ty: train with Tx, class prompts at Ty)", ""] + warn
    L += [(f"Candidate classes: {len(t2['candidates'])}. Sample-level prompts (T2-T4) are the mean embedding of "
           "the class's training captions. Acc / mAcc:"), "",
          "| model (train level) | " + " | ".join(f"T{lv[1]}" for lv in levels) + " |",
          "|---" * (len(levels) + 1) + "|"]
    notes: list[str] = []
    for r in t2["rows"]:
        cells = [_txty_cell(r, lv, notes) for lv in levels]
        L.append(f"| ours: {r['model']} ({r['train_level'].upper()}) | " + " | ".join(cells) + " |")
    for m, x, y, a, b in PAPER["task2"]:
        cells = [f"{a:.2f} / {b:.2f}" if lv == y else "" for lv in levels]
        L.append(f"| paper: {m} ({x.upper()}) | " + " | ".join(cells) + " |")
    return (L + [""] + [f"- {n}" for n in dict.fromkeys(notes)] + ["", "![Tx-Ty Acc](txty_heatmap_acc.png)", ""]
            + _long_clip_lines(t2, bool(warn)))


PAPER_TEST_IMAGES = 2324  # the release's official val split, on which the paper reports (reference section 1)
PAPER_SETTING = {"family": "Long-CLIP", "architecture": "ViT-L/14", "method": "adapter"}


def _setting_differences(row: dict, n_test: int | None, synthetic: bool) -> list[str]:
    """How a Long-CLIP-derived row's setting differs from the paper's Long-CLIP rows."""
    s = row.get("setting") or {}
    out = []
    if s.get("architecture") != PAPER_SETTING["architecture"]:
        out.append(f"architecture {s.get('architecture')}, the paper's is {PAPER_SETTING['architecture']}")
    if s.get("train_method") != PAPER_SETTING["method"]:
        out.append(f"method {s.get('train_method')}, the paper's is the CLIP-Adapter")
    if synthetic:
        out.append("synthetic data")
    if n_test is not None and n_test != PAPER_TEST_IMAGES:
        out.append(f"{n_test} test images, the paper's val split has {PAPER_TEST_IMAGES:,}")
    return out


def _long_clip_lines(t2: dict, synthetic: bool) -> list[str]:
    """Ours beside the paper's Long-CLIP Tx-T0 rows, for models whose config records a Long-CLIP lineage only."""
    paper = {x: (a, b) for m, x, y, a, b in PAPER["task2"] if m.startswith(PAPER_SETTING["family"]) and y == "t0"}
    rows = [r for r in t2["rows"] if ((r.get("setting") or {}).get("lineage") or {}).get("family")
            == PAPER_SETTING["family"]]
    L = ["### Long-CLIP rows: ours beside the paper's", ""]
    if not rows:
        return L + [("No model here descends from a Long-CLIP checkpoint (config.json `sdx_lineage.family`), so none "
                     "is in the paper's Long-CLIP setting: its Long-CLIP rows above are a reference point only."), ""]
    L += [(f"The paper: Long-CLIP ViT-L/14 + CLIP-Adapter, trained with T2 or T3, T0 class prompts, the full "
           f"release's val split ({PAPER_TEST_IMAGES:,} images)."), "",
          "| ours (train level) | Tx-T0 ours Acc / mAcc | paper Tx-T0 Acc / mAcc | differs from the paper's setting |",
          "|---|---|---|---|"]
    for r in rows:
        level, cell = r["train_level"], r["results"].get("t0") or {}
        ours = f"{_f(cell['acc'])} / {_f(cell['macc'])}" if cell.get("available") else "n/a (T0 not evaluated)"
        ref = (f"{paper[level][0]:.2f} / {paper[level][1]:.2f}" if level in paper
               else f"none (the paper reports {', '.join(x.upper() + '-T0' for x in paper)})")
        diff = "; ".join(_setting_differences(r, t2.get("n_test"), synthetic)) or "none known"
        L.append(f"| {r['model']} ({level.upper()}) | {ours} | {ref} | {diff} |")
    return L + [""]


def _text_budget_lines(budgets: dict | None) -> list[str]:
    """Per model and text level: the token budget and the texts it truncated (sdx.models.clip.TruncationCounter)."""
    if not budgets:
        return []
    L = ["## Text length (token budget)", "",
         ("Every text is cut at the model's token budget (`--max_seq_length`, default the model's text positions); "
          "per level, the distinct texts encoded and how many lost tokens:"), "",
         "| model | budget / positions | level | texts | truncated | share | tokens lost mean / max | longest |",
         "|---|---|---|---|---|---|---|---|"]
    for model, b in budgets.items():
        for level, s in b.get("levels", {}).items():
            share = f"{100 * s['truncated_share']:.1f} %"
            if s.get("warning"):
                share = f"**{share} (above {100 * b['warning_share']:g} %)**"
            L.append(f"| {model} | {b['max_length']} / {b.get('text_positions') or '?'} | {level} | {s['texts']} | "
                     f"{s['truncated']} | {share} | {s['tokens_lost_mean']:.1f} / {s['tokens_lost_max']} | "
                     f"{s['longest']} |")
    return L + [""]


def _zero_shot_lines(model: str, zs: dict) -> list[str]:
    L = [f"### {model}", "", "Zero-shot (test Acc / mAcc per prompt level):", "",
         "| level | ours Acc | ours mAcc | paper Acc |", "|---|---|---|---|"]
    for lv, c in zs.items():
        paper = PAPER["zero_shot"].get(lv)
        ours = f"{_f(c['acc'])} | {_f(c['macc'])}" if c.get("available") else "n/a | n/a"
        L.append(f"| T{lv[1]} | {ours} | {_f(paper) if paper else '-'} |")
    return L


def _few_shot_lines(fs: dict) -> list[str]:
    ks = sorted({int(k) for per in fs.values() for k in per})
    L = ["", ("Few-shot, test Acc mean +- std over seeds (support from train only; C / alpha, beta "
              "selected on validation):"), "", "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
         "|---" * (len(ks) + 1) + "|"]
    for method, per_k in fs.items():
        L.append(f"| ours: {method} | " + " | ".join(
            f"{_f(per_k[str(k)]['acc_mean'])} +- {_f(per_k[str(k)]['acc_std'])}" if str(k) in per_k
            else "-" for k in ks) + " |")
    for method, vals in PAPER["few_shot"].items():
        L.append(f"| paper (approx, figure): {method} | " + " | ".join(
            f"~{vals[k]:.0f}" if k in vals else "" for k in ks) + " |")
    return L


def _task3_lines(t3: dict, warn: list[str]) -> list[str]:
    L = ["## Task 3: zero-shot and few-shot", ""] + warn
    for model, res in t3.items():
        L += _zero_shot_lines(model, res.get("zero_shot", {}))
        if res.get("few_shot_skipped"):
            L += ["", f"Few-shot skipped: {res['few_shot_skipped']}."]
        if res.get("few_shot"):
            L += _few_shot_lines(res["few_shot"])
        L.append("")
    return L + ["![k-shot curve](kshot_curve.png)", ""]


def _cross_class_lines(cc: dict) -> list[str]:
    L = [(f"Cross-class on SteelDefectX: unseen classes {cc.get('unseen_classes')} ({cc.get('source')}); "
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
    return L


def _task4_lines(t4: dict, warn: list[str]) -> list[str]:
    L = ["## Task 4: zero-shot transfer", ""] + warn
    for model, res in t4.items():
        L += [f"### {model}", ""] + _cross_class_lines(res.get("cross_class", {}))
        for name, ext in (res.get("external") or {}).items():
            L += ["", (f"External set `{name}` ({ext['n_images']} images, {len(ext['classes'])} classes): "
                       f"T0 Acc {_f(ext['t0']['acc'])}, T1 (descriptions) Acc {_f(ext['t1']['acc'])}.")]
        L.append("")
    L += ["Paper (Long-CLIP ViT-L/14 trained on SteelDefectX, Acc on external sets; for reference):", "",
          "| text used in training | aluminium (MSD-Cls) | steel tube (CGFSDS-9) |", "|---|---|---|"]
    return L + [f"| {t} | {a:.2f} | {b:.2f} |" for t, a, b in PAPER["transfer"]] + [""]


def _retrieval_lines(rt: dict, warn: list[str]) -> list[str]:
    L = ["## Retrieval (test images vs their own sample-level captions)", ""] + warn
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
    return L + ["", "The paper's retrieval tables were not found; no paper numbers to compare.", ""]


def _localization_lines(loc: dict, warn: list[str]) -> list[str]:
    L = ["## Text-guided localization (pixel-level, test images with masks)", ""] + warn
    if loc.get("skipped"):
        return L + [f"Skipped: {loc['skipped']}.", ""]
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
    return L + [""] + [f"![overlays {m}](localization_{_slug(m)}.png)" for m in loc] + [""]


def _hyperparameter_lines(hp: list[dict], shown: int = 60) -> list[str]:
    if not hp:
        return []
    splits = sorted({h["selected_on"] for h in hp})
    L = ["## Selected hyper-parameters", "",
         (f"{len(hp)} selections, all on split(s): {', '.join(splits)} (grid order breaks ties). "
          "Full list with grids and validation scores in results.json."), "",
         "| model | method | k | seed | name | value | val Acc | selected on |", "|---|---|---|---|---|---|---|---|"]
    L += [f"| {h['model']} | {h['method']} | {h['k']} | {h['seed']} | {h['name']} | {h['value']} | "
          f"{_f(h['score'])} | {h['selected_on']} |" for h in hp[:shown]]
    if len(hp) > shown:
        L.append(f"| ... {len(hp) - shown} more in results.json |||||||")
    return L + [""]


def _run_lines(results: dict, meta: dict) -> list[str]:
    cache = results.get("cache") or {}
    return ["## Run", "", "- encoder cache: " + ", ".join(f"{k}: {v['encoded']} encoded / {v['reused']} reused"
                                                          for k, v in cache.items()),
            "- time per task (s): " + ", ".join(f"{k} {v:.1f}" for k, v in (results.get("timings_s") or {}).items()),
            f"- software: {meta.get('versions')}", ""]


# the task sections of report.md, in order: results key -> its renderer
TASK_SECTIONS = (("task1", _task1_lines), ("task2", _task2_lines), ("task3", _task3_lines),
                 ("task4", _task4_lines), ("retrieval", _retrieval_lines), ("localization", _localization_lines))


def render_markdown(results: dict) -> str:
    """report.md of a results dict: header, data, models, one section per task run, selections, run facts."""
    meta = results.get("meta", {})
    synthetic = data_is_synthetic(meta.get("data", {}))
    warn = ["> Synthetic data: not SteelDefectX; paper numbers shown only as the target scale.", ""] if synthetic else []
    lines = _header_lines(meta, synthetic) + _data_lines(meta) + _model_lines(results)
    lines += _text_budget_lines(results.get("text_budget"))
    for key, section in TASK_SECTIONS:
        if results.get(key):
            lines += section(results[key], warn)
    lines += _hyperparameter_lines(results.get("hyperparameters") or []) + _run_lines(results, meta)
    return "\n".join(lines)


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
