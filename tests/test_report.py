"""report.md's rules (sdx.report.markdown) on results dicts shaped as the benchmark writes them: chance rows,
paper rows only beside the setting they measure and labelled with it, flags in the rows they concern, model
origin from the run record; and the small console and plot fixes of issue 15. `assert_report_baselines` checks
a whole report against its results: tests/test_eval_benchmark.py and tests/test_pipeline.py run it on reports of
synthetic data, the real fixture and the magnetic-tile set."""

from __future__ import annotations

import numpy as np
import pytest

from sdx import metrics as M
from sdx import pipeline
from sdx.data.layout import format_report
from sdx.report import markdown

CHANCE = {"classes": 4, "uniform": 25.0, "majority_acc": 40.0, "majority_class": 2, "majority_class_name": "C",
          "n": 10}
TRAINED = {"name": "clip_t1", "kind": "clip", "origin": "random-init", "train_level": "t1", "method": "full",
           "seed": 42, "fingerprint": "f1", "metadata": {"data": "../shared/data/real", "synthetic": False,
                                                           "exclude_classes": ["B"]}}
NO_RECORD = {"name": "clip_x", "kind": "clip", "origin": "unknown (no sdx_run.json in the checkpoint)",
             "train_level": None, "method": "unknown", "seed": None, "fingerprint": "f2", "metadata": {}}


def _zero_shot(acc: float) -> dict:
    return {lv: {"available": True, "acc": acc, "macc": acc - 1, "n": 10} for lv in ("t0", "t1")}


def _cell(auroc: float, f1: float | None, baseline: dict) -> dict:
    below = [r for r, bad in ((f"pixel AUROC {auroc:.2f} <= 50", auroc <= 50),
                              (f"F1 {f1} <= all-positive F1", f1 is not None and f1 <= baseline["f1"])) if bad]
    return {"pixel_auroc": auroc, "threshold": 0.1, "f1": f1, "iou": 20.0, "f1_max_oracle": 52.0,
            "iou_oracle": 35.0, "oracle_threshold": 0.2, "pixels": 100, "positive_pixels": 33,
            "below_baseline": below}


def _target(name: str, external: bool, positive: int) -> dict:
    b = dict(M.all_positive_baseline(positive, 100), pixels=100, positive_pixels=positive)
    return {"name": name, "external": external, "images": 3, "images_without_mask": 0, "classes": 2, "baseline": b,
            "models": {"clip_t1": {"t0": _cell(47.0, 48.0, b), "t1": _cell(61.0, 55.0, b)},
                       "clip_x": {"skipped": "model has no vision_model/visual_projection (not CLIP-style)"}}}


def _cross(excluded: bool) -> dict:
    return {"unseen_classes": ["B", "D"], "source": "checkpoint metadata" if excluded else "fallback",
            "model_excluded_unseen": excluded, "n_test": 4, "chance": dict(CHANCE, classes=2, uniform=50.0),
            "levels": {"t0": {"available": True, "acc": 95.0, "macc": 94.0}}}


@pytest.fixture
def results() -> dict:
    ext = {"classes": ["Blowhole", "Crack"], "n_images": 6, "fingerprint": "x", "chance": dict(CHANCE, classes=2),
           "t0": {"acc": 50.0, "macc": 50.0}, "t1": {"acc": 60.0, "macc": 55.0}}
    return {
        "meta": {"data": {"data_dir": "real", "synthetic": False}, "tasks": ["task3", "task4", "localization"]},
        "models": [TRAINED, NO_RECORD], "chance": {"test": CHANCE},
        "task3": {"clip_t1": {"zero_shot": _zero_shot(30.0)}, "clip_x": {"zero_shot": _zero_shot(9.0)}},
        "task4": {"clip_t1": {"cross_class": _cross(False), "external": {"magnetic_tile": ext}},
                  "clip_x": {"cross_class": _cross(True), "external": {"magnetic_tile": ext}}},
        "localization": {"threshold": {"rule": "F1-max threshold on the SteelDefectX validation images",
                                       "validation_images": 5},
                         "normal_prompt": "A photo of a flawless steel surface.", "targets_without_masks": [],
                         "targets": [_target("SteelDefectX test", False, 33), _target("magnetic_tile", True, 9)]},
    }


def _section(md: str, title: str) -> str:
    return md.split(title, 1)[1].split("\n## ", 1)[0]


def loc_target(res: dict, name: str) -> dict:
    """One target (SteelDefectX test or an external set) of the localization results."""
    return next(t for t in res["localization"]["targets"] if t["name"] == name)


def assert_report_baselines(md: str, res: dict) -> None:
    """What every report of a full run (all tasks) must show: chance rows beside every classification table,
    the cross-class flag in each row that needs it, the localization baselines and flags, paper-setting labels."""
    chance = res["chance"]["test"]
    chance_row = f"| chance: 1/{chance['classes']} classes; Acc: always the majority class"
    if res.get("task1", {}).get("chance"):
        assert res["task1"]["chance"] == chance and chance_row in _section(md, "## Task 1")
        assert "Paper rows' setting: trained on the full release's train split" in _section(md, "## Task 1")
    t2 = _section(md, "## Task 2")
    assert chance_row in t2 and "Paper rows' setting: pretrained weights + CLIP-Adapter" in t2
    assert f"| {chance['majority_acc']:.2f} / {chance['uniform']:.2f} |" in t2
    t3 = _section(md, "## Task 3")
    assert chance_row in t3
    tables = len(res["task3"]) + sum(1 for r in res["task3"].values() if r.get("few_shot"))
    assert t3.count(chance_row) == tables  # one under every zero-shot and every few-shot table
    t4 = _section(md, "## Task 4")
    for model, r in res["task4"].items():
        row = next(line for line in t4.splitlines() if line.startswith(f"| ours: {model} |"))
        assert ("**NO: the model may have seen these classes" in row) != r["cross_class"]["model_excluded_unseen"]
        if r["cross_class"].get("chance"):
            assert f"| chance: 1/{r['cross_class']['chance']['classes']} classes" in t4
        for name, ext in r["external"].items():
            assert f"### External set: {name} ({ext['n_images']} images" in t4
    assert "Neither set is in this run" in t4
    if any(c.get("available") for r in res["retrieval"].values() for c in r.values()):
        assert "| chance: a random ranking |" in _section(md, "## Retrieval")
    loc_md = _section(md, "## Text-guided localization")
    assert "F1-max (oracle)" in loc_md and "Threshold**: F1-max threshold on the SteelDefectX validation" in loc_md
    for target in res["localization"]["targets"]:
        _assert_localization_target(loc_md, target)


def _assert_localization_target(loc_md: str, target: dict) -> None:
    b = target["baseline"]
    p = b["positive_pixels"] / b["pixels"]
    assert b["f1"] == pytest.approx(200 * p / (1 + p)) and b["iou"] == pytest.approx(100 * p)
    section = loc_md.split(f"### {target['name']} (")[1].split("\n### ")[0]
    assert f"| trivial: every pixel a defect ({100 * p:.2f} % of pixels) | - | 50.00 | {b['f1']:.2f} |" in section
    for model, r in target["models"].items():
        for lv, c in ((lv, r[lv]) for lv in ("t0", "t1") if lv in r):
            beats = c["pixel_auroc"] > 50 and (c["f1"] is None or c["f1"] > b["f1"])
            assert (not c["below_baseline"]) == beats
            row = next(line for line in section.splitlines() if line.startswith(f"| ours: {model} | T{lv[1]} |"))
            assert ("**does not beat it**" in row) != beats
    assert ("| paper: AnomalyCLIP" in section) != target["external"]  # paper rows on SteelDefectX only


def test_models_table_shows_origin_and_training_data_from_the_run_record(results):
    md = markdown.render_markdown(results)
    rows = {line.split(" | ")[0][2:]: line for line in _section(md, "## Models").splitlines()
            if line.startswith("| clip")}
    assert "| random-init | `../shared/data/real` without B |" in rows["clip_t1"]
    assert "| unknown (no sdx_run.json in the checkpoint) | unknown (no run record) |" in rows["clip_x"]


def test_models_table_shows_the_caption_levels_actually_used():
    def row(level, used):
        model = {"name": "m", "kind": "clip", "origin": "random-init", "train_level": level,
                 "metadata": {"data": "d", "caption_levels_used": used}}
        return markdown._model_lines({"models": [model]})[-2]

    assert "| T2 requested; **captions used: T4 56.9 %, T1 43.1 %** |" in row("t2", {"t4": 0.569, "t1": 0.431})
    assert "| T1 |" in row("t1", {"t1": 1.0}) and "| T1 |" in row("t1", {})
    assert "| MIXED (T0 20.0 %, T1 80.0 %) |" in row("mixed", {"t0": 0.2, "t1": 0.8})


def test_paper_zero_shot_only_beside_a_model_that_may_be_untuned(results):
    t3 = _section(markdown.render_markdown(results), "## Task 3")
    trained, untuned = t3.split("### clip_t1", 1)[1].split("### clip_x", 1)
    assert "7.57" not in trained and "paper" not in trained.split("Paper, untuned")[0]
    assert "| T0 | 9.00 | 8.00 | 7.57 |" in untuned  # the checkpoint without a training record
    assert "Paper, untuned zero-shot (a pretrained CLIP-family model with NO training on SteelDefectX" in t3
    for part in (trained, untuned):  # a chance row under every zero-shot table
        assert "| chance: 1/4 classes; Acc: always the majority class (C) | 40.00 | 25.00 |" in part


def test_cross_class_rows_flag_a_model_that_may_have_seen_the_unseen_classes(results):
    t4 = _section(markdown.render_markdown(results), "## Task 4")
    row = {m: next(line for line in t4.splitlines() if line.startswith(f"| ours: {m} |"))
           for m in ("clip_t1", "clip_x")}
    assert "**NO: the model may have seen these classes; not zero-shot transfer**" in row["clip_t1"]
    assert "| yes |" in row["clip_x"] and "**NO" not in row["clip_x"]
    assert "| chance: 1/2 classes; Acc: always the majority class (C) | B, D | - | 40.00 / 50.00 |" in t4


def test_external_set_is_its_own_target_never_in_the_paper_columns(results):
    t4 = _section(markdown.render_markdown(results), "## Task 4")
    ext, paper = t4.split("### External set: magnetic_tile (6 images, 2 classes; not SteelDefectX", 1)[1].split(
        "Paper, for reference", 1)
    assert "| ours: clip_t1 | 50.00 | 50.00 | 60.00 | 55.00 |" in ext and "| chance: 1/2 classes" in ext
    assert "magnetic_tile" not in paper and "Neither set is in this run" in paper
    assert "| paper: text used in training | aluminium (MSD-Cls) | steel tube (CGFSDS-9) |" in paper


def test_localization_tables_baseline_oracle_and_flags(results):
    loc = _section(markdown.render_markdown(results), "## Text-guided localization")
    steel, tile = loc.split("### magnetic_tile (", 1)
    assert ("| trivial: every pixel a defect (33.00 % of pixels) | - | 50.00 | 49.62 | 33.00 | 49.62 | 33.00 | - |"
            in steel)
    assert "| trivial: every pixel a defect (9.00 % of pixels) | - | 50.00 | 16.51 | 9.00 |" in tile
    flagged = next(line for line in steel.splitlines() if line.startswith("| ours: clip_t1 | T0 |"))
    assert "**does not beat it**: pixel AUROC 47.00 <= 50; F1 48.0 <= all-positive F1" in flagged
    assert next(line for line in steel.splitlines() if line.startswith("| ours: clip_t1 | T1 |")).endswith("beats it |")
    assert "| ours: clip_x | - | skipped:" in steel
    # paper rows only on SteelDefectX, in the oracle columns, with their setting
    assert ("| paper: AnomalyCLIP (pretrained, no mask training; full release val masks) | - | 88.21 | - | - | 53.36 |"
            in steel)
    assert "paper:" not in tile and "threshold transferred from SteelDefectX validation" in tile
    assert "F1-max (oracle)" in steel and "compare them with the oracle columns" in steel


def test_paper_rows_name_their_setting_and_the_unverified_row_is_left_out():
    t1 = {"model": TRAINED | {"kind": "image-classifier"}, "acc": 50.0, "macc": 45.0, "macro_f1": 40.0, "n": 10,
          "per_class": [], "chance": CHANCE}
    t2 = {"test_levels": ["t0", "t1"], "candidates": ["A", "B", "C", "D"], "chance": CHANCE,
          "rows": [{"model": "clip_t1", "train_level": "t1", "results": _zero_shot(30.0)}]}
    md = markdown.render_markdown({"meta": {"data": {}}, "task1": t1, "task2": t2})
    task1, task2 = _section(md, "## Task 1"), _section(md, "## Task 2")
    assert "| chance: 1/4 classes; Acc: always the majority class (C) | 40.00 | 25.00 | - | 10 |" in task1
    assert "| chance: 1/4 classes; Acc: always the majority class (C) | 40.00 / 25.00 | 40.00 / 25.00 |" in task2
    assert "| paper: ShuffleNetV2 (trained on the full release; its val split) | 96.34 | 94.98 |" in task1
    assert "Paper rows' setting: trained on the full release's train split" in task1
    assert "ResNet-101 row is left out" in task1 and "93.63" not in task1 and "| paper: ResNet" not in task1
    assert ("| paper: Long-CLIP ViT-L/14 + CLIP-Adapter (T3; trained on the full release; v2) | 94.45 / 93.66 |  |"
            in task2)
    assert "ours: clip_t1 (random-init, trained on `../shared/data/real` without B)" in task1
    t1["model"] = t1["model"] | {"architecture": "resnet"}   # the row names the architecture a folder may not
    assert "ours: clip_t1 (resnet, random-init, trained on" in markdown.render_markdown({"meta": {}, "task1": t1})


def test_vit_confusion_plot_is_tagged_on_synthetic_data(tmp_path, monkeypatch):
    from sdx.train import vit

    titles = []
    monkeypatch.setattr(vit, "plot_confusion", lambda conf, path, title: titles.append(title))
    y = np.array([0, 1, 1])
    for synthetic in (True, False):
        results = {"test_accuracy": 66.7, "test_mean_class_accuracy": 75.0}
        vit.write_test_report(tmp_path, y, y, ["a", "b"], results, synthetic=synthetic)
    assert titles[0].endswith("[SYNTHETIC DATA]") and "SYNTHETIC" not in titles[1]


def test_build_report_says_what_each_count_is():
    summary = {"splits": {"train": 324, "validation": 36, "test": 150}, "records_in": {"train": 360, "val": 150},
               "images_in": {"train": 360, "val": 150}, "rows_out": {"train": 360, "val": 150}}
    lines = format_report(summary).splitlines()
    assert lines[0] == "SteelDefectX build, dataset splits: train 324, validation 36, test 150"
    assert lines[1] == ("  raw folder train/: records in 360 = rows out 360 + skipped 0; images in 360 = rows out 360 "
                        "+ skipped 0 (rows out: the dataset's train and validation splits are drawn from them)")
    assert lines[2].startswith("  raw folder val/: records in 150 = rows out 150 + skipped 0;")
    assert lines[2].endswith("(rows out: they are the dataset's test split)")


def test_pipeline_passes_external_data_to_the_benchmark(tmp_path):
    (tmp_path / "tiles").mkdir()
    args = pipeline.parse_args(["--external_data", str(tmp_path / "tiles"), "--preset", "smoke"])
    argv = pipeline._bench_argv(args, args.settings(), "d", tmp_path / "b", tmp_path / "v", {})
    assert argv[argv.index("--external_data") + 1] == str(tmp_path / "tiles")
    with pytest.raises(ValueError, match="--external_data: folder .*missing not found"):
        pipeline.parse_args(["--external_data", str(tmp_path / "missing")])


def _few_shot(acc: dict[str, float]) -> dict:
    """A task-3 few-shot summary as sdx.bench.fewshot writes it: k 1 and 8, two seeds, Acc k + value +- 1."""
    from sdx.bench.fewshot import summarize

    run = lambda a, seed: {"seed": seed, "acc": a, "macc": a - 2, "n": 10}
    return summarize({m: {k: [run(a + k - 1, 1), run(a + k + 1, 2)] for k in (1, 8)} for m, a in acc.items()})


@pytest.mark.parametrize("strict", [False, True])
def test_few_shot_table_chance_row_paper_curves_beside_their_methods_and_the_protocol(results, strict, tmp_path):
    from sdx.bench.fewshot import METHODS, protocol
    from sdx.report.plots import plot_kshot

    fs = _few_shot({m: 20.0 + 10 * i for i, m in enumerate(METHODS)})
    bench = type("B", (), {"fewshot_validation": 2 if strict else None})()
    results["task3"]["clip_t1"].update(few_shot=fs, few_shot_protocol=protocol(bench),
                                       few_shot_text={"level": "t1", "why": "the model's training level (T1)"})
    md = markdown.render_markdown(results)
    t3 = _section(md, "## Task 3")
    lines = t3.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Few-shot, test Acc"))
    assert ("2 validation images per class" in lines[head]) is strict
    assert ("the whole validation split" in lines[head]) is not strict
    table = lines[head + 2:lines.index("", head + 2)]
    assert table[0] == "| method | k=1 | k=8 |"
    # every method with mean +- std (zero-shot without spread), each paper curve right under its own method
    assert table[2] == "| ours: zero-shot (T1, no shots) | 21.00 | 28.00 |"
    assert table[3] == "| ours: linear probe | 31.00 +- 1.41 | 38.00 +- 1.41 |"
    for ours, paper in (("| ours: Tip-Adapter-F |", "| paper: Tip-Adapter-F (Long-CLIP ViT-L/14, full release"),
                        ("| ours: CLIP-Adapter |", "| paper: Long-CLIP-Adapter (Long-CLIP ViT-L/14, full release")):
        at = next(i for i, line in enumerate(table) if line.startswith(ours))
        assert table[at + 1].startswith(paper) and "approx., read off a figure; v1) | ~" in table[at + 1]
    assert sum(line.startswith("| paper:") for line in table) == 2
    assert table[-1] == "| chance: 1/4 classes; Acc: always the majority class (C) | 40.00 | 40.00 |"
    differs = next(line for line in t3.splitlines() if line.startswith("This model's setting differs"))
    assert "family not recorded, the paper's is Long-CLIP" in differs and "10 test images" in differs
    assert "trained on this run's data (random-init" in differs
    assert "Paper few-shot rows' setting: pretrained Long-CLIP ViT-L/14" in t3 and "best TEST accuracy" in t3
    png = plot_kshot(results["task3"], tmp_path / "k.png", "t", markdown.PAPER["few_shot"]["curves"],
                     markdown.PAPER["few_shot"]["label"], results["chance"]["test"])
    assert png.stat().st_size > 1000
