"""Tests of train_clip.py and the CLIP section of sdx.models: a tiny CLIP + local tokenizer saved to a temp dir
and loaded back via --model_name_or_path; every caption level and method for a few steps; kill-and-resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_clip
from sdx.data import levels as T
from sdx.train import clip as CT

CLASSES = ["Bright scratch", "Punching", "Patches", "Water spot"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from sdx.data.synthetic import generate

    out = tmp_path_factory.mktemp("syn")
    generate(out, train_per_class=6, val_per_class=2, size=32, classes=CLASSES, progress=False)
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hfcache")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, data_dir):
    """A tiny CLIP (hidden 32, 2 layers, image 32, patch 16) with a tokenizer trained on the dataset's texts,
    saved with its processor: the real loading path of --model_name_or_path."""
    from sdx.models.clip import build_clip_from_scratch

    texts = []
    for split in ("train", "val"):
        for rec in json.loads((data_dir / f"{split}-text.json").read_text()):
            texts += [T.t0_prompt(rec["class_name"]), rec["natural_language_description"],
                      rec["template_sentence"], T.render_t3(rec["structured_attributes"])]
    texts += list(json.loads((data_dir / "class_descriptions.json").read_text()).values())
    model, processor = build_clip_from_scratch("tiny", texts, vocab_size=600, seed=0)
    cfg = model.config
    assert (cfg.vision_config.hidden_size, cfg.vision_config.num_hidden_layers, cfg.vision_config.image_size,
            cfg.vision_config.patch_size, cfg.text_config.hidden_size) == (32, 2, 32, 16, 32)
    out = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _run(tmp_path, name, data_dir, cache_dir, model_dir, *extra, steps=2):
    out = tmp_path / name
    argv = ["--data_dir", str(data_dir), "--cache_dir", str(cache_dir), "--output_dir", str(out),
            "--model_name_or_path", str(model_dir), "--validation_fraction", "0.25",
            "--per_device_train_batch_size", "6", "--per_device_eval_batch_size", "16", "--seed", "3"]
    if steps is not None:
        argv += ["--max_train_steps", str(steps)]
    return train_clip.main(argv + list(extra)), out


def _weights(path):
    return load_file(str(path / "model.safetensors"))


# -------------------------------------------------------------------------------------------------------------
# models
# -------------------------------------------------------------------------------------------------------------
def test_tiny_clip_round_trip_and_encoders(tiny_clip):
    from PIL import Image
    from transformers import AutoProcessor, CLIPProcessor

    from sdx.models.clip import encode_images, encode_texts, load_clip

    model, processor = load_clip(str(tiny_clip))
    assert isinstance(AutoProcessor.from_pretrained(str(tiny_clip)), CLIPProcessor)
    tok = processor.tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, model.config.text_config.eos_token_id) == (0, 1, 1)
    # every byte is in the vocabulary: unseen characters never become the unknown (= end-of-text) token
    ids = tok("Zebra ünïcode ~ 42")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 1 and 1 not in ids[1:-1]
    # truncation at the model's text length
    long = tok(["word " * 500], truncation=True)["input_ids"][0]
    assert len(long) == model.config.text_config.max_position_embeddings
    img = Image.new("L", (64, 48), 120).convert("RGB")
    enc = processor(images=[img, img], text=["a dark spot", "a bright scratch"], return_tensors="pt",
                    padding=True)
    assert enc["pixel_values"].shape == (2, 3, 32, 32)
    ei = encode_images(model, enc["pixel_values"])
    et = encode_texts(model, enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(ei.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(et.norm(dim=-1), torch.ones(2), atol=1e-5)
    # padding does not change a text's embedding (pooled at the first end-of-text token)
    single = tok(["a dark spot"], return_tensors="pt")
    assert torch.allclose(encode_texts(model, single["input_ids"], single["attention_mask"])[0], et[0], atol=1e-5)


def test_encoders_accept_tensor_returning_models():
    from sdx.models.clip import encode_images, encode_texts

    class Dual(torch.nn.Module):
        def get_image_features(self, pixel_values):
            return pixel_values.flatten(1)[:, :4] * 3

        def get_text_features(self, input_ids, attention_mask=None):
            return input_ids.float()

    e = encode_images(Dual(), torch.ones(2, 1, 2, 2))
    assert torch.allclose(e, torch.full((2, 4), 0.5))
    assert torch.allclose(encode_texts(Dual(), torch.tensor([[3, 4]])), torch.tensor([[0.6, 0.8]]))


def test_lora_targets_and_adapter_math(tiny_clip):
    from sdx.models.clip import ClipAdapter, apply_clip_lora, load_clip, lora_target_regex

    model, _ = load_clip(str(tiny_clip))
    peft_model = apply_clip_lora(model, "text", r=2, alpha=4)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("text_model" in n and "lora_" in n for n in trainable)
    assert {n.split(".self_attn.")[1].split(".")[0] for n in trainable} == {"q_proj", "k_proj", "v_proj",
                                                                           "out_proj"}
    with pytest.raises(ValueError, match="lora_towers"):
        lora_target_regex("audio")
    ad = ClipAdapter(8, reduction=4, alpha=0.2)
    with torch.no_grad():
        ad.fc[0].weight.zero_()
    x = torch.randn(3, 8)
    assert torch.allclose(ad(x), 0.8 * x)        # MLP output 0 -> (1 - alpha) * x


def test_load_clip_bad_paths(tmp_path):
    from sdx.models.clip import load_clip

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_clip(str(empty))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="file.txt"):
        load_clip(str(f))


# -------------------------------------------------------------------------------------------------------------
# texts and sampling
# -------------------------------------------------------------------------------------------------------------
def _row(**kw):
    base = {"class_name": "Patches", "t0": T.t0_prompt("Patches"), "t1": "A photo of patches.", "t2": "",
            "t3": None, "t4": ""}
    base.update(kw)
    return base


def test_level_texts_follow_the_dataset_fallback():
    t3 = {"Defect type": "Patches", "Shape": "patch-like", "Direction": "none", "Spatial Distribution": "isolated",
          "Number of Defects": "one", "Position": [{"cell": "center", "share": 1.0}], "Scale": "large",
          "Polarity": "dark", "Saliency": "high"}
    bare = CT.level_texts(_row())
    assert bare["t2"] == bare["t3"] == bare["t4"] == "A photo of patches."          # -> T1
    with_t3 = CT.level_texts(_row(t3=t3))
    release_t3 = dict(t3, Position=[["center", 1.0]])
    assert with_t3["t4"] == T.render_t4(release_t3)                                 # T4 rendered from T3
    assert with_t3["t2"] == with_t3["t4"]                                             # T2 -> T4
    assert with_t3["t3"] == T.render_t3(release_t3)
    full = CT.level_texts(_row(t3=t3, t2="A big dark patch.", t4="given t4"))
    assert (full["t2"], full["t4"]) == ("A big dark patch.", "given t4")


def test_mixed_levels_are_seeded_per_example_per_epoch(data_dir, cache_dir):
    from sdx.data.builder import load_steeldefectx

    ds = load_steeldefectx(str(data_dir), caption_level="t2", validation_fraction=0.25, cache_dir=str(cache_dir))
    a = CT.CaptionDataset(ds["train"], "mixed", seed=5)
    b = CT.CaptionDataset(ds["train"], "mixed", seed=5)
    caps0 = [a.caption(i) for i in range(len(a))]
    assert caps0 == [b.caption(i) for i in range(len(b))]
    a.set_epoch(1)
    caps1 = [a.caption(i) for i in range(len(a))]
    assert caps0 != caps1
    levels = set()
    for epoch in range(4):
        a.set_epoch(epoch)
        levels |= {int(x) for x in a._levels}
        for i in range(len(a)):
            assert a.caption(i) in a.texts[i]
    assert levels == set(range(5))
    # the sampler re-shuffles per epoch and tells the dataset the epoch
    s = CT.EpochShuffleSampler(a, seed=5)
    s.set_epoch(2)
    assert a.epoch == 2 and sorted(s) == list(range(len(a)))


def test_pixel_cache_equals_per_batch_processing(data_dir, cache_dir, tiny_clip):
    from sdx.data.builder import load_steeldefectx
    from sdx.models.clip import load_clip
    from sdx.train.pixels import pixel_cache

    _, processor = load_clip(str(tiny_clip))
    split = load_steeldefectx(str(data_dir), caption_level="t1", validation_fraction=0.25,
                              cache_dir=str(cache_dir))["train"]
    pixels = pixel_cache(split, processor.image_processor, budget_mb=64, batch_size=5)
    assert pixels is not None and pixels.shape == (len(split), 3, 32, 32)
    assert pixel_cache(split, processor.image_processor, budget_mb=0.001) is None     # over budget
    collate = CT.ClipCollator(processor)
    rows = list(range(len(split)))
    on_the_fly = collate([CT.CaptionDataset(split, "t1", 0)[i] for i in rows])
    from_cache = collate([CT.CaptionDataset(split, "t1", 0, pixels)[i] for i in rows])
    assert torch.equal(on_the_fly["pixel_values"], from_cache["pixel_values"])
    assert torch.equal(on_the_fly["input_ids"], from_cache["input_ids"])


# -------------------------------------------------------------------------------------------------------------
# training runs
# -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["t0", "t3", *(pytest.param(lv, marks=pytest.mark.slow)
                                                  for lv in ("t1", "t2", "t4", "mixed"))])
def test_every_caption_level_trains(tmp_path, data_dir, cache_dir, tiny_clip, level):
    res, out = _run(tmp_path, level, data_dir, cache_dir, tiny_clip, "--caption_level", level, steps=1)
    assert res["caption_level"] == level and res["train_completed_steps"] == 1
    for split in ("validation", "test"):
        for m in ("t0_accuracy", "t1_accuracy", "t0_macc", "t1_macc"):
            assert 0.0 <= res[f"{split}_{m}"] <= 100.0
    assert res["candidate_classes"] == sorted(CLASSES)
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["caption_level"] == level and saved["method"] == "full"
    meta = json.loads((out / "sdx_run.json").read_text())
    assert meta["caption_level"] == level and meta["origin"] == f"pretrained:{tiny_clip}"
    card = (out / "README.md").read_text()
    assert f"caption level used for training: **{level.upper()}**" in card and "SYNTHETIC" in card
    assert str(tiny_clip) in card
    # training changed the weights and the output loads back as a CLIP model
    before, after = _weights(tiny_clip), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_from_scratch_runs_are_reproducible(tmp_path, data_dir, cache_dir):
    """No --model_name_or_path: a random tiny preset with a tokenizer trained on the captions; the same seed
    gives the same tokenizer and the same weights."""
    from transformers import AutoProcessor, CLIPProcessor

    outs = []
    for name in ("scratch-a", "scratch-b"):
        out = tmp_path / name
        res = train_clip.main(["--data_dir", str(data_dir), "--cache_dir", str(cache_dir), "--output_dir",
                               str(out), "--model_size", "tiny", "--tokenizer_vocab_size", "700",
                               "--validation_fraction", "0.25", "--per_device_train_batch_size", "6",
                               "--max_train_steps", "2", "--caption_level", "t3"])
        assert res["init"] == "random-init"
        outs.append(out)
    a, b = outs
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    proc = AutoProcessor.from_pretrained(str(a))
    assert isinstance(proc, CLIPProcessor) and len(proc.tokenizer) <= 700
    assert "random initialisation" in (a / "README.md").read_text()
    assert json.loads((a / "sdx_run.json").read_text())["origin"] == "random-init"


@pytest.mark.slow
def test_best_epoch_is_chosen_on_the_training_levels_own_prompts(tmp_path, data_dir, cache_dir, tiny_clip):
    """A T4 run selects on T4 class embeddings (each class's mean of its training T4 captions), says so in
    sdx_run.json, all_results.json and the card; an explicit metric and mixed (mean over T0-T4) are stated too."""
    res, out = _run(tmp_path, "t4", data_dir, cache_dir, tiny_clip, "--caption_level", "t4",
                    "--num_train_epochs", "2", steps=None)
    assert res["select_metric"] == "t4_accuracy"
    assert all("eval_t4_accuracy" in h for h in res["history"])
    assert res["validation_t4_accuracy"] == max(h["eval_t4_accuracy"] for h in res["history"])
    meta = json.loads((out / "sdx_run.json").read_text())
    assert meta["select_metric"] == "t4_accuracy" and meta["caption_levels_used"] == {"t4": 1.0}
    assert "T4 class embeddings (the training level's own prompts)" in meta["select_rule"]
    assert "mean of its training T4 captions" in meta["select_rule"]
    assert meta["select_rule"] in (out / "README.md").read_text()
    res, out = _run(tmp_path, "t4-by-t0", data_dir, cache_dir, tiny_clip, "--caption_level", "t4",
                    "--metric_for_best_model", "t0_macc", steps=1)
    assert res["select_metric"] == "t0_macc" and "own prompts" not in res["select_rule"]
    res, out = _run(tmp_path, "mixed", data_dir, cache_dir, tiny_clip, "--caption_level", "mixed", steps=1)
    levels = [f"validation_{lv}_accuracy" for lv in T.LEVELS]
    assert res["select_metric"] == "mixed_accuracy" and "mean over the levels T0, T1, T2, T3, T4" in res["select_rule"]
    assert res["validation_mixed_accuracy"] == pytest.approx(sum(res[k] for k in levels) / 5)


def test_validation_class_embeddings_are_the_benchmarks(data_dir, cache_dir, tiny_clip):
    """One rule (sdx.models.prompts): training-time T2-T4 class embeddings equal the benchmark's for one model."""
    from sdx.bench.embeddings import EmbeddingCache
    from sdx.bench.models import BenchClip
    from sdx.bench.zeroshot import ZeroShot
    from sdx.data.builder import caption_texts, candidate_classes, load_steeldefectx
    from sdx.models.clip import encode_text_list, load_clip

    ds = load_steeldefectx(str(data_dir), caption_level="t4", validation_fraction=0.25, cache_dir=str(cache_dir))
    ids = candidate_classes(ds)
    model, processor = load_clip(str(tiny_clip))
    _, _, t1 = CT.class_prompts(ds)
    t1_emb = encode_text_list(model, processor.tokenizer, t1)
    zs = ZeroShot(ds, EmbeddingCache(None, progress=False))
    enc = BenchClip(str(tiny_clip), device="cpu")
    for level in ("t2", "t3", "t4"):
        means = CT.CaptionMeans(caption_texts(ds["train"], level), [int(x) for x in ds["train"]["label"]])
        ours = means.embed(encode_text_list(model, processor.tokenizer, means.distinct()), ids, t1_emb).numpy()
        bench, _ = zs.class_embeddings(enc, level, ids)
        assert ours.shape == bench.shape and abs(ours - bench).max() < 1e-5, level


@pytest.mark.slow
def test_absent_caption_level_is_refused_or_recorded_on_the_real_fixture(tmp_path, real_subset, caplog):
    """The real fixture has no T2: --caption_level t2 stops with the counts unless --allow_caption_fallback, and a
    run with it warns and records the levels used (metadata, results, card)."""
    argv = ["--data_dir", str(real_subset), "--model_size", "tiny", "--image_size", "32",
            "--per_device_train_batch_size", "8", "--caption_level", "t2"]
    with pytest.raises(ValueError, match=r"none of the 1992 training records has a T2 text.*T4 1134 \(56.9 %\), "
                                         r"T1 858 \(43.1 %\).*--allow_caption_fallback"):
        train_clip.main(argv + ["--output_dir", str(tmp_path / "refused")])
    out = tmp_path / "fallback"
    with caplog.at_level("WARNING", logger="sdx.train.clip"):
        res = train_clip.main(argv + ["--output_dir", str(out), "--allow_caption_fallback", "--max_train_steps", "1",
                                      "--max_eval_samples", "24"])
    assert "CAPTION FALLBACK" in caplog.text and "T4 1134 (56.9 %), T1 858 (43.1 %)" in caplog.text
    assert res["caption_levels_used"] == {"t4": 0.5693, "t1": 0.4307}
    assert res["caption_level_counts"] == {"t2->t1": 858, "t2->t4": 1134}
    meta = json.loads((out / "sdx_run.json").read_text())
    assert meta["caption_levels_used"] == {"t4": 0.5693, "t1": 0.4307}
    assert "the captions it was trained on (no training record has T2" in meta["select_rule"]
    card = (out / "README.md").read_text()
    assert "caption level requested: **T2**" in card and "captions actually used: T4 56.9 %, T1 43.1 %" in card
    assert "caption level used for training" not in card


@pytest.mark.slow
def test_origin_follows_the_starting_folder(tmp_path, data_dir, cache_dir):
    """A run continued from a random-init folder stays random-init (naming the folder), in all_results.json, the
    metadata, the card and the benchmark's model table; a folder without our metadata or a Hub id is pretrained."""
    from sdx.bench.models import BenchClip
    from sdx.train.runmeta import weights_origin

    common = ["--data_dir", str(data_dir), "--cache_dir", str(cache_dir), "--validation_fraction", "0.25",
              "--per_device_train_batch_size", "6", "--max_train_steps", "1", "--caption_level", "t1"]
    first = tmp_path / "first"
    assert train_clip.main(common + ["--output_dir", str(first), "--model_size", "tiny"])["init"] == "random-init"
    second = tmp_path / "second"
    res = train_clip.main(common + ["--output_dir", str(second), "--model_name_or_path", str(first)])
    assert res["init"] == f"random-init (from {first})"
    assert json.loads((second / "sdx_run.json").read_text())["origin"] == res["init"]
    card = (second / "README.md").read_text()
    assert f"random initialisation** (no pretrained weights), continued from `{first.name}`" in card  # folder name only
    assert "Fine-tuned from the pretrained" not in card and "base_model" not in card
    assert BenchClip(str(second), device="cpu").describe()["origin"] == res["init"]
    assert weights_origin("openai/clip-vit-base-patch16") == "pretrained:openai/clip-vit-base-patch16"
    assert weights_origin(None) == "random-init"


def test_tokenizer_training_is_deterministic_and_learns_words():
    from sdx.models.tokenizer import build_clip_tokenizer

    texts = ["A photo of steel surface defect: Water spot.", "Water spots are round stains."] * 3
    t1, t2 = build_clip_tokenizer(texts, 600), build_clip_tokenizer(list(reversed(texts)), 600)
    assert t1.get_vocab() == t2.get_vocab()
    assert t1.convert_ids_to_tokens(t1("water spot")["input_ids"]) == [
        "<|startoftext|>", "water</w>", "spot</w>", "<|endoftext|>"]
    small = build_clip_tokenizer(texts, 2 + 512 + 3)                    # room for 3 merges only
    assert len(small) == 2 + 512 + 3


def test_full_with_frozen_text_tower_tracking_and_push(tmp_path, data_dir, cache_dir, tiny_clip, monkeypatch):
    import sdx.train.outputs

    pushed = {}

    class FakeApi:  # the huggingface_hub boundary
        def __init__(self, token=None):
            pushed["token"] = token

        def create_repo(self, repo_id, **kw):
            pushed["repo"] = repo_id
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, **kw):
            pushed.update(dir=folder_path, files=sorted(p.name for p in Path(folder_path).iterdir()))

    monkeypatch.setattr(sdx.train.outputs, "HfApi", FakeApi)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    res, out = _run(tmp_path, "frozen", data_dir, cache_dir, tiny_clip, "--freeze_text_model", "--loss", "infonce",
                    "--with_tracking", "--logging_steps", "1", "--push_to_hub", "--hub_model_id", "me/clip-test",
                    "--hub_token", "hf_test")
    assert pushed["dir"] == str(out) and pushed["repo"] == "me/clip-test" and pushed["token"] == "hf_test"
    assert {"README.md", "all_results.json", "model.safetensors", "sdx_run.json"} <= set(pushed["files"])
    assert any((out / "logs").rglob("events.out.tfevents.*"))          # tensorboard tracking
    before, after = _weights(tiny_clip), _weights(out)
    text_keys = [k for k in before if k.startswith(("text_model.", "text_projection"))]
    vision_keys = [k for k in before if k.startswith(("vision_model.", "visual_projection"))]
    assert all(torch.equal(before[k], after[k]) for k in text_keys)
    assert any(not torch.equal(before[k], after[k]) for k in vision_keys)
    assert res["trainable_parameters"] < res["total_parameters"]


def test_lora_vision_only_changes_vision_attention(tmp_path, data_dir, cache_dir, tiny_clip):
    from sdx.models.clip import load_clip

    res, out = _run(tmp_path, "lora", data_dir, cache_dir, tiny_clip, "--method", "lora", "--lora_towers",
                    "vision", "--lora_r", "2", "--learning_rate", "1e-2")
    assert (out / "lora" / "adapter_config.json").is_file()
    before, after = _weights(tiny_clip), _weights(out)
    assert set(before) == set(after)                       # merged: a plain CLIPModel
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision_model.") and ".self_attn." in k for k in changed)
    model, _ = load_clip(str(out))
    assert type(model).__name__ == "CLIPModel"


@pytest.mark.parametrize("level", ["t1", pytest.param("t4", marks=pytest.mark.slow)])
def test_adapter_trains_only_the_adapter_and_reloads(tmp_path, data_dir, cache_dir, tiny_clip, level):
    from sdx.models.clip import CLIP_ADAPTER_CONFIG, ClipWithAdapter, encode_images, load_clip

    res, out = _run(tmp_path, f"adapter-{level}", data_dir, cache_dir, tiny_clip, "--recipe", "paper",
                    "--caption_level", level, "--learning_rate", "1e-2")
    run_args = json.loads((out / "run_args.json").read_text())
    assert (run_args["method"], run_args["optimizer"], run_args["num_train_epochs"]) == ("adapter", "adam", 20)
    assert run_args["learning_rate"] == 1e-2 and run_args["recipe"] == "paper"        # explicit flag wins
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()  # the adapter only
    cfg = json.loads((out / CLIP_ADAPTER_CONFIG).read_text())
    assert (cfg["alpha"], cfg["reduction"], cfg["embed_dim"]) == (0.2, 4, 32)
    assert cfg["base_model_name_or_path"] == str(tiny_clip.resolve())
    model, processor = load_clip(str(out))
    assert isinstance(model, ClipWithAdapter)
    base, _ = load_clip(str(tiny_clip))
    px = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(encode_images(model, px), encode_images(base, px))
    assert res["trainable_parameters"] == 2 * 32 * 8


def test_adapter_recipe_defaults_and_bad_flags(tmp_path):
    # --method adapter alone changes no other flag; --recipe paper is the paper's adapter recipe
    args = CT.parse_clip_args(["--output_dir", str(tmp_path / "o"), "--method", "adapter"])
    t = args.training
    assert (args.model.method, t.optimizer, t.learning_rate, t.num_train_epochs, t.lr_scheduler_type) == (
        "adapter", "adamw", 1e-4, 3, "linear")
    t = CT.parse_clip_args(["--output_dir", str(tmp_path / "o"), "--recipe", "paper"]).training
    assert (t.optimizer, t.learning_rate, t.num_train_epochs, t.lr_scheduler_type) == ("adam", 1e-4, 20, "constant")
    args = CT.parse_clip_args(["--output_dir", str(tmp_path / "o"), "--recipe", "paper", "--method", "lora"])
    assert args.model.method == "lora" and args.training.optimizer == "adam"
    args = CT.parse_clip_args(["--output_dir", str(tmp_path / "o"), "--caption_level", "fine"])
    assert args.data.caption_level == "t2" and args.model.method == "full" and args.training.optimizer == "adamw"
    assert args.data.data_dir == "synthetic"
    with pytest.raises(SystemExit):
        CT.parse_clip_args(["--output_dir", str(tmp_path / "o"), "--caption_level", "t9"])
    with pytest.raises(SystemExit):
        CT.parse_clip_args(["--output_dir", str(tmp_path / "o"), "--method", "lora", "--freeze_text_model"])
    with pytest.raises(SystemExit):
        CT.parse_clip_args(["--output_dir", str(tmp_path / "o"), "--adapter_alpha", "1.5"])


def test_bad_inputs_name_the_problem(tmp_path, data_dir, cache_dir, tiny_clip):
    with pytest.raises(FileNotFoundError, match="config.json"):
        _run(tmp_path, "nomodel", data_dir, cache_dir, tmp_path)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "run_args.json").write_text("{}")
    (occupied / "all_results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a run"):
        _run(tmp_path, "occupied", data_dir, cache_dir, tiny_clip)
    with pytest.raises(ValueError, match="unknown class name.*Unknown defect"):
        _run(tmp_path, "badclass", data_dir, cache_dir, tiny_clip, "--classes", "Unknown defect")
    with pytest.raises(ValueError, match="validation split is empty"):
        _run(tmp_path, "noval", data_dir, cache_dir, tiny_clip, "--validation_fraction", "0")


@pytest.mark.slow
def test_kill_and_resume_gives_identical_weights(tmp_path, data_dir, cache_dir, tiny_clip):
    common = ["--caption_level", "mixed", "--checkpointing_steps", "2", "--learning_rate", "1e-3"]
    _, ref = _run(tmp_path, "uninterrupted", data_dir, cache_dir, tiny_clip, *common, steps=5)

    class Crash(RuntimeError):
        pass

    def crash_at_3(step):
        if step == 3:
            raise Crash

    args = CT.parse_clip_args(
        ["--data_dir", str(data_dir), "--cache_dir", str(cache_dir), "--output_dir",
         str(tmp_path / "crashed"), "--model_name_or_path", str(tiny_clip), "--validation_fraction", "0.25",
         "--per_device_train_batch_size", "6", "--per_device_eval_batch_size", "16", "--seed", "3",
         "--max_train_steps", "5", *common])
    with pytest.raises(Crash):
        CT.run_clip_training(args, step_callback=crash_at_3)
    # the resumed run also processes images per batch (no pixel cache): same pixel values, same weights
    res, out = _run(tmp_path, "crashed", data_dir, cache_dir, tiny_clip, *common, "--resume_from_checkpoint",
                    "latest", "--pixel_cache_mb", "0", steps=5)
    assert res["train_resumed_from"] and res["train_completed_steps"] == 5
    a, b = _weights(ref), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((ref / "all_results.json").read_text())
    assert ra["validation_t0_accuracy"] == res["validation_t0_accuracy"]


@pytest.mark.slow
def test_two_process_cpu_run_counts_each_sample_once(tmp_path, data_dir, cache_dir, tiny_clip):
    """A real two-process gloo run (torchrun): the loss gathers across ranks, the evaluation counts each image
    once although the split sizes do not divide by the number of processes."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(root / "train_clip.py"), "--data_dir", str(data_dir), "--cache_dir", str(cache_dir),
           "--output_dir", str(out), "--model_name_or_path", str(tiny_clip), "--validation_fraction", "0.25",
           "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "3", "--max_train_steps", "2",
           "--caption_level", "mixed"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "all_results.json").read_text())
    assert res["num_processes"] == 2 and res["train_completed_steps"] == 2
    assert res["validation_num_samples"] == res["splits"]["validation"]
    assert res["test_num_samples"] == res["splits"]["test"] == 2 * len(CLASSES)
    assert all(h["eval_num_samples"] == res["splits"]["validation"] for h in res["history"])


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        train_clip.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--caption_level", "--method", "--freeze_vision_model", "--freeze_text_model", "--lora_towers",
                 "--adapter_alpha", "--loss", "--model_name_or_path", "--model_size", "--metric_for_best_model",
                 "--recipe", "--config", "--resume_from_checkpoint", "--mixed_precision", "--push_to_hub",
                 "--gradient_accumulation_steps", "--with_tracking", "--data_dir", "--pixel_cache_mb", "--cache_dir",
                 "--eval_strategy"):
        assert flag in text, flag
    assert "--dataset_cache_dir" not in text
    assert "paper: method=adapter, optimizer=adam, learning_rate=0.0001, num_train_epochs=20" in text


def test_vision_config_overrides_replace_the_presets_vision_tower():
    """--vision_config_overrides (the demo's patch 8) reaches the vision tower and its processor; a patch that
    does not divide the image is refused by name."""
    from sdx.models.clip import build_clip_from_scratch

    model, processor = build_clip_from_scratch("tiny", ["a crack", "a scratch"], vocab_size=300, image_size=64,
                                               vision_overrides="patch_size=8,hidden_size=48", seed=0)
    v = model.config.vision_config
    assert (v.patch_size, v.hidden_size, v.image_size, v.num_hidden_layers) == (8, 48, 64, 2)
    assert model.config.text_config.hidden_size == 32
    assert processor.image_processor.crop_size == {"height": 64, "width": 64}
    with pytest.raises(ValueError, match="patch size 12"):
        build_clip_from_scratch("tiny", ["a crack"], vocab_size=300, image_size=64, vision_overrides="patch_size=12")
