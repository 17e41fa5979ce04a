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

from sdx.report.plots import (
    FEWSHOT_METHOD_LABELS,
    FEWSHOT_PAPER_METHOD,
    SYNTHETIC_TAG,
    plot_confusion,
    plot_kshot,
    plot_overlays,
    plot_txty,
)

# The paper's numbers (reference section 3), each with the setting it measures (model, data, training); a paper
# number is printed beside ours only where that setting is the one our row measures.
PAPER_VAL = "the full release's val split (2,324 images, 25 classes)"
PAPER = {
    "task1": {"rows": [("ShuffleNetV2", 96.34, 94.98), ("ViT-B/16", 44.84, 40.31)],  # (model, Acc, mAcc)
              "setting": ("trained on the full release's train split (SGD 0.9, lr 0.1 / 10 every 30 epochs, "
                          f"100 epochs); {PAPER_VAL}; paper v1"),
              "left_out": ("The paper's ResNet-101 row is left out: the value in the project's notes was marked "
                           "as a possible transcription error and could not be verified in the paper's text (v1 or "
                           "v2).")},
    "task2": {"rows": [  # (model, train level, test level, Acc, mAcc, version)
        ("Long-CLIP ViT-L/14 + CLIP-Adapter", "t2", "t0", 93.63, 92.56, "v2"),
        ("Long-CLIP ViT-L/14 + CLIP-Adapter", "t3", "t0", 94.45, 93.66, "v2"),
        ("OpenCLIP ViT-L/14 + CLIP-Adapter", "t2", "t0", 88.21, 87.54, "v1, fine text"),
        ("CLIP ViT-B/16 + CLIP-Adapter", "t2", "t0", 81.84, 81.14, "v1, fine text")],
        "setting": ("pretrained weights + CLIP-Adapter (Adam 1e-4, 20 epochs) trained on the full release's train "
                    f"split with the row's text level; T0 class prompts on {PAPER_VAL}")},
    "zero_shot": {"values": {"t0": 7.57, "t1": 11.27},  # Acc
                  "setting": ("a pretrained CLIP-family model with NO training on SteelDefectX (untuned "
                              f"zero-shot), on {PAPER_VAL}; paper v1")},
    "few_shot": {"curves": {  # Acc at k = 1 and 8, approximate: read off a figure
        "Long-CLIP-Adapter": {1: 60.0, 8: 88.0}, "Tip-Adapter-F": {1: 55.0, 8: 85.0}},
        "label": "Long-CLIP ViT-L/14, full release, approx., read off a figure; v1",
        "setting": ("pretrained Long-CLIP ViT-L/14 (no other training on SteelDefectX) + the method, trained on a "
                    f"k-shot support of the full release's train split; {PAPER_VAL}; values approximate, read "
                    "off a figure; the authors' Tip-Adapter-F script keeps its epoch with the best TEST accuracy; "
                    "paper v1")},
    "transfer": {"rows": [  # (text used in training, aluminium MSD-Cls, steel tube CGFSDS-9)
        ("none (plain zero-shot)", 8.60, 25.11), ("T0", 12.90, 28.31), ("T1", 20.43, 33.79),
        ("raw GPT-4o", 25.27, 34.25), ("refined description (T2)", 29.03, 40.18)],
        "setting": ("Long-CLIP ViT-L/14 trained on the full release with the row's text, zero-shot Acc on "
                    "aluminium (MSD-Cls, 10 classes) and seamless steel tube (CGFSDS-9, 5 classes); paper v1. "
                    "Neither set is in this run, so no row of ours stands beside these")},
    "localization": {"rows": [  # (method, pixel AUROC, F1-max, IoU)
        ("AnomalyCLIP", 88.21, 53.36, 37.49), ("Long-CLIP with T0 prompts", 78.96, 40.46, 21.92),
        ("WinCLIP (about)", 71.87, 31.16, 16.68)],
        "setting": ("pretrained models, no training on SteelDefectX masks; masks of the full release's val "
                    "split; F1-max and IoU at the threshold best on those same pixels (oracle); paper v2")},
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


def md_cell(value: Any) -> str:
    """A Markdown table cell of any value: backslashes and `|` escaped, line breaks as spaces, so no class, model or
    parameter name can split a row (used by every table writer: this report, the model cards, per_class_test.md)."""
    return " ".join(str(value).replace("\\", "\\\\").replace("|", "\\|").splitlines())


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
    if data.get("text_levels_text"):
        lines.append(data["text_levels_text"])
    if meta.get("max_eval_samples"):
        lines.append(f"- **subsampled**: validation and test limited to {meta['max_eval_samples']} images "
                     "(seeded); numbers are not comparable to full-split numbers")
    lines.append("")
    return lines


def _model_lines(results: dict) -> list[str]:
    lines = ["## Models", "", ("Origin and training data come from each checkpoint's run record (sdx_run.json); "
                               "\"unknown\" where a checkpoint has none."), "",
             "| name | kind | origin | trained on | trained with | method | training seed | fingerprint |",
             "|---|---|---|---|---|---|---|---|"]
    for m in _all_models(results):
        lines.append(f"| {md_cell(m['name'])} | {m['kind']} | {md_cell(m.get('origin') or 'unknown')} | "
                     f"{md_cell(_trained_on(m))} | {md_cell(_trained_with(m))} | {md_cell(m.get('method') or '-')} | "
                     f"{'-' if m.get('seed') is None else m['seed']} | {m.get('fingerprint')} |")
    lines.append("")
    return lines


def _all_models(results: dict) -> list[dict]:
    """The CLIP-family models and, when task 1 ran, its classifier (the rows of the Models table)."""
    models = list(results.get("models") or [])
    t1 = results.get("task1") or {}
    if isinstance(t1, dict) and t1.get("model"):
        models.append(t1["model"])
    return models


def _trained_on(m: dict) -> str:
    """The data a model was trained on, from its run record ("unknown" without one)."""
    meta = m.get("metadata") or {}
    if not meta:
        return "unknown (no run record)"
    text = f"`{meta.get('data')}`" + (" (synthetic)" if meta.get("synthetic") else "")
    if meta.get("exclude_classes"):
        text += f" without {', '.join(meta['exclude_classes'])}"
    return text


def _trained_with(m: dict) -> str:
    """The caption level a CLIP was trained with, and the levels its captions really came from when some fell
    back (the run record's caption_levels_used shares)."""
    lvl = m.get("train_level")
    if not lvl:
        return "-"
    used = (m.get("metadata") or {}).get("caption_levels_used") or {}
    if not used or set(used) == {lvl}:
        return lvl.upper()
    shares = ", ".join(f"{k.upper()} {100 * v:.1f} %" for k, v in used.items())
    if lvl == "mixed":
        return f"MIXED ({shares})"
    return f"{lvl.upper()} requested; **captions used: {shares}**"


def _setting(m: dict) -> str:
    """A model's setting in a few words: where its weights started and what it was trained on."""
    if not m.get("metadata"):
        return "no run record: origin and training unknown"
    return f"{m.get('origin')}, trained on {_trained_on(m)}"


def _header_lines(meta: dict, synthetic: bool) -> list[str]:
    flag = " (SYNTHETIC DATA)" if synthetic else ""
    return [f"# SteelDefectX benchmark report{flag}", "",
            (f"Generated {meta.get('created')} by eval_benchmark.py; tasks: {', '.join(meta.get('tasks', []))}. "
             f"Few-shot seeds {meta.get('seeds')}, shots {meta.get('shots')}. Percentages throughout. The tables of "
             "tasks 1, 2 and 4, each zero-shot and few-shot table, retrieval and localization put a chance row or a "
             "trivial baseline beside our rows. A paper row (reference section 3) names its "
             "setting (model, data, training) and stands only where it measures the setting of the rows beside "
             "it; data and training still differ unless this run used the full release and the paper's models."),
            ""]


def _chance_label(ch: dict) -> str:
    name = ch.get("majority_class_name")
    return f"chance: 1/{ch['classes']} classes; Acc: always the majority class" + (f" ({name})" if name else "")


def _chance_cells(ch: dict) -> tuple[str, str]:
    """(Acc, mAcc) of the trivial classifiers: the majority-class rate and 1 / classes."""
    return _f(ch["majority_acc"]), _f(ch["uniform"])


def _task1_lines(t1: dict, warn: list[str], results: dict) -> list[str]:
    L = ["## Task 1: vision-only classification", ""] + warn
    if t1.get("skipped"):
        return L + [f"Skipped: {t1['skipped']}.", ""]
    m, restricted = t1["model"], t1.get("restricted")
    arch = f"{m['architecture']}, " if m.get("architecture") else ""   # the folder name may not say (demo: vit/)
    ours = md_cell(f"{m['name']} ({arch}{_setting(m)})")
    L += ["| row | Acc | mAcc | macro-F1 | n |", "|---|---|---|---|---|",
          f"| ours: {ours} | {_f(t1['acc'])} | {_f(t1['macc'])} | {_f(t1['macro_f1'])} | {t1['n']} |"]
    if restricted and t1.get("labels_not_present"):
        L.append(f"| ours: {md_cell(m['name'])}, argmax restricted to the {restricted['classes']} classes present | "
                 f"{_f(restricted['acc'])} | {_f(restricted['macc'])} | {_f(restricted['macro_f1'])} | "
                 f"{restricted['n']} |")
    if t1.get("chance"):
        acc, macc = _chance_cells(t1["chance"])
        L.append(f"| {_chance_label(t1['chance'])} | {acc} | {macc} | - | {t1['chance']['n']} |")
    paper = PAPER["task1"]
    L += [f"| paper: {name} (trained on the full release; its val split) | {a:.2f} | {b:.2f} | - | 2324 |"
          for name, a, b in paper["rows"]]
    L += ["", f"Paper rows' setting: {paper['setting']}. {paper['left_out']}"] + _task1_argmax_lines(t1)
    L += ["", "Per class (test):", "", "| class | support | recall | precision | F1 |", "|---|---|---|---|---|"]
    L += [f"| {md_cell(r['class'])} | {r['support']} | {_f(r['recall'])} | {_f(r['precision'])} | {_f(r['f1'])} |"
          for r in t1["per_class"]]
    return L + ["", "![confusion matrix](confusion_task1.png)", ""]


def _task1_argmax_lines(t1: dict) -> list[str]:
    """Which argmax the task-1 rows take: the model's own labels, and the restricted row when some are not classes
    with images in the data (docs/benchmark.md, Task 1)."""
    r, absent = t1.get("restricted"), t1.get("labels_not_present")
    if not r:
        return []
    if not absent:
        return ["", f"Argmax over the model's {t1['model_labels']} labels, all of them classes present in the data."]
    return ["", (f"The first row is the model's own answer, the argmax over its {t1['model_labels']} labels; "
                 f"{t1['predicted_not_present']} of {t1['n']} test images got a label that is not a class with "
                 f"images in the data ({', '.join(map(md_cell, absent[:10]))}{', ...' if len(absent) > 10 else ''}). "
                 f"The restricted row takes the argmax over the {r['classes']} classes present only (the candidates "
                 "of the CLIP tasks); it is higher by construction.")]


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


def _task2_lines(t2: dict, warn: list[str], results: dict) -> list[str]:
    levels = t2["test_levels"]
    L = ["## Task 2: vision-language classification (Tx-Ty: train with Tx, class prompts at Ty)", ""] + warn
    L += [(f"Candidate classes: {len(t2['candidates'])}. Sample-level prompts (T2-T4) are the mean embedding of "
           "the class's training captions. Acc / mAcc:"), "",
          "| model (train level) | " + " | ".join(f"T{lv[1]}" for lv in levels) + " |",
          "|---" * (len(levels) + 1) + "|"]
    notes: list[str] = []
    for r in t2["rows"]:
        cells = [_txty_cell(r, lv, notes) for lv in levels]
        L.append(f"| ours: {md_cell(r['model'])} ({r['train_level'].upper()}) | " + " | ".join(cells) + " |")
    if t2.get("chance"):
        acc, macc = _chance_cells(t2["chance"])
        L.append(f"| {_chance_label(t2['chance'])} | " + " | ".join(f"{acc} / {macc}" for _ in levels) + " |")
    paper = PAPER["task2"]
    for m, x, y, a, b, version in paper["rows"]:
        cells = [f"{a:.2f} / {b:.2f}" if lv == y else "" for lv in levels]
        L.append(f"| paper: {m} ({x.upper()}; trained on the full release; {version}) | " + " | ".join(cells) + " |")
    L += ["", f"Paper rows' setting: {paper['setting']}."]
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
    return out + _data_differences(n_test, synthetic)


def _data_differences(n_test: int | None, synthetic: bool) -> list[str]:
    """How a run's test data differ from the paper's (synthetic, or another number of test images)."""
    out = ["synthetic data"] if synthetic else []
    if n_test is not None and n_test != PAPER_TEST_IMAGES:
        out.append(f"{n_test} test images, the paper's val split has {PAPER_TEST_IMAGES:,}")
    return out


def _long_clip_lines(t2: dict, synthetic: bool) -> list[str]:
    """Ours beside the paper's Long-CLIP Tx-T0 rows, for models whose config records a Long-CLIP lineage only."""
    paper = {x: (a, b) for m, x, y, a, b, _ in PAPER["task2"]["rows"]
             if m.startswith(PAPER_SETTING["family"]) and y == "t0"}
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
        L.append(f"| {md_cell(r['model'])} ({level.upper()}) | {ours} | {ref} | {md_cell(diff)} |")
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
            L.append(f"| {md_cell(model)} | {b['max_length']} / {b.get('text_positions') or '?'} | {level} | "
                     f"{s['texts']} | "
                     f"{s['truncated']} | {share} | {s['tokens_lost_mean']:.1f} / {s['tokens_lost_max']} | "
                     f"{s['longest']} |")
    return L + [""]


def _zero_shot_lines(model: str, zs: dict, chance: dict | None, untuned: bool) -> list[str]:
    """Zero-shot per prompt level; the paper's untuned zero-shot column only beside a checkpoint without a
    training record (the one kind of model here that may be in that setting)."""
    paper = PAPER["zero_shot"]["values"] if untuned else {}
    L = [f"### {model}", "", "Zero-shot (test Acc / mAcc per prompt level):", "",
         "| level | ours Acc | ours mAcc |" + (" paper Acc (untuned zero-shot) |" if untuned else ""),
         "|---|---|---|" + ("---|" if untuned else "")]
    for lv, c in zs.items():
        ours = f"{_f(c['acc'])} | {_f(c['macc'])}" if c.get("available") else "n/a | n/a"
        L.append(f"| T{lv[1]} | {ours} |" + (f" {_f(paper.get(lv))} |" if untuned else ""))
    if chance:
        acc, macc = _chance_cells(chance)
        L.append(f"| {_chance_label(chance)} | {acc} | {macc} |" + (" - |" if untuned else ""))
    if untuned:
        L += ["", (f"This checkpoint has no training record: the paper column ({PAPER['zero_shot']['setting']}) "
                   "is its setting only if the checkpoint is an untuned pretrained CLIP.")]
    return L


def _kshot_cell(per_k: dict, k: int, spread: bool = True) -> str:
    c = per_k.get(str(k))
    if not c:
        return "-"
    return f"{_f(c['acc_mean'])} +- {_f(c['acc_std'])}" if spread else _f(c["acc_mean"])


def _few_shot_differences(model: dict | None, n_test: int | None, synthetic: bool) -> list[str]:
    """How a model's few-shot setting differs from the paper's (an untuned pretrained Long-CLIP ViT-L/14)."""
    s = model or {}
    family = (s.get("lineage") or {}).get("family")
    out = [] if family == PAPER_SETTING["family"] else [f"family {family or 'not recorded'}, the paper's is "
                                                        f"{PAPER_SETTING['family']}"]
    if s.get("architecture") != PAPER_SETTING["architecture"]:
        out.append(f"architecture {s.get('architecture') or 'unknown'}, the paper's is "
                   f"{PAPER_SETTING['architecture']}")
    if s.get("metadata"):
        out.append(f"this model was trained on this run's data ({_setting(s)}), the paper's was not")
    return out + _data_differences(n_test, synthetic)


def _few_shot_lines(res: dict, model: dict | None, chance: dict | None, synthetic: bool) -> list[str]:
    """The few-shot table of one model: every method (mean +- std over seeds), the chance row, each paper curve
    right under the method it belongs to, labelled with the paper's setting and how this model's differs."""
    fs, text = res["few_shot"], res.get("few_shot_text") or {}
    ks = sorted({int(k) for per in fs.values() for k in per})
    protocol = (res.get("few_shot_protocol") or {}).get("text", "hyper-parameters selected on validation")
    level = (text.get("level") or "t0").upper()
    paper = PAPER["few_shot"]
    L = ["", (f"Few-shot, test Acc mean +- std over seeds (support from train only; {protocol}; class text of the "
              f"zero-shot terms and the CLIP-Adapter: {level}, {text.get('why', 'T0')}):"), "",
         "| method | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for method, per_k in fs.items():
        label = FEWSHOT_METHOD_LABELS.get(method, method) + (f" ({level}, no shots)" if method == "zero_shot" else "")
        cells = [_kshot_cell(per_k, k, spread=method != "zero_shot") for k in ks]
        L.append(f"| ours: {md_cell(label)} | " + " | ".join(cells) + " |")
        curve = paper["curves"].get(FEWSHOT_PAPER_METHOD.get(method))
        if curve:
            L.append(f"| paper: {FEWSHOT_PAPER_METHOD[method]} ({paper['label']}) | " + " | ".join(
                f"~{curve[k]:.0f}" if k in curve else "" for k in ks) + " |")
    if chance:
        L.append(f"| {_chance_label(chance)} | " + " | ".join(_chance_cells(chance)[0] for _ in ks) + " |")
    n_test = next((r["n"] for per in fs.values() for c in per.values() for r in c["runs"]), None)
    diff = "; ".join(_few_shot_differences(model, n_test, synthetic)) or "none known"
    return L + ["", f"This model's setting differs from the paper curves' in: {diff}."]


def _task3_lines(t3: dict, warn: list[str], results: dict) -> list[str]:
    L = ["## Task 3: zero-shot and few-shot", ""] + warn
    models = {m["name"]: m for m in _all_models(results)}
    trained = {name for name, m in models.items() if m.get("metadata")}
    chance = (results.get("chance") or {}).get("test")
    for model, res in t3.items():
        L += _zero_shot_lines(model, res.get("zero_shot", {}), chance, untuned=model not in trained)
        if res.get("few_shot_skipped"):
            L += ["", f"Few-shot skipped: {res['few_shot_skipped']}."]
        if res.get("few_shot"):
            L += _few_shot_lines(res, models.get(model), chance, bool(warn))
        L.append("")
    if any(model in trained for model in t3):
        zs = PAPER["zero_shot"]
        L += [(f"Paper, untuned zero-shot ({zs['setting']}): T0 {zs['values']['t0']:.2f}, T1 "
               f"{zs['values']['t1']:.2f} Acc. Not beside the models above that were trained on this run's data "
               "(see Models): a different setting."), ""]
    if any(res.get("few_shot") for res in t3.values()):
        L += _same_bytes_lines(results.get("support_sets") or [])
        L += [(f"Paper few-shot rows' setting: {PAPER['few_shot']['setting']}. Each stands under the method it "
               "belongs to (ours: every hyper-parameter selected on validation); recipes: docs/benchmark.md."), ""]
    return L + ["![k-shot curve](kshot_curve.png)", ""]


def _same_bytes_lines(records: list[dict]) -> list[str]:
    """A warning when a support or validation image has the same bytes as a held-out image under another name."""
    support = sorted({n for r in records for n in r.get("same_bytes_as_held_out", [])})
    val = sorted({n for r in records for n in (r.get("validation") or {}).get("same_bytes_as_test", [])})
    parts = []
    if support:
        parts.append(f"{len(support)} support image(s) ({', '.join(support[:5])}) equal a validation or test image")
    if val:
        parts.append(f"{len(val)} validation image(s) ({', '.join(val[:5])}) equal a test image")
    if not parts:
        return []
    return [(f"> **Duplicates in the data:** {'; '.join(parts)}, byte for byte under another name (`support_sets` "
             "in results.json lists them per cell). The splits are disjoint by name only there: the cells using "
             "them may read high."), ""]


def _cross_class_lines(t4: dict) -> list[str]:
    """One table over the models: Acc / mAcc per prompt level on the unseen classes, each row flagged when the
    model is not known to have held those classes out (then it is not zero-shot transfer)."""
    levels = list(dict.fromkeys(lv for r in t4.values() for lv in (r.get("cross_class", {}).get("levels") or {})))
    L = ["### Cross-class on SteelDefectX", "", ("Test images of the unseen classes, classified among the unseen "
                                                 "classes only. Acc / mAcc:"), "",
         "| model | unseen classes (from) | held out in training | " + " | ".join(f"T{lv[1]}" for lv in levels) + " |",
         "|---|---|---|" + "---|" * len(levels)]
    chances: dict[str, dict] = {}
    for model, res in t4.items():
        cc = res.get("cross_class") or {}
        unseen = ", ".join(cc.get("unseen_classes") or [])
        held = ("yes" if cc.get("model_excluded_unseen") else
                "**NO: the model may have seen these classes; not zero-shot transfer**")
        if cc.get("skipped"):
            cells = [f"skipped: {cc['skipped']}"] + [""] * (len(levels) - 1)
        else:
            cells = [f"{_f(c.get('acc'))} / {_f(c.get('macc'))}" if c.get("available") else "n/a"
                     for c in (cc["levels"].get(lv, {}) for lv in levels)]
        L.append(f"| ours: {md_cell(model)} | {md_cell(unseen)} ({md_cell(cc.get('source'))}) | {held} | "
                 + " | ".join(md_cell(c) for c in cells) + " |")
        if cc.get("chance"):
            chances.setdefault(unseen, cc["chance"])
    for unseen, ch in chances.items():
        acc, macc = _chance_cells(ch)
        L.append(f"| {_chance_label(ch)} | {md_cell(unseen)} | - | "
                 + " | ".join(f"{acc} / {macc}" for _ in levels) + " |")
    return L + [""]


def _external_lines(t4: dict) -> list[str]:
    """One table per external set (named by the set), never in the paper's columns: Acc / mAcc with the set's
    class-name (T0) and description (T1) prompts, and its chance row."""
    names = list(dict.fromkeys(name for r in t4.values() for name in (r.get("external") or {})))
    L: list[str] = []
    for name in names:
        rows = {model: r["external"][name] for model, r in t4.items() if name in (r.get("external") or {})}
        first = next(iter(rows.values()))
        L += [(f"### External set: {name} ({first['n_images']} images, {len(first['classes'])} classes; not "
               "SteelDefectX: zero-shot transfer to another data set)"), "",
              f"Classes: {', '.join(first['classes'])}. T0 = the class-name template, T1 = the set's descriptions.", "",
              "| model | T0 Acc | T0 mAcc | T1 Acc | T1 mAcc |", "|---|---|---|---|---|"]
        L += [f"| ours: {md_cell(model)} | {_f(e['t0']['acc'])} | {_f(e['t0']['macc'])} | {_f(e['t1']['acc'])} | "
              f"{_f(e['t1']['macc'])} |" for model, e in rows.items()]
        if first.get("chance"):
            acc, macc = _chance_cells(first["chance"])
            L.append(f"| {_chance_label(first['chance'])} | {acc} | {macc} | {acc} | {macc} |")
        L.append("")
    return L


def _task4_lines(t4: dict, warn: list[str], results: dict) -> list[str]:
    L = ["## Task 4: zero-shot transfer", ""] + warn + _cross_class_lines(t4) + _external_lines(t4)
    paper = PAPER["transfer"]
    L += [f"Paper, for reference (setting: {paper['setting']}). Acc:", "",
          "| paper: text used in training | aluminium (MSD-Cls) | steel tube (CGFSDS-9) |", "|---|---|---|"]
    return L + [f"| {t} | {a:.2f} | {b:.2f} |" for t, a, b in paper["rows"]] + [""]


def _retrieval_lines(rt: dict, warn: list[str], results: dict) -> list[str]:
    L = ["## Retrieval (test images vs their own sample-level captions)", ""] + warn
    L += ["| model | captions | images | distinct texts | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    chance: dict[str, dict] = {}
    for model, res in rt.items():
        for lv, c in res.items():
            if not c.get("available"):
                L.append(f"| {md_cell(model)} | T{lv[1]} | n/a: {md_cell(c.get('reason'))} |||||||| ")
                continue
            L.append(f"| {md_cell(model)} | T{lv[1]} | {c['images']} | {c['texts']} | "
                     + _recall_cells(c["i2t"], c["t2i"]))
            if c.get("chance"):
                chance.setdefault(lv, dict(c["chance"], images=c["images"], texts=c["texts"]))
    for lv, c in chance.items():
        L.append(f"| chance: a random ranking | T{lv[1]} | {c['images']} | {c['texts']} | "
                 + _recall_cells(c["i2t"], c["t2i"]))
    return L + ["", "The paper's retrieval tables were not found; no paper numbers to compare.", ""]


def _recall_cells(i2t: dict, t2i: dict) -> str:
    return " | ".join(_f(d[f"R@{k}"]) for d in (i2t, t2i) for k in (1, 5, 10)) + " |"


def overlay_file(model: str, target: str | None = None) -> str:
    """The overlay figure of a model on SteelDefectX test (target None) or on an external set."""
    return f"localization_{_slug(target) + '_' if target else ''}{_slug(model)}.png"


def _localization_lines(loc: dict, warn: list[str], results: dict) -> list[str]:
    L = ["## Text-guided localization (pixel level)", ""] + warn
    if loc.get("skipped"):
        return L + [f"Skipped: {loc['skipped']}.", ""]
    th = loc["threshold"]
    L += [(f"Patch score: cos(patch, the image's class prompt) - cos(patch, \"{loc['normal_prompt']}\"), "
           f"upsampled to the mask. **Threshold**: {th['rule']} ({th['validation_images']} validation images with "
           "a mask); F1 and IoU use it. F1-max and its IoU take the best threshold on the target's own pixels: an "
           "oracle, shown apart. **Trivial baseline**: every pixel a defect (pixel AUROC 50, F1 = 2p / (1 + p), "
           "IoU = p, p the share of defect pixels); a row that does not beat it is flagged."), ""]
    first = loc["targets"][0]["models"] if loc["targets"] else {}
    chosen = [f"{m} " + ", ".join(f"T{lv[1]} {_threshold(r[lv]['threshold'])}" for lv in ("t0", "t1") if lv in r)
              for m, r in first.items() if not r.get("skipped")]
    if chosen:
        L += [f"Thresholds selected on validation: {'; '.join(chosen)}.", ""]
    for target in loc["targets"]:
        L += _localization_target_lines(target, warn, results)
    if loc.get("targets_without_masks"):
        L += [(f"Left out, no mask with both defect and background pixels: "
               f"{', '.join(loc['targets_without_masks'])}."), ""]
    return L


def _threshold(t: float | None) -> str:
    return "none (no validation mask)" if t is None else f"{t:.4g}"


def _localization_target_lines(target: dict, warn: list[str], results: dict) -> list[str]:
    b, external = target["baseline"], target["external"]
    where = ("not SteelDefectX; threshold transferred from SteelDefectX validation: the set has no validation "
             "split" if external else "the official val split")
    L = [f"### {target['name']} ({target['images']} images with a mask, {target['classes']} classes; {where})", "",
         "| method | prompt | pixel AUROC | F1 | IoU | F1-max (oracle) | IoU (oracle) | vs trivial baseline |",
         "|---|---|---|---|---|---|---|---|",
         (f"| trivial: every pixel a defect ({_f(b['positive_rate'])} % of pixels) | - | {_f(b['pixel_auroc'])} | "
          f"{_f(b['f1'])} | {_f(b['iou'])} | {_f(b['f1'])} | {_f(b['iou'])} | - |")]
    for model, res in target["models"].items():
        if res.get("skipped"):
            L.append(f"| ours: {md_cell(model)} | - | skipped: {md_cell(res['skipped'])} ||||||")
            continue
        for lv in ("t0", "t1"):
            c = res.get(lv)
            if c:
                flag = ("beats it" if not c["below_baseline"] else
                        "**does not beat it**: " + "; ".join(c["below_baseline"]))
                L.append(f"| ours: {md_cell(model)} | T{lv[1]} | {_f(c['pixel_auroc'])} | {_f(c['f1'])} | "
                         f"{_f(c['iou'])} | {_f(c['f1_max_oracle'])} | {_f(c['iou_oracle'])} | {flag} |")
    if not external:
        paper = PAPER["localization"]
        L += [f"| paper: {m} (pretrained, no mask training; full release val masks) | {'T0' if 'T0' in m else '-'} | "
              f"{a:.2f} | - | - | {f:.2f} | {i:.2f} | its baseline is not given |" for m, a, f, i in paper["rows"]]
        L += ["", (f"Paper rows' setting: {paper['setting']}. Their F1 / IoU are oracle values: compare them with "
                   "the oracle columns, never with the validation-threshold F1 / IoU.")]
    plots = set((results.get("meta") or {}).get("plots") or [])
    files = [overlay_file(m, target["name"] if external else None) for m in target["models"]]
    return L + [""] + [f"![overlays {f[13:-4]}]({f})" for f in files if f in plots] + [""]


def _hyperparameter_lines(hp: list[dict], shown: int = 60) -> list[str]:
    if not hp:
        return []
    splits = sorted({h["selected_on"] for h in hp})
    L = ["## Selected hyper-parameters", "",
         (f"{len(hp)} selections, all on split(s): {', '.join(splits)} (grid order breaks ties). "
          "Full list with grids and validation scores in results.json."), "",
         "| model | method | k | seed | name | value | val Acc | selected on |", "|---|---|---|---|---|---|---|---|"]
    L += [f"| {md_cell(h['model'])} | {md_cell(h['method'])} | {h['k']} | {h['seed']} | {md_cell(h['name'])} | "
          f"{md_cell(h['value'])} | "
          f"{_f(h['score'])} | {h['selected_on']} |" for h in hp[:shown]]
    if len(hp) > shown:
        L.append(f"| ... {len(hp) - shown} more in results.json |||||||")
    return L + [""]


def _run_lines(results: dict, meta: dict) -> list[str]:
    cache = results.get("cache") or {}
    return ["## Run", "", "- encoder cache: " + ", ".join(f"{k}: {v['encoded']} encoded / {v['reused']} reused"
                                                          + (f" ({v['discarded']} damaged cache chunk(s) discarded "
                                                             "and re-encoded)" if v.get("discarded") else "")
                                                          for k, v in cache.items()),
            "- time per task (s): " + ", ".join(f"{k} {v:.1f}" for k, v in (results.get("timings_s") or {}).items()),
            f"- software: {meta.get('versions')}", ""]


# the task sections of report.md, in order: results key -> its renderer (section results, warning lines, results)
TASK_SECTIONS = (("task1", _task1_lines), ("task2", _task2_lines), ("task3", _task3_lines),
                 ("task4", _task4_lines), ("retrieval", _retrieval_lines), ("localization", _localization_lines))


def render_markdown(results: dict) -> str:
    """report.md of a results dict: header, data, models, one section per task run, selections, run facts."""
    meta = results.get("meta", {})
    synthetic = data_is_synthetic(meta.get("data", {}))
    warn = ["> Synthetic data, not SteelDefectX: a paper row below is the paper's own setting (the full release, its "
            "models), never comparable with a row measured here.", ""] if synthetic else []
    lines = _header_lines(meta, synthetic) + _data_lines(meta) + _model_lines(results)
    lines += _text_budget_lines(results.get("text_budget"))
    for key, section in TASK_SECTIONS:
        if results.get(key):
            lines += section(results[key], warn, results)
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
    tag = SYNTHETIC_TAG if synthetic else ""
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
        fs = PAPER["few_shot"]
        p = plot_kshot(results["task3"], out / "kshot_curve.png", f"few-shot test Acc{tag}", fs["curves"], fs["label"],
                       (results.get("chance") or {}).get("test"))
        if p:
            plots.append(p)
    for (target, model), items in ((artifacts or {}).get("overlays") or {}).items():
        where = f" on {target}" if target else ""
        p = plot_overlays(items, out / overlay_file(model, target), f"{model}{where}: T0 prompt{tag}")
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
