"""The adapter methods of the benchmark (sdx.bench.adapters, the few-shot grid, the Tx-Ty adapter rows) and adapter
folders as artifacts (train_clip.py --method adapter / --no_merge_lora, sdx.models.clip.load_clip).

Known answers come from synthetic cached features: well-separated clusters, with class texts either aligned with
them (every method reaches 100 %) or unrelated to them (zero-shot is near chance, so only a method that really
uses its support reaches 100 %). Models are tiny CLIPs built from configs and saved to disk.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdx import metrics as M
from sdx.bench import adapters as A
from sdx.bench import fewshot, probe

N_CLASSES, DIM = 5, 128


# ---------------------------------------------------------------------------------------------------------------
# synthetic cached features
# ---------------------------------------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clusters(seed: int = 0):
    """(draw(n per class, seed) -> (features, labels), centres): tight clusters around random centres in the
    first half of the dimensions."""
    centres = np.zeros((N_CLASSES, DIM))
    centres[:, :DIM // 2] = np.random.default_rng(seed).normal(size=(N_CLASSES, DIM // 2))
    centres = _unit(centres)

    def draw(n: int, rng_seed: int):
        rng = np.random.default_rng(rng_seed)
        y = np.repeat(np.arange(N_CLASSES), n)
        return _unit(centres[y] + 0.01 * rng.normal(size=(len(y), DIM))), y

    return draw, centres


def _unrelated_texts() -> np.ndarray:
    """Class texts orthogonal to every centre (random directions in the second half of the dimensions): zero-shot
    is near chance."""
    text = np.zeros((N_CLASSES, DIM))
    text[:, DIM // 2:] = np.random.default_rng(7).normal(size=(N_CLASSES, DIM - DIM // 2))
    return _unit(text)


def _context(text: np.ndarray, draw) -> fewshot.Context:
    x_val, y_val = draw(4, 101)
    x_test, y_test = draw(20, 102)
    classes = np.arange(10, 10 + N_CLASSES)  # class ids are not positions
    return fewshot.Context(classes=classes, text=text, text_info={"level": "t0"}, x_val=x_val, y_val=classes[y_val],
                           x_test=x_test, y_test=classes[y_test], logit_scale=float(np.log(100.0)))


def _cells(ctx: fewshot.Context, draw, k: int = 4, seeds=(1, 2)) -> list[fewshot.Cell]:
    cells = []
    for s in seeds:
        xs, ys = draw(k, s)
        cells.append(fewshot.Cell(k=k, seed=s, xs=xs, ys=ctx.classes[ys], val_rows=np.arange(len(ctx.y_val))))
    return cells


class _Recorder:
    """What the few-shot functions need of a Benchmark: the selection log."""

    def __init__(self):
        self.hyperparameters: list[dict] = []

    def select(self, **record):
        record.setdefault("selected_on", "validation")
        self.hyperparameters.append(record)


def _grid(ctx, cells):
    """{method: [test Acc per cell]} of every method, and the selection log."""
    bench, enc = _Recorder(), SimpleNamespace(label="m")
    out = {"zero_shot": [ctx.scores(np.argmax(ctx.x_test @ ctx.text.T, axis=1))["acc"]] * len(cells)}
    for cell in cells:
        for method, rec in fewshot._probe_and_tip(bench, enc, ctx, cell).items():
            out.setdefault(method, []).append(rec["acc"])
    out["clip_adapter"] = [r["acc"] for r in fewshot._clip_adapters(bench, enc, ctx, cells)]
    return out, bench.hyperparameters


# ---------------------------------------------------------------------------------------------------------------
# methods with a known answer
# ---------------------------------------------------------------------------------------------------------------
def test_every_method_reaches_100_on_separated_clusters():
    draw, centres = _clusters()
    ctx = _context(centres, draw)  # class texts = the cluster centres
    accs, _ = _grid(ctx, _cells(ctx, draw))
    assert set(accs) == set(fewshot.METHODS)
    assert all(a == 100.0 for a in sum(accs.values(), [])), accs


def test_the_adapters_do_the_work_when_the_class_texts_are_wrong():
    """Class texts unrelated to the clusters: zero-shot is near chance, so 100 % shows the support is used. A
    CLIP-Adapter (or cache) that were bypassed would score the zero-shot accuracy."""
    draw, _ = _clusters()
    ctx = _context(_unrelated_texts(), draw)
    accs, _ = _grid(ctx, _cells(ctx, draw))
    assert accs["zero_shot"][0] <= 40.0
    for method in ("linear_probe", "tip_adapter", "tip_adapter_f", "clip_adapter"):
        assert accs[method] == [100.0, 100.0], (method, accs)


def test_clip_adapter_output_is_what_is_scored():
    """The CLIP-Adapter of the grid changes the features: its predictions differ from the unadapted ones."""
    draw, _ = _clusters()
    ctx = _context(_unrelated_texts(), draw)
    cell = _cells(ctx, draw, seeds=(1,))[0]
    fit = A.fit_clip_adapters([A.Group(cell.xs, ctx.positions(cell.ys), ctx.x_val, ctx.positions(ctx.y_val), 1)],
                              ctx.text, logit_scale=ctx.logit_scale)[0]
    adapted = A.predict_positions(fit, ctx.x_test, ctx.text)
    plain = np.argmax(ctx.x_test @ ctx.text.T, axis=1)
    assert M.accuracy(ctx.positions(ctx.y_test), adapted) == 100.0
    assert M.accuracy(ctx.positions(ctx.y_test), plain) <= 40.0


def test_bank_adapters_are_clip_adapters():
    from sdx.models.clip import ClipAdapter

    torch.manual_seed(0)
    adapters = [ClipAdapter(DIM, 4, r) for r in (0.2, 0.6, 0.8)]
    bank = A.AdapterBank(adapters)
    x = torch.randn(3, 7, DIM)
    out = bank(x)
    for m, adapter in enumerate(adapters):
        assert torch.allclose(out[m], adapter(x[m]), atol=1e-6)
        assert torch.allclose(bank.export(m)(x[m]), adapter(x[m]), atol=1e-6)


def test_groups_trained_together_equal_each_trained_alone():
    draw, centres = _clusters()
    x_val, y_val = draw(3, 50)
    groups = [A.Group(*draw(2, s), x_val, y_val, seed=s) for s in (1, 2)]
    together = A.fit_clip_adapters(groups, centres, logit_scale=2.0)
    for g, fit in zip(groups, together):
        alone = A.fit_clip_adapters([g], centres, logit_scale=2.0)[0]
        assert (fit.ratio, fit.epoch, fit.val_acc) == (alone.ratio, alone.epoch, alone.val_acc)
        assert torch.allclose(fit.adapter.fc[0].weight, alone.adapter.fc[0].weight, atol=1e-5)


def test_tip_adapter_f_starts_from_the_cache_and_selects_its_epoch_on_validation():
    draw, centres = _clusters()
    xs, ys = draw(2, 1)
    x_val, y_val = draw(4, 2)
    values = A.one_hot(ys, N_CLASSES)
    fit = A.tip_adapter_f(xs, ys, values, centres, x_val, y_val, init_alpha=1.0, init_beta=1.0, seed=1, epochs=3)
    assert 1 <= fit.epoch <= 3 and fit.alpha in A.TIP_ALPHA_GRID and fit.beta in A.TIP_BETA_GRID
    assert fit.keys.shape == xs.shape and not np.allclose(fit.keys, xs)  # the keys were fine-tuned
    logits = A.tip_logits(x_val, xs, values, centres, 2.0, 3.0)  # the stated formula
    cache = np.exp(-3.0 * (1.0 - x_val @ xs.T)) @ values
    assert np.allclose(logits, 100.0 * x_val @ centres.T + 2.0 * cache, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------------------------
def test_every_selection_is_recorded_and_made_on_validation():
    draw, centres = _clusters()
    ctx = _context(centres, draw)
    cells = _cells(ctx, draw)
    _, hp = _grid(ctx, cells)
    per_cell = {("linear_probe", "C"), ("tip_adapter", "alpha"), ("tip_adapter", "beta"), ("tip_adapter_f", "epoch"),
                ("tip_adapter_f", "alpha"), ("tip_adapter_f", "beta"), ("clip_adapter", "ratio"),
                ("clip_adapter", "epoch")}
    for cell in cells:  # fails when a selection goes unrecorded
        got = [(h["method"], h["name"]) for h in hp if h["seed"] == cell.seed]
        assert sorted(got) == sorted(per_cell)
    assert all(h["selected_on"] == "validation" and h["value"] in h["grid"] for h in hp)
    assert all(h["validation_images"] == len(ctx.y_val) for h in hp)
    # the test set plays no part: other test images, the same selections
    other = fewshot.Context(**{**vars(ctx), "x_test": ctx.x_test[::-1][:7], "y_test": ctx.y_test[::-1][:7]})
    _, hp_other = _grid(other, cells)
    assert [(h["method"], h["name"], h["value"]) for h in hp] == [(h["method"], h["name"], h["value"])
                                                                 for h in hp_other]


def test_probe_grid_and_adapter_grids_are_the_documented_ones():
    assert probe.LP_C_GRID == (0.01, 0.1, 1.0, 10.0, 100.0)
    assert {0.2, 0.6} <= set(A.FEWSHOT_RECIPE.ratios)
    assert (A.TIP_F_EPOCHS, A.TIP_F_BATCH, A.TIP_F_LR, A.TIP_F_EPS) == (20, 256, 1e-3, 1e-4)
    assert (A.TXTY_RECIPE.optimizer, A.TXTY_RECIPE.lr, A.TXTY_RECIPE.epochs) == ("adam", 1e-4, 20)


# ---------------------------------------------------------------------------------------------------------------
# the benchmark: protocols, disjoint cells, Task 2 adapter rows (tiny models saved to disk)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    from test_eval_benchmark import write_layout

    from sdx.data.builder import load_steeldefectx

    layout = write_layout(tmp_path_factory.mktemp("layout") / "sdx")
    return load_steeldefectx(str(layout), cache_dir=str(tmp_path_factory.mktemp("hf")), validation_fraction=0.25)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, small_ds):
    from test_eval_benchmark import _vocab_texts, tiny_clip

    return tiny_clip(tmp_path_factory.mktemp("clip") / "clip_t4", _vocab_texts(small_ds), seed=0,
                     meta={"caption_level": "t4", "origin": "random-init", "method": "full"})


@pytest.mark.parametrize("n_val", [None, 1])
def test_support_validation_and_test_disjoint_in_every_cell(small_ds, clip_dir, n_val):
    from sdx.bench.tasks import Benchmark

    bench = Benchmark(small_ds, clip_models=[str(clip_dir)], shots=(1, 2), seeds=(1, 2), progress=False,
                      fewshot_validation=n_val)
    res = bench.run(["task3"])["task3"]["clip_t4"]
    names = {s: set(small_ds[s]["image_name"]) for s in ("train", "validation", "test")}
    n_classes = len(set(small_ds["validation"]["label"]))
    assert len(bench.support_sets) == 4
    for cell in bench.support_sets:
        support = set(cell["image_names"])
        val = set(cell["validation"].get("image_names", names["validation"]))
        assert support <= names["train"] and val <= names["validation"]
        assert not support & val and not support & names["test"] and not val & names["test"]
        assert len(val) == (n_classes * n_val if n_val else len(names["validation"]))
    used = {h["validation_images"] for h in bench.hyperparameters}
    assert used == {n_classes * n_val if n_val else len(names["validation"])}
    assert res["few_shot_protocol"]["strict"] is bool(n_val)
    assert res["few_shot_text"]["level"] == "t4"  # the model's own training level


def test_strict_validation_draw_is_seeded_and_from_validation(small_ds, clip_dir):
    from sdx.bench.tasks import Benchmark

    bench = Benchmark(small_ds, clip_models=[str(clip_dir)], shots=(1,), seeds=(1, 2), progress=False,
                      fewshot_validation=2)
    draws = fewshot.validation_sets(bench)
    assert draws == fewshot.validation_sets(bench) and draws[1] != draws[2]
    val = bench.split("validation")
    for rows in draws.values():
        assert np.bincount(val.labels[rows]).max() == 2


def test_txty_adapter_rows_per_level(small_ds, clip_dir):
    from sdx.bench.tasks import Benchmark

    bench = Benchmark(small_ds, adapter_bases=[str(clip_dir)], adapter_levels=("t0", "t4"), levels=("t0", "t1"),
                      progress=False, seeds=(3,))
    res = bench.run(["task2"])
    rows = res["task2"]["rows"]
    assert [(r["model"], r["train_level"]) for r in rows] == [
        ("clip_t4", "none"), ("clip_t4 + CLIP-Adapter", "t0"), ("clip_t4 + CLIP-Adapter", "t4")]
    for r in rows:
        assert set(r["results"]) == {"t0", "t1"} and all(c["available"] for c in r["results"].values())
    adapted = rows[1:]
    assert {r["adapter"]["loss"] for r in adapted} == {"bidirectional", "captions"}
    assert all(r["adapter"]["ratio"] in A.TXTY_RECIPE.ratios and r["adapter"]["train_images"] > 0 for r in adapted)
    hp = [h for h in bench.hyperparameters if h["task"] == "task2"]
    assert len(hp) == 2 * 2 and {h["selected_on"] for h in hp} == {"validation"}
    assert [m["name"] for m in res["models"]] == ["clip_t4"]


# ---------------------------------------------------------------------------------------------------------------
# adapter folders as artifacts
# ---------------------------------------------------------------------------------------------------------------
def _image_logits(model, processor, images, texts):
    from sdx.models.clip import encode_images, encode_text_list

    pix = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return encode_images(model, pix) @ encode_text_list(model, processor.tokenizer, texts).T


def _tiny_base(out_dir, texts):
    from sdx.models.clip import build_clip_from_scratch

    model, processor = build_clip_from_scratch("tiny", texts, vocab_size=300, image_size=32, seed=0)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return model, processor


@pytest.mark.parametrize("named_base", [True, False])
def test_adapter_folder_refuses_stock_loaders_and_loads_with_sdx(tmp_path, named_base):
    from PIL import Image
    from transformers import CLIPModel, pipeline

    from sdx.models.clip import (
        BASE_SUBFOLDER,
        CLIP_ADAPTER_CONFIG,
        ClipAdapter,
        ClipWithAdapter,
        adapter_base,
        load_clip,
    )

    texts = ["a bright scratch", "a dark spot", "crazing cracks"]
    base, processor = _tiny_base(tmp_path / "base_model", texts)
    torch.manual_seed(1)
    out = tmp_path / "adapter"
    ClipWithAdapter(base, ClipAdapter(base.config.projection_dim, alpha=0.6)).save_pretrained(
        out, base_model_name_or_path=str(tmp_path / "base_model") if named_base else None, processor=processor)
    processor.save_pretrained(out)
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    cfg = json.loads((out / CLIP_ADAPTER_CONFIG).read_text())
    assert cfg["base_model_name_or_path"] == (str((tmp_path / "base_model").resolve()) if named_base
                                              else BASE_SUBFOLDER)
    assert (cfg["embed_dim"], cfg["reduction"], cfg["alpha"], cfg["format"]) == (32, 4, 0.6, 2)
    assert (out / BASE_SUBFOLDER / "config.json").is_file() is not named_base
    with pytest.raises(OSError):
        CLIPModel.from_pretrained(out)
    with pytest.raises((OSError, ValueError)):
        pipeline("zero-shot-image-classification", model=str(out))
    model, proc = load_clip(str(out))
    assert isinstance(model, ClipWithAdapter) and adapter_base(out) is not None
    images = [Image.new("RGB", (40, 40), (i * 60, 100, 200 - i * 50)) for i in range(3)]
    plain, _ = load_clip(str(tmp_path / "base_model"))
    assert not torch.allclose(_image_logits(model, proc, images, texts), _image_logits(plain, proc, images, texts))


def test_evaluator_reads_an_adapter_folder_and_keys_it_by_its_base(tmp_path, small_ds):
    from test_eval_benchmark import _vocab_texts

    from sdx.bench.models import BenchClip, clip_fingerprint
    from sdx.bench.tasks import Benchmark
    from sdx.models.clip import ClipAdapter, ClipWithAdapter

    base, processor = _tiny_base(tmp_path / "base", _vocab_texts(small_ds))
    out = tmp_path / "adapter"
    ClipWithAdapter(base, ClipAdapter(32)).save_pretrained(out, base_model_name_or_path=str(tmp_path / "base"))
    processor.save_pretrained(out)
    assert BenchClip(str(out)).adapter is not None
    before = clip_fingerprint(str(out))
    res = Benchmark(small_ds, clip_models=[str(out)], levels=("t0",), progress=False).run(["task2"])
    assert res["task2"]["rows"][0]["results"]["t0"]["available"]
    _tiny_base(tmp_path / "base", _vocab_texts(small_ds) + ["a new text"])  # the base retrained in place
    assert clip_fingerprint(str(out)) != before


@pytest.fixture(scope="module")
def syn_dir(tmp_path_factory):
    from sdx.data.synthetic import generate

    out = tmp_path_factory.mktemp("syn")
    generate(out, train_per_class=6, val_per_class=2, size=32,
             classes=["Bright scratch", "Punching", "Patches", "Water spot"], progress=False)
    return out


def _train(tmp_path, syn_dir, name, *extra):
    import train_clip

    out = tmp_path / name
    train_clip.main(["--data_dir", str(syn_dir), "--cache_dir", str(tmp_path / "hf"), "--output_dir", str(out),
                     "--validation_fraction", "0.25", "--per_device_train_batch_size", "6", "--max_train_steps", "2",
                     "--learning_rate", "1e-2", "--seed", "3", *extra])
    return out


@pytest.mark.slow
def test_unmerged_lora_on_a_random_base_is_usable(tmp_path, syn_dir):
    from transformers import CLIPModel

    from sdx.models.clip import BASE_SUBFOLDER, PEFT_CONFIG, load_clip

    out = _train(tmp_path, syn_dir, "lora", "--method", "lora", "--no_merge_lora", "--lora_r", "2")
    cfg = json.loads((out / PEFT_CONFIG).read_text())
    assert cfg["base_model_name_or_path"] == BASE_SUBFOLDER and (out / BASE_SUBFOLDER / "config.json").is_file()
    assert not (out / "config.json").exists()
    with pytest.raises(OSError):
        CLIPModel.from_pretrained(out)
    model, processor = load_clip(str(out))
    base, _ = load_clip(str(out / BASE_SUBFOLDER))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model.get_image_features(pixel_values=px).pooler_output,
                                  base.get_image_features(pixel_values=px).pooler_output)
    card = (out / "README.md").read_text()
    assert "How to load" in card and "library_name: peft" in card and "PeftModel.from_pretrained" in card
    assert str(tmp_path) not in card.split("How to load", 1)[1].split("\n## ", 1)[0]  # folder names, no paths
    assert json.loads((out / "sdx_run.json").read_text())["details"]["saved"] == "adapter only"


@pytest.mark.slow
def test_adapter_run_on_a_random_base_is_pushed_as_an_adapter(tmp_path, syn_dir, monkeypatch):
    import sdx.train.outputs as outputs
    from sdx.models.clip import BASE_SUBFOLDER, CLIP_ADAPTER_WEIGHTS, load_clip

    uploads = []

    class FakeApi:  # the Hub calls push_output_dir makes, recorded
        def __init__(self, token=None):
            pass

        def create_repo(self, **kw):
            return kw

        def upload_folder(self, **kw):
            uploads.append(kw)

    monkeypatch.setattr(outputs, "HfApi", FakeApi)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # the Hub reachable, as mocked here
    out = _train(tmp_path, syn_dir, "adapter", "--method", "adapter", "--push_to_hub", "--hub_model_id", "me/ad",
                 "--hub_token", "hf_test")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {CLIP_ADAPTER_WEIGHTS, "clip_adapter_config.json", "README.md", f"{BASE_SUBFOLDER}/config.json"} <= files
    assert "config.json" not in files and "model.safetensors" not in files
    assert uploads and uploads[0]["folder_path"] == str(out) and uploads[0]["repo_id"] == "me/ad"
    card = (out / "README.md").read_text()
    assert "How to load" in card and "load_clip(" in card and "library_name" not in card
    assert str(tmp_path) not in card.split("How to load", 1)[1].split("\n## ", 1)[0]  # folder names, no paths
    model, _ = load_clip(str(out))
    assert type(model).__name__ == "ClipWithAdapter"


@pytest.mark.slow
def test_adapter_on_a_stretched_base_keeps_that_base(tmp_path, syn_dir):
    """A base changed by the run (--stretch_positions) exists nowhere else: it is saved beside the adapter, and
    the folder loads with the stretched text positions."""
    from sdx.models.clip import BASE_SUBFOLDER, CLIP_ADAPTER_CONFIG, load_clip, text_positions

    texts = ["a bright scratch", "punching holes", "patches", "a water spot"]
    _tiny_base(tmp_path / "named", texts)
    out = _train(tmp_path, syn_dir, "stretched", "--method", "adapter", "--model_name_or_path",
                 str(tmp_path / "named"), "--stretch_positions", "160")
    cfg = json.loads((out / CLIP_ADAPTER_CONFIG).read_text())
    assert cfg["base_model_name_or_path"] == BASE_SUBFOLDER
    model, _ = load_clip(str(out))
    assert text_positions(model) == 160 != text_positions(load_clip(str(tmp_path / "named"))[0])
    assert f"CLIP saved once in `{BASE_SUBFOLDER}/`" in (out / "README.md").read_text()


def test_pipeline_passes_a_frozen_base_for_the_task2_adapter_rows(tmp_path, small_ds):
    from sdx import pipeline
    from sdx.models.clip import load_clip
    from sdx.train.runmeta import RunMetadata

    args = pipeline.parse_args(["--preset", "smoke", "--output_dir", str(tmp_path)])
    s = args.settings()
    base = pipeline._adapter_base(args, s, small_ds, tmp_path, "synthetic")
    assert base == str(tmp_path / "clip_base")
    model, _ = load_clip(base)
    assert model.config.vision_config.image_size == s["image_size"]
    meta = RunMetadata.read(base)
    assert (meta.origin, meta.synthetic) == ("random-init", True)
    argv = pipeline._bench_argv(args, s, "synthetic", tmp_path / "bench", tmp_path / "vit", {}, base)
    assert argv[argv.index("--adapter_base_model") + 1] == base
    assert argv[argv.index("--adapter_levels") + 1] == "t0,t1,t2,t3,t4"
    given = pipeline.parse_args(["--clip_model_name_or_path", "org/clip", "--adapter_levels", "t1"])
    assert pipeline._adapter_base(given, s, small_ds, tmp_path, "synthetic") == "org/clip"
    none = pipeline.parse_args(["--adapter_levels", "none"])
    assert pipeline._adapter_base(none, s, small_ds, tmp_path, "synthetic") is None
    assert "--adapter_base_model" not in pipeline._bench_argv(none, s, "synthetic", tmp_path, tmp_path, {}, None)
