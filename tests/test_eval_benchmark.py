"""eval_benchmark.py / sdx.bench / sdx.report.markdown end to end on tiny config-built models.

Data: a tiny dataset in the official layout written here (3 classes, masks, T2/T3/T4 records), the embedded
synthetic data, and the real fixture (subsampled with --max_eval_samples). Models: tiny random-init CLIP
(sdx.models.clip.build_clip_from_scratch, a BPE tokenizer trained on the captions) and ViTForImageClassification
built from configs, saved with save_pretrained and loaded back from disk (the real loading path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import assert_report_baselines, loc_target

import eval_benchmark
from sdx import metrics as M
from sdx.bench import fewshot, probe
from sdx.bench.cli import parse_benchmark_args
from sdx.bench.data import external_image_set
from sdx.bench.localize import NORMAL_PROMPT
from sdx.bench.models import VisionClassifier, parse_model_arg
from sdx.bench.tasks import Benchmark
from sdx.data.builder import caption_texts, load_steeldefectx
from sdx.data.levels import T0_TEMPLATE, render_t4

CLASSES = {"Bright scratch": "bs", "Crazing": "cracking", "Inclusion": "in"}
DESC = {"Bright scratch": "A photo of bright scratch, thin bright lines caused by rolling.",
        "Crazing": "A photo of crazing, a network of fine cracks caused by thermal stress.",
        "Inclusion": "A photo of inclusion, dark elongated streaks caused by slag in the steel."}


# ---------------------------------------------------------------------------------------------------------------
# fixtures: data and models
# ---------------------------------------------------------------------------------------------------------------
def _attrs(cls: str, rng) -> dict:
    return {"Defect type": cls, "Shape": str(rng.choice(["linear", "irregular"])),
            "Direction": str(rng.choice(["horizontal", "none"])), "Spatial Distribution": "isolated",
            "Number of Defects": "one", "Position": [["center", 0.7], ["top-left", 0.3]],
            "Scale": str(rng.choice(["small", "medium"])), "Polarity": "dark", "Saliency": "high"}


def write_layout(root: Path, n_train: int = 12, n_val: int = 5, size: int = 48) -> Path:
    rng = np.random.default_rng(0)
    (root / "class_descriptions.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "class_descriptions.json").write_text(json.dumps(DESC))
    for split, n, first in (("train", n_train, 1), ("val", n_val, n_train + 1)):  # names unique across splits
        (root / split).mkdir(exist_ok=True)
        (root / f"{split}_mask").mkdir(exist_ok=True)
        records = []
        for ci, (cls, prefix) in enumerate(CLASSES.items()):
            for i in range(first, first + n):
                name = f"{prefix}_{i:02d}.jpg"
                img = rng.normal(120, 10, (size, size))
                mask = np.zeros((size, size), np.uint8)
                y, x = rng.integers(5, size - 20, 2)
                mask[y:y + 12 + 4 * ci, x:x + 6 + 3 * ci] = 255
                img[mask > 0] += 60 if ci == 0 else -60
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / split / name, quality=95)
                Image.fromarray(mask).save(root / f"{split}_mask" / name.replace(".jpg", ".png"))
                attrs = _attrs(cls, rng)
                records.append({"image_name": name, "class_name": cls,
                                "natural_language_description": f"The {cls.lower()} defect number {i % 4} appears "
                                                                f"near the center of the surface.",
                                "structured_attributes": attrs, "template_sentence": render_t4(attrs)})
        (root / f"{split}-text.json").write_text(json.dumps(records))
    return root


def _vocab_texts(ds) -> list[str]:
    texts = [NORMAL_PROMPT] + [T0_TEMPLATE.format(c) for c in ds["train"].features["label"].names]
    for split in ds.values():
        for lv in ("t1", "t2", "t3", "t4"):
            texts += caption_texts(split, lv)
    return texts + list(DESC.values())


def tiny_clip(out_dir: Path, texts, seed: int = 0, meta: dict | None = None, adapter: bool = False) -> Path:
    """A random-init tiny CLIP from sdx.models (helper "clip"), 64 px images -> 4x4 patch grid, saved to disk."""
    from sdx.models.clip import ClipAdapter, ClipWithAdapter, build_clip_from_scratch

    model, processor = build_clip_from_scratch("tiny", texts, vocab_size=300, image_size=64, seed=seed)
    if adapter:
        model = ClipWithAdapter(model, ClipAdapter(model.config.projection_dim))
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    if meta:
        from sdx.train.runmeta import RunMetadata

        RunMetadata(kind="clip", seed=0, data="synthetic", **meta).write(out_dir)
    return out_dir


def tiny_vit(out_dir: Path, class_names, seed: int = 0, order=None) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    names = [class_names[i] for i in (order or range(len(class_names)))]
    cfg = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                    patch_size=8, num_labels=len(names), id2label=dict(enumerate(names)),
                    label2id={c: i for i, c in enumerate(names)})
    ViTForImageClassification(cfg).save_pretrained(out_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return write_layout(tmp_path_factory.mktemp("layout") / "sdx")


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hfcache"))


@pytest.fixture(scope="module")
def small_ds(layout, hf_cache):
    return load_steeldefectx(str(layout), cache_dir=hf_cache, validation_fraction=0.25)


@pytest.fixture(scope="module")
def models(tmp_path_factory, small_ds):
    root = tmp_path_factory.mktemp("models")
    texts = _vocab_texts(small_ds)
    return {
        "clip_t1": tiny_clip(root / "clip_t1", texts, seed=0),
        "clip_t4": tiny_clip(root / "clip_t4", texts, seed=1, adapter=True,
                             meta={"caption_level": "t4", "origin": "random-init", "method": "adapter",
                                   "exclude_classes": ["Inclusion", "Crazing"]}),
        "vit": tiny_vit(root / "vit", small_ds["train"].features["label"].names),
    }


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """Two classes of 4 images each; masks/<class>/<stem>.png inside the set folder for all but one image."""
    root = tmp_path_factory.mktemp("ext") / "aluminium"
    rng = np.random.default_rng(3)
    for cls in ("dent", "pinhole"):
        (root / cls).mkdir(parents=True)
        (root / "masks" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / cls / f"{i}.png")
            if (cls, i) != ("pinhole", 3):
                mask = np.zeros((40, 40), np.uint8)
                mask[5:15 + 3 * i, 10:30] = 255
                Image.fromarray(mask).save(root / "masks" / cls / f"{i}.png")
    (root / "class_descriptions.json").write_text(json.dumps({"dent": "a dent", "pinhole": "a pinhole"}))
    return root



def _argv(layout, hf_cache, models, out, *extra):
    return ["--data_dir", str(layout), "--cache_dir", hf_cache, "--validation_fraction", "0.25",
            "--model_name_or_path", f"t1={models['clip_t1']}", "--model_name_or_path", str(models["clip_t4"]),
            "--vision_model_name_or_path", str(models["vit"]), "--output_dir", str(out),
            "--shots", "1,2", "--seeds", "1,2", "--no_progress", *extra]


@pytest.fixture(scope="module")
def full_run(layout, hf_cache, models, external, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = eval_benchmark.main(_argv(layout, hf_cache, models, out, "--external_data", str(external)))
    return res, out


# ---------------------------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_all_tasks_end_to_end(full_run, small_ds):
    res, out = full_run
    names = small_ds["train"].features["label"].names
    # Task 1
    t1 = res["task1"]
    assert t1["n"] == len(small_ds["test"]) and 0 <= t1["acc"] <= 100
    assert t1["model"]["architecture"] == "vit"  # the classifier's config.model_type, shown in its report row
    assert {r["class"] for r in t1["per_class"]} >= {names[i] for i in set(small_ds["test"]["label"])}
    assert np.asarray(t1["confusion"]["matrix"]).sum() == len(small_ds["test"])
    # Task 2: one row per checkpoint, train level from the tag / from the checkpoint metadata
    rows = {r["model"]: r for r in res["task2"]["rows"]}
    assert rows["clip_t1"]["train_level"] == "t1" and rows["clip_t4"]["train_level"] == "t4"
    for r in rows.values():
        assert set(r["results"]) == {"t0", "t1", "t2", "t3", "t4"}
        assert all(c["available"] and c["n"] == len(small_ds["test"]) for c in r["results"].values())
    # Task 3: zero-shot per level, the five few-shot methods for every k, mean over the two seeds; the class text
    # is the model's own training level
    for model, level in (("clip_t1", "t1"), ("clip_t4", "t4")):
        assert res["task3"][model]["few_shot_text"]["level"] == level
        assert res["task3"][model]["few_shot_protocol"]["validation"] == "carve-out"
        fs = res["task3"][model]["few_shot"]
        assert list(fs) == list(fewshot.METHODS)
        for method in fewshot.METHODS:
            assert set(fs[method]) == {"1", "2"}
            for cell in fs[method].values():
                assert cell["seeds"] == [1, 2]
                assert method != "linear_probe" or all(isinstance(r["converged"], bool) for r in cell["runs"])
                assert cell["acc_mean"] == pytest.approx(np.mean([r["acc"] for r in cell["runs"]]))
    # Task 4: cross-class from metadata for clip_t4, flagged fallback for clip_t1; the external set
    cc4 = res["task4"]["clip_t4"]["cross_class"]
    assert cc4["unseen_classes"] == ["Crazing", "Inclusion"] and cc4["model_excluded_unseen"] is True
    assert cc4["n_test"] == sum(1 for c in small_ds["test"]["class_name"] if c in ("Crazing", "Inclusion"))
    assert res["task4"]["clip_t1"]["cross_class"]["model_excluded_unseen"] is False
    ext = res["task4"]["clip_t1"]["external"]["aluminium"]
    assert ext["classes"] == ["dent", "pinhole"] and ext["t1"]["n"] == 8
    # retrieval and localization
    ret = res["retrieval"]["clip_t1"]["t4"]
    assert ret["available"] and ret["i2t"]["queries"] == len(small_ds["test"])
    assert 0 <= ret["i2t"]["R@1"] <= ret["i2t"]["R@5"] <= ret["i2t"]["R@10"] <= 100
    steel = loc_target(res, "SteelDefectX test")
    loc = steel["models"]["clip_t1"]
    assert steel["images"] == len(small_ds["test"]) and steel["baseline"]["pixels"] == len(small_ds["test"]) * 48 * 48
    assert 0 <= loc["t0"]["pixel_auroc"] <= 100 and loc["t0"]["pixels"] == len(small_ds["test"]) * 48 * 48
    ext_loc = loc_target(res, "aluminium")  # masks/ inside the set folder; one image has no mask
    assert ext_loc["external"] and ext_loc["images"] == 7 and ext_loc["images_without_mask"] == 1
    assert ext_loc["models"]["clip_t1"]["t0"]["threshold"] == loc["t0"]["threshold"]  # from SteelDefectX validation
    # outputs
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["task2"]["rows"][0]["results"]["t0"]["acc"] == pytest.approx(rows["clip_t1"]["results"]["t0"]["acc"])
    for png in ("confusion_task1.png", "kshot_curve.png", "txty_heatmap_acc.png", "localization_clip_t1.png"):
        assert (out / png).stat().st_size > 1000, png
    md = (out / "report.md").read_text()
    assert "96.34" in md and "94.45 / 93.66" in md and "78.96" in md  # paper numbers beside ours
    lines = md.splitlines()  # each paper few-shot curve right under the method it belongs to
    for ours, paper in (("| ours: CLIP-Adapter |", "| paper: Long-CLIP-Adapter ("),
                        ("| ours: Tip-Adapter-F |", "| paper: Tip-Adapter-F (")):
        at = [i for i, line in enumerate(lines) if line.startswith(ours)]
        assert at and all(lines[i + 1].startswith(paper) for i in at), ours
    assert "random-init" in md and "| T4 | adapter | 0 |" in md and "seeds [1, 2]" in md
    # origin from the run record; a checkpoint without one says so
    assert "| clip_t1 | clip | unknown (no sdx_run.json in the checkpoint) | unknown (no run record) |" in md
    assert "| clip_t4 | clip | random-init | `synthetic` without Inclusion, Crazing |" in md
    assert steel["models"]["clip_t4"]["t0"]["pixels"] > 0  # patch tokens of the CLIP inside the adapter
    assert_report_baselines(md, res)
    assert "SYNTHETIC DATA" not in md and "NOT SteelDefectX" not in md  # not the generator's data


@pytest.mark.slow
def test_selected_hyperparameters_all_on_validation(full_run):
    res, _ = full_run
    hp = res["hyperparameters"]
    # 2 models x 2 k x 2 seeds x (C, Tip-Adapter alpha + beta, Tip-Adapter-F epoch + alpha + beta, ratio + epoch)
    assert len(hp) == 2 * 2 * 2 * 8
    assert {(h["method"], h["name"]) for h in hp} == {
        ("linear_probe", "C"), ("tip_adapter", "alpha"), ("tip_adapter", "beta"), ("tip_adapter_f", "epoch"),
        ("tip_adapter_f", "alpha"), ("tip_adapter_f", "beta"), ("clip_adapter", "ratio"), ("clip_adapter", "epoch")}
    assert {h["selected_on"] for h in hp} == {"validation"}
    assert all(h["value"] in h["grid"] for h in hp)


@pytest.mark.slow
def test_support_sets_train_only_and_builder_identical(full_run, small_ds, layout, hf_cache):
    res, _ = full_run
    train = set(small_ds["train"]["image_name"])
    held = set(small_ds["validation"]["image_name"]) | set(small_ds["test"]["image_name"])
    sets = {(s["k"], s["seed"]): s["image_names"] for s in res["support_sets"]}
    assert set(sets) == {(1, 1), (2, 1), (1, 2), (2, 2)}
    for names in sets.values():
        assert set(names) <= train and not set(names) & held
    assert set(sets[(1, 1)]) <= set(sets[(2, 1)])  # nested across k for one seed
    assert len(sets[(2, 1)]) == 2 * len(CLASSES)
    # the same draw as the builder's own k-shot split
    built = load_steeldefectx(str(layout), cache_dir=hf_cache, validation_fraction=0.25, shots=2, seed=2)
    assert sorted(built["train"]["image_name"]) == sorted(sets[(2, 2)])


def test_selection_never_sees_test(small_ds, models, tmp_path):
    """Selections depend on validation only: replacing the test split leaves every selected value unchanged."""
    import datasets

    kw = {"clip_models": [str(models["clip_t1"])], "shots": (1, 2), "seeds": (1,), "progress": False}
    a = Benchmark(small_ds, **kw)
    a.run(["task3"])
    other = datasets.DatasetDict({"train": small_ds["train"], "validation": small_ds["validation"],
                                  "test": small_ds["test"].select(range(3))})
    b = Benchmark(other, **kw)
    b.run(["task3"])
    pick = lambda bench: [(h["method"], h["k"], h["name"], h["value"]) for h in bench.hyperparameters]
    assert len(pick(a)) == 2 * 8  # k 1 and 2 x the 8 selections of a cell: nothing passes vacuously
    assert pick(a) == pick(b)


def test_few_shot_refused_without_validation(small_ds, models):
    import datasets

    ds = datasets.DatasetDict({"train": small_ds["train"], "validation": small_ds["validation"].select([]),
                               "test": small_ds["test"]})
    bench = Benchmark(ds, clip_models=[str(models["clip_t1"])], shots=(1,), seeds=(1,), progress=False)
    res = bench.run(["task3"])["task3"]["clip_t1"]
    assert "few_shot" not in res and "validation" in res["few_shot_skipped"]
    assert bench.hyperparameters == []


def test_support_leak_is_refused(small_ds, models):
    leak_name = small_ds["validation"][0]["image_name"]
    train = small_ds["train"].map(lambda r, i: {"image_name": leak_name if i == 0 else r["image_name"]},
                                  with_indices=True)
    import datasets

    ds = datasets.DatasetDict({"train": train, "validation": small_ds["validation"], "test": small_ds["test"]})
    bench = Benchmark(ds, clip_models=[str(models["clip_t1"])], shots=(len(train),), seeds=(1,), progress=False)
    with pytest.raises(RuntimeError, match="validation/test"):
        fewshot.checked_supports(bench)


def test_support_images_with_the_bytes_of_held_out_images_are_reported(small_ds, models):
    """Disjoint by name is not disjoint by content: a train image with a test image's bytes (another name), and a
    validation image with a test image's bytes, are listed in the support records and the report warns."""
    import datasets

    from sdx.report.markdown import _same_bytes_lines

    raw = datasets.Image(decode=False)
    test_bytes = [r["bytes"] for r in small_ds["test"].cast_column("image", raw)["image"][:2]]

    def with_bytes(split, blob):
        ds = small_ds[split].cast_column("image", raw)
        ds = ds.map(lambda r, i: {"image": {"bytes": blob, "path": None} if i == 0 else r["image"]},
                    with_indices=True)
        return ds.cast_column("image", datasets.Image())

    ds = datasets.DatasetDict({"train": with_bytes("train", test_bytes[0]),
                               "validation": with_bytes("validation", test_bytes[1]), "test": small_ds["test"]})
    bench = Benchmark(ds, clip_models=[str(models["clip_t1"])], shots=(len(ds["train"]),), seeds=(1,),
                      progress=False)
    fewshot.checked_supports(bench)
    (record,) = bench.support_sets
    assert record["same_bytes_as_held_out"] == [ds["train"][0]["image_name"]]
    assert record["validation"]["same_bytes_as_test"] == [ds["validation"][0]["image_name"]]
    warning = "\n".join(_same_bytes_lines(bench.support_sets))
    assert "1 support image(s)" in warning and "1 validation image(s)" in warning
    assert _same_bytes_lines([{**record, "same_bytes_as_held_out": [], "validation": {}}]) == []


@pytest.mark.slow
def test_rerun_reuses_cache(full_run, layout, hf_cache, models, external):
    res, out = full_run
    again = eval_benchmark.main(_argv(layout, hf_cache, models, out, "--external_data", str(external)))
    assert again["cache"], "no cache counters"
    assert all(c["encoded"] == 0 for c in again["cache"].values()), again["cache"]
    assert sum(c["reused"] for c in again["cache"].values()) > 0
    assert again["task2"] == res["task2"] and again["localization"] == res["localization"]


@pytest.mark.slow
def test_cache_invalidated_by_new_weights(small_ds, models, tmp_path):
    import shutil

    ckpt = tmp_path / "clip"
    shutil.copytree(models["clip_t1"], ckpt)
    kw = {"clip_models": [str(ckpt)], "cache_dir": tmp_path / "cache", "progress": False}
    first = Benchmark(small_ds, **kw)
    first.run(["task2"])
    assert first.cache.counts()["image"]["encoded"] == len(small_ds["test"])
    second = Benchmark(small_ds, **kw)
    second.run(["task2"])
    assert second.cache.counts()["image"] == {"encoded": 0, "reused": len(small_ds["test"]), "discarded": 0}
    tiny_clip(ckpt, _vocab_texts(small_ds), seed=5)  # new weights in the same folder
    third = Benchmark(small_ds, **kw)
    third.run(["task2"])
    assert third.cache.counts()["image"]["encoded"] == len(small_ds["test"])


def test_localization_threshold_from_validation_never_from_test(small_ds, models):
    """The threshold is the F1-max threshold of the validation pixels: replacing the test split leaves it
    unchanged; F1 / IoU are that threshold's on the test pixels; F1-max (the oracle) is never below them."""
    import datasets

    from sdx.bench import localize

    kw = {"clip_models": [str(models["clip_t1"])], "progress": False}
    bench = Benchmark(small_ds, **kw)
    cell = loc_target(bench.run(["localization"]), "SteelDefectX test")["models"]["clip_t1"]["t0"]
    enc = bench.encoders()[0]
    val_s, val_y, _ = localize.pixel_scores(bench, enc, localize.steel_target(bench, "validation"), "t0")
    assert cell["threshold"] == M.f1_max(val_s, val_y)[1]
    test_s, test_y, _ = localize.pixel_scores(bench, enc, localize.steel_target(bench, "test"), "t0")
    assert (cell["f1"], cell["iou"]) == pytest.approx(M.f1_iou_at(test_s, test_y, cell["threshold"]))
    assert cell["f1_max_oracle"] >= cell["f1"]
    other = datasets.DatasetDict({"train": small_ds["train"], "validation": small_ds["validation"],
                                  "test": small_ds["test"].select(range(4))})
    again = loc_target(Benchmark(other, **kw).run(["localization"]), "SteelDefectX test")["models"]["clip_t1"]["t0"]
    assert again["threshold"] == cell["threshold"] and again["pixels"] < cell["pixels"]


def _tile_set(root: Path, sizes) -> Path:
    """Class folders of images of the given (w, h) sizes; masks/ BESIDE the set folder (the magnetic-tile layout)."""
    rng = np.random.default_rng(5)
    for cls in ("crack", "fray"):
        (root / "set" / cls).mkdir(parents=True)
        (root / "masks" / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(root / "set" / cls / f"{i}.jpg")
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4: h // 2, : w // 3] = 255
            Image.fromarray(mask).save(root / "masks" / cls / f"{i}.png")
    (root / "set" / "class_descriptions.json").write_text(json.dumps({"crack": "a crack", "fray": "a fray"}))
    return root / "set"


def test_external_masks_beside_the_set_and_non_square_images(tmp_path, small_ds, models):
    folder = _tile_set(tmp_path, [(60, 30), (32, 32)])
    ext = external_image_set(folder)
    assert ext.classes == ["crack", "fray"] and ext.masked_rows == [0, 1, 2, 3]
    view = ext.iset.square_view()  # the non-square image is squared (and keyed apart), the square one unchanged
    assert view.pil(0).size == (60, 60) and view.size(0) == (60, 30) and view.pil(1).size == (32, 32)
    assert view.keys[0] != ext.iset.keys[0] and view.keys[1] == ext.iset.keys[1]
    bench = Benchmark(small_ds, clip_models=[str(models["clip_t1"])], external=[(str(folder), None)], progress=False)
    target = loc_target(bench.run(["localization"]), "set")
    # every pixel of every mask is scored: the score map covers the whole image, not the processor's centre crop
    assert target["baseline"]["pixels"] == 2 * (60 * 30 + 32 * 32)
    assert target["models"]["clip_t1"]["t0"]["pixels"] == target["baseline"]["pixels"]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "fray" / "1.png")
    with pytest.raises(ValueError, match=r"masks/fray/1.png: mask size \(10, 10\) differs"):
        external_image_set(folder).iset.masks()


def _probe_data(seed: int, n_per_class: int):
    rng = np.random.default_rng(0)  # the same class centres for every draw
    centers = rng.normal(size=(4, 16))
    y = np.repeat([3, 5, 8, 9], n_per_class)
    noise = np.random.default_rng(seed).normal(scale=1.5, size=(len(y), 16))
    return centers[np.searchsorted([3, 5, 8, 9], y)] + noise, y


def test_linear_probe_minimises_the_stated_objective():
    """At the fit, the gradient of C * sum_i CE_i + 0.5 ||W||^2 (bias not penalised) vanishes."""
    x, y = _probe_data(1, 6)
    for C in (0.1, 1.0, 10.0):
        model, converged = probe.fit_logistic(x, y, C)
        assert converged and model.coef_.shape == (4, 16)  # multinomial: one row per class
        d = model.predict_proba(x) - (y[:, None] == model.classes_[None, :])
        grad_w, grad_b = C * d.T @ x + model.coef_, C * d.sum(axis=0)
        assert np.abs(grad_w).max() < 1e-3 * max(1.0, C) and np.abs(grad_b).max() < 1e-3 * max(1.0, C)


def test_linear_probe_selects_first_best_c_on_validation():
    x, y = _probe_data(1, 3)
    x_val, y_val = _probe_data(2, 10)
    grid = (0.001, 0.01, 0.1, 1.0, 10.0)
    accs = [M.accuracy(y_val, probe.fit_logistic(x, y, C)[0].predict(x_val)) for C in grid]
    fit = probe.linear_probe(x, y, x_val, y_val, grid)
    assert fit.C == grid[int(np.argmax(accs))] and fit.val_acc == max(accs)


def test_text_pass_one_batch_on_one_thread_same_rows(models):
    """A class table (one batch) is encoded on one torch thread, row for row what the encoder gives, and the
    thread count is restored; a pass of several batches keeps the pool."""
    import torch

    from sdx.bench.embeddings import EmbeddingCache
    from sdx.bench.models import TEXT_BATCH, BenchClip

    enc = BenchClip(str(models["clip_t1"]))
    table = [f"a photo of class {i}" for i in range(25)]
    many = [f"caption {i} of a scratch" for i in range(TEXT_BATCH + 3)]
    seen = []
    encode = enc.encode_texts
    enc.encode_texts = lambda texts: seen.append(torch.get_num_threads()) or encode(texts)
    threads = torch.get_num_threads()
    cache = EmbeddingCache(None, progress=False)
    rows = cache.texts(enc, table, "t0")
    assert seen == [1] and torch.get_num_threads() == threads
    np.testing.assert_array_equal(rows, encode(table))
    seen.clear()
    assert cache.texts(enc, many, "t2").shape[0] == len(many) and seen == [threads, threads]


def test_images_of_one_stream_of_batches(small_ds, models):
    """Several requests are encoded as one stream of full batches (as one plain pass over them), each image
    once, with the rows of separate requests; a repeated request is served from memory, not counted again."""
    bench = Benchmark(small_ds, clip_models=[str(models["clip_t1"])], batch_size=4, progress=False)
    enc, test, train = bench.encoders()[0], bench.split("test"), bench.split("train")
    rows = [5, 0, 3, 0]  # a duplicate row: encoded once
    sizes = []
    encode = enc.encode_images
    enc.encode_images = lambda images, **kw: sizes.append(len(images)) or encode(images, **kw)
    got = bench.cache.images_of(enc, [(test, None), (train, rows)])
    n = len(test.keys) + 3
    assert sizes == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    alone = Benchmark(small_ds, clip_models=[str(models["clip_t1"])], batch_size=4, progress=False)
    np.testing.assert_allclose(got[0], alone.cache.images(enc, test), atol=1e-6)
    np.testing.assert_allclose(got[1], alone.cache.images(enc, train, rows), atol=1e-6)
    counts = dict(bench.cache.counts()["image"])
    assert bench.cache.images(enc, train, rows) is got[1] and bench.cache.counts()["image"] == counts


def test_task1_maps_labels_by_name(small_ds, models, tmp_path):
    names = small_ds["train"].features["label"].names
    order = list(reversed(range(len(names))))
    vit = tiny_vit(tmp_path / "vit_rev", names, seed=0, order=order)
    mapping = VisionClassifier(str(vit)).label_map(names)
    assert mapping.tolist() == order


# ---------------------------------------------------------------------------------------------------------------
# synthetic data and the real fixture
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_synthetic_data_flagged(tmp_path):
    ds = load_steeldefectx("synthetic")  # the default datasets cache: shared with other tests, keyed by the data
    clip = tiny_clip(tmp_path / "clip", _vocab_texts(ds))
    vit = tiny_vit(tmp_path / "vit", ds["train"].features["label"].names)
    res = eval_benchmark.main(["--data_dir", "synthetic", "--vision_model_name_or_path", str(vit),
                               "--model_name_or_path", f"t2={clip}", "--tasks", "all",
                               "--shots", "1", "--seeds", "1", "--max_eval_samples", "40", "--no_progress",
                               "--output_dir", str(tmp_path / "out")])
    assert res["meta"]["data"]["synthetic"] is True
    assert res["task1"]["n"] == 40 and res["task2"]["rows"][0]["results"]["t2"]["available"]
    assert res["task4"]["clip"]["cross_class"]["levels"]["t0"]["n"] > 0
    steel = loc_target(res, "SteelDefectX test")
    assert res["retrieval"]["clip"]["t2"]["available"] and steel["models"]["clip"]["t0"]["pixels"] > 0
    assert res["localization"]["threshold"]["validation_images"] > 0  # the synthetic validation split has masks
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# SteelDefectX benchmark report (SYNTHETIC DATA)") and "NOT SteelDefectX" in md
    assert {h["selected_on"] for h in res["hyperparameters"]} == {"validation"}
    assert_report_baselines(md, res)


@pytest.mark.slow
def test_real_fixture_subsampled(real_subset, magnetic_tile, tmp_path):
    ds = load_steeldefectx(str(real_subset))  # default datasets cache (shared, keyed by the raw files' fingerprint)
    clip = tiny_clip(tmp_path / "clip", _vocab_texts(ds))
    vit = tiny_vit(tmp_path / "vit", ds["train"].features["label"].names)
    res = eval_benchmark.main(["--data_dir", str(real_subset), "--vision_model_name_or_path", str(vit),
                               "--model_name_or_path", f"t4={clip}", "--tasks", "all",
                               "--shots", "1", "--seeds", "1", "--max_eval_samples", "60", "--no_progress",
                               "--external_data", str(magnetic_tile), "--output_dir", str(tmp_path / "out")])
    assert res["task1"]["n"] == 60 and res["task4"]["clip"]["cross_class"]["n_test"] > 0
    row = res["task2"]["rows"][0]["results"]
    # the fixture has no T2 text at all: reported unavailable, never silently equal to T1
    assert row["t2"]["available"] is False
    assert row["t4"]["available"] and row["t4"]["fallback_to_t1"]  # X-SDD classes have no T4
    assert res["retrieval"]["clip"]["t2"]["available"] is False
    steel = loc_target(res, "SteelDefectX test")
    assert 0 < steel["images"] <= 60 and steel["models"]["clip"]["t0"]["positive_pixels"] > 0
    assert res["localization"]["threshold"]["validation_images"] > 0  # NEU validation images have masks
    held = set(ds["validation"]["image_name"]) | set(ds["test"]["image_name"])
    assert not {n for s in res["support_sets"] for n in s["image_names"]} & held
    assert res["meta"]["data"]["synthetic"] is False
    md = (tmp_path / "out" / "report.md").read_text()
    assert "subsampled" in md
    # the magnetic-tile set: its own transfer table and localization target (masks/ beside the set folder)
    ext = res["task4"]["clip"]["external"]["magnetic_tile"]
    assert ext["n_images"] == 392 and ext["classes"] == ["Blowhole", "Break", "Crack", "Fray", "Uneven"]
    assert ext["chance"]["uniform"] == pytest.approx(20.0)
    assert ext["chance"]["majority_acc"] == pytest.approx(100 * 115 / 392)  # Blowhole
    assert "### External set: magnetic_tile (392 images, 5 classes; not SteelDefectX" in md
    tile = loc_target(res, "magnetic_tile")
    assert tile["external"] and tile["images"] == 392 and tile["classes"] == 5
    assert 0.05 < tile["baseline"]["positive_rate"] / 100 < 0.15  # the README: 8.7 % of pixels on average
    cell = tile["models"]["clip"]["t0"]
    assert cell["threshold"] == steel["models"]["clip"]["t0"]["threshold"]  # transferred from SteelDefectX
    assert_report_baselines(md, res)


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def test_help_is_complete(capsys):
    with pytest.raises(SystemExit) as exc:
        eval_benchmark.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--model_name_or_path", "--vision_model_name_or_path", "--data_dir", "--dataset_config_name",
                "--cache_dir", "--embedding_cache_dir", "--tasks", "--output_dir", "--shots", "--seeds",
                "--batch_size", "--external_data", "--unseen_classes", "--max_eval_samples"):
        assert opt in text


def test_repeatable_options_and_config_file(tmp_path):
    args = parse_benchmark_args(["--output_dir", "o", "--model_name_or_path", "a", "--model_name_or_path", "t3=b",
                                 "--external_data", "x", "--external_data", "y=d.json", "--shots", "1,4"])
    assert args.model_name_or_path == ["a", "t3=b"] and [m.level for m in args.model_specs] == [None, "t3"]
    assert args.external_sets == [("x", None), ("y", "d.json")] and args.shot_list == [1, 4]
    assert args.data_dir == "synthetic" and args.embedding_cache_dir is None and args.cache_dir is None
    (tmp_path / "args.yaml").write_text("output_dir: o\nmodel_name_or_path: [a, t3=b]\nshots: '2'\n")
    from_file = parse_benchmark_args([str(tmp_path / "args.yaml")])
    assert from_file.model_name_or_path == ["a", "t3=b"] and from_file.shot_list == [2]


def test_bad_inputs_are_named(tmp_path, models):
    with pytest.raises(SystemExit, match="unknown task"):
        eval_benchmark.main(["--tasks", "task9", "--output_dir", str(tmp_path), "--model_name_or_path", "x"])
    with pytest.raises(SystemExit, match="model_name_or_path"):
        eval_benchmark.main(["--tasks", "task2", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--shots"):
        eval_benchmark.main(["--shots", "1,0", "--output_dir", str(tmp_path), "--model_name_or_path", "x"])
    with pytest.raises(SystemExit, match="--levels"):
        eval_benchmark.main(["--levels", "t9", "--output_dir", str(tmp_path), "--model_name_or_path", "x"])
    (tmp_path / "ext" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="class_descriptions.json"):
        external_image_set(tmp_path / "ext")
    assert parse_model_arg("fine=/x/y").level == "t2" and parse_model_arg("/x=y").level is None
