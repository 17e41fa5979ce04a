"""train_vit.py end to end with tiny models (config-built, saved to tmp, loaded via --model_name_or_path):
synthetic and real data, outputs, LoRA save/load/merge, exact kill-and-resume, bad input before any step, and a real
two-process CPU run whose evaluation counts equal the split sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train_vit  # noqa: E402
from sdx.data import synthetic  # noqa: E402
from sdx.models import classifiers as M  # noqa: E402

TINY_VIT = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
COMMON = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--learning_rate", "1e-3",
          "--dataloader_num_workers", "0"]


def _save_tiny(path: Path, names, image_size=32, seed=0):
    torch.manual_seed(seed)
    model = M.build_image_classifier("vit", "tiny", names, image_size=image_size, patch_size=16,
                                     config_overrides=TINY_VIT)
    model.save_pretrained(path)
    M.load_or_build_image_processor(None, image_size)[0].save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def synthetic_names():
    from sdx.data.builder import class_names, load_steeldefectx

    return class_names(load_steeldefectx("synthetic"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, synthetic_names):
    return _save_tiny(tmp_path_factory.mktemp("tiny") / "vit", synthetic_names)


def _argv(model, out, *extra):
    return ["--data_dir", "synthetic", "--model_name_or_path", str(model), "--output_dir", str(out), *COMMON,
            *extra]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model):
    """6 steps on 48 synthetic images, checkpoint every 2 steps, no augmentation (the resume reference)."""
    out = tmp_path_factory.mktemp("full") / "run"
    res = train_vit.main(_argv(tiny_model, out, "--max_train_samples", "48", "--max_train_steps", "6",
                               "--checkpointing_steps", "2"))
    return out, res


def _state(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _test_accuracy(model, processor, names, max_eval_samples, seed=42):
    """Acc recomputed from a saved model on the same test subset the trainer used."""
    from sdx.data.builder import load_steeldefectx
    from sdx.train.job import limit_samples
    from sdx.train.vit import ImageTransform, collate

    test = limit_samples(load_steeldefectx("synthetic")["test"], max_eval_samples, seed)
    test = test.select_columns(["image", "label"])
    batch = collate([test.with_transform(ImageTransform(processor, False))[i] for i in range(len(test))])
    model.eval()
    with torch.no_grad():
        pred = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
    return float((pred == batch["labels"]).double().mean() * 100)


def test_synthetic_run_outputs(full_run, synthetic_names):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    out, res = full_run
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "all_results.json", "README.md",
                 "per_class_test.json", "per_class_test.md", "confusion_matrix_test.png", "sdx_run.json",
                 "run_args.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["completed_steps"] == 6 and res["splits"]["train"] == 48
    # every evaluation counted each sample once
    n_test = 6 * len(synthetic.DEFAULT_CLASSES)  # the default synthetic set: 6 val images per class
    assert saved["test_num_samples"] == saved["splits"]["test"] == n_test
    assert all(h["eval_num_samples"] == saved["splits"]["validation"] for h in saved["history"])
    for k in ("test_accuracy", "test_mean_class_accuracy", "test_macro_f1", "validation_accuracy"):
        assert 0.0 <= saved[k] <= 100.0
    assert sum(r["support"] for r in saved["test_per_class"]) == n_test
    # the best epoch is the one with the highest validation accuracy
    accs = [h["eval_accuracy"] for h in saved["history"]]
    assert saved["best_epoch"] == saved["history"][int(np.argmax(accs))]["epoch"]
    # the saved model is the best one, labelled with the dataset's names, and reproduces the reported test Acc
    model = AutoModelForImageClassification.from_pretrained(out)
    assert [model.config.id2label[i] for i in range(len(synthetic_names))] == list(synthetic_names)
    acc = _test_accuracy(model, AutoImageProcessor.from_pretrained(out), synthetic_names, None)
    assert acc == pytest.approx(saved["test_accuracy"], abs=1e-6)
    card = (out / "README.md").read_text()
    assert "test_accuracy" in card and "train_vit.py --data_dir synthetic" in card and "--max_train_steps 6" in card
    assert json.loads((out / "sdx_run.json").read_text())["method"] == "full"


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path, tiny_model, full_run):
    ref_out, _ = full_run
    out = tmp_path / "run"
    argv = _argv(tiny_model, out, "--max_train_samples", "48", "--max_train_steps", "6", "--checkpointing_steps", "2")

    class Killed(RuntimeError):
        pass

    def kill(step):
        if step == 5:
            raise Killed

    from sdx.train.vit import parse_vit_args, run_vit_training

    with pytest.raises(Killed):
        run_vit_training(parse_vit_args(argv), step_callback=kill)
    # the resumed run processes the images per batch (no pixel cache): same pixel values, same weights
    res = train_vit.main(argv + ["--resume_from_checkpoint", "latest", "--pixel_cache_mb", "0"])
    assert res["resumed_from"].endswith("checkpoint_1")  # step 4
    want, got = _state(ref_out), _state(out)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert res["test_accuracy"] == json.loads((ref_out / "all_results.json").read_text())["test_accuracy"]


def test_pixel_cache_equals_per_batch_processing(tiny_model):
    from transformers import AutoImageProcessor

    from sdx.data.builder import load_steeldefectx
    from sdx.train.pixels import CachedPixels, pixel_cache
    from sdx.train.vit import ImageTransform, collate

    processor = AutoImageProcessor.from_pretrained(tiny_model)
    split = load_steeldefectx("synthetic")["validation"].select_columns(["image", "label"])
    pixels = pixel_cache(split, processor, budget_mb=64, batch_size=7)
    rows = list(range(len(split)))
    on_the_fly = collate([split.with_transform(ImageTransform(processor, False))[i] for i in rows])
    cached = collate([CachedPixels(pixels, split["label"])[i] for i in rows])
    assert torch.equal(on_the_fly["pixel_values"], cached["pixel_values"])
    assert torch.equal(on_the_fly["labels"], cached["labels"])


def test_cached_flips_equal_per_batch_flips(tiny_model):
    """--hflip / --vflip on cached pixel values: the same draws and the same pixels as flipping each image before
    the processor, so flips no longer force per-batch decoding."""
    from transformers import AutoImageProcessor

    from sdx.data.builder import load_steeldefectx
    from sdx.train.pixels import CachedPixels, pixel_cache
    from sdx.train.vit import ImageTransform, collate

    processor = AutoImageProcessor.from_pretrained(tiny_model)
    split = load_steeldefectx("synthetic")["validation"].select_columns(["image", "label"])
    pixels = pixel_cache(split, processor, budget_mb=64)
    rows = list(range(len(split)))
    torch.manual_seed(3)
    transform = ImageTransform(processor, True, hflip=True, vflip=True)
    on_the_fly = collate([split.with_transform(transform)[i] for i in rows])
    torch.manual_seed(3)
    cached = collate([CachedPixels(pixels, split["label"], hflip=True, vflip=True)[i] for i in rows])
    assert torch.equal(on_the_fly["pixel_values"], cached["pixel_values"])
    assert not torch.equal(cached["pixel_values"], pixels)  # some rows were flipped


@pytest.mark.slow
def test_real_fixture_grayscale_and_rgb(tmp_path, real_subset):
    from sdx.data.levels import CLASS_NAMES

    model = _save_tiny(tmp_path / "vit25", CLASS_NAMES)
    res = train_vit.main(["--data_dir", str(real_subset), "--model_name_or_path", str(model), "--output_dir",
                          str(tmp_path / "out"), *COMMON, "--max_train_samples", "32", "--max_eval_samples", "40",
                          "--max_train_steps", "3", "--hflip", "--random_resized_crop", "--class_balanced_sampling"])
    assert res["completed_steps"] == 3
    assert res["test_num_samples"] == 40 and res["validation_num_samples"] == 40
    assert isinstance(res["validation_num_samples"], int)  # a count, also when it comes from the epoch history
    # NEU images are 1-channel, X-SDD RGB: both went through (classes of both sources in the test subset)
    present = {r["class"] for r in res["test_per_class"] if r["support"]}
    assert present & {"Crazing", "Patches", "Inclusion"} and present & {"Red iron sheet", "Iron sheet ash",
                                                                       "Slag inclusion", "Finishing roll printing"}


@pytest.mark.slow
def test_lora_adapter_and_merged_runs_agree(tmp_path, tiny_model, synthetic_names, monkeypatch):
    from huggingface_hub import HfApi
    from peft import PeftModel
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    sent = {}  # --push_to_hub: HfApi runs up to its network calls, which are recorded instead
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: sent.setdefault("repo", (repo_id, kw)))
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, content, **kw: sent.setdefault("yaml", content))
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kw: sent.setdefault(
        "files", sorted(op.path_in_repo for op in operations)))
    monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)   # the Hub is the mocked HfApi
    monkeypatch.setenv("HF_TOKEN", "hf_test")

    base = ["--max_train_samples", "32", "--max_train_steps", "3", "--max_eval_samples", "24", "--use_lora",
            "--lora_r", "4", "--learning_rate", "1e-2", "--gradient_checkpointing"]
    adapter = train_vit.main(_argv(tiny_model, tmp_path / "adapter", *base))
    merged = train_vit.main(_argv(tiny_model, tmp_path / "merged", *base, "--merge_lora", "--push_to_hub",
                                  "--hub_model_id", "me/sdx-vit", "--hub_private"))
    assert sent["repo"][0] == "me/sdx-vit" and sent["repo"][1]["private"] is True
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "all_results.json",
            "confusion_matrix_test.png"} <= set(sent["files"])
    assert not any(f.startswith(("best/", "checkpoints/", "logs/")) for f in sent["files"])
    # synthetic data from a local "pretrained" base: licence other with LICENSE.md (the base keeps its terms), no
    # base_model (a local path), no dataset named and no model-index (the data is not on the Hub)
    assert "license: other" in sent["yaml"] and "LICENSE.md" in sent["files"] and "base_model" not in sent["yaml"]
    assert "\nmodel-index:" not in sent["yaml"] and "\ndatasets:" not in sent["yaml"]
    assert "library_name: peft" in (tmp_path / "adapter" / "README.md").read_text()
    assert adapter["saved"] == "lora-adapter" and merged["saved"] == "lora-merged"
    assert adapter["trainable_parameters"] < adapter["total_parameters"] / 2
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["k_proj", "q_proj", "v_proj"]
    assert cfg["modules_to_save"] == ["classifier"]
    processor = AutoImageProcessor.from_pretrained(tiny_model)
    loaded = PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(tiny_model),
                                       tmp_path / "adapter")
    plain = AutoModelForImageClassification.from_pretrained(tmp_path / "merged")
    # LoRA changed the weights: the merged model differs from the base
    base_sd = AutoModelForImageClassification.from_pretrained(tiny_model).state_dict()
    assert not torch.equal(base_sd["classifier.weight"], plain.state_dict()["classifier.weight"])
    x = torch.randn(3, 3, 32, 32)
    loaded.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, plain(pixel_values=x).logits, atol=1e-5,
                                   rtol=1e-4)
    # both reproduce their reported test accuracy
    assert _test_accuracy(plain, processor, synthetic_names, 24) == pytest.approx(merged["test_accuracy"])
    assert _test_accuracy(loaded, processor, synthetic_names, 24) == pytest.approx(adapter["test_accuracy"])


def test_bad_input_fails_before_any_step(tmp_path, tiny_model):
    from sdx.train.vit import parse_vit_args, run_vit_training

    steps = []

    def run(argv):
        return run_vit_training(parse_vit_args(argv), step_callback=steps.append)

    other = _save_tiny(tmp_path / "other", [f"class {i}" for i in range(5)])
    with pytest.raises(ValueError, match="labels differ.*--ignore_mismatched_sizes"):
        run(_argv(other, tmp_path / "o1", "--max_train_steps", "1"))
    with pytest.raises(ValueError, match=r"match no module.*q_proj"):
        run(_argv(tiny_model, tmp_path / "o2", "--use_lora", "--lora_target_modules", "query", "value"))
    with pytest.raises(FileNotFoundError, match="no_such_ckpt"):
        run(_argv(tiny_model, tmp_path / "o3", "--resume_from_checkpoint", str(tmp_path / "no_such_ckpt")))
    held = tmp_path / "held"
    held.mkdir()
    (held / "all_results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="held"):
        run(_argv(tiny_model, held))
    assert steps == []
    # the mismatched head re-initialised on request
    res = run(_argv(other, tmp_path / "o5", "--ignore_mismatched_sizes", "--max_train_steps", "1",
                    "--max_train_samples", "8", "--max_eval_samples", "8", "--skip_test"))
    assert res["completed_steps"] == 1 and steps == [1]


def test_recipe_paper_and_overrides():
    from sdx.train.vit import parse_vit_args

    t = parse_vit_args(["--output_dir", "x", "--recipe", "paper"]).training
    assert (t.optimizer, t.momentum, t.weight_decay, t.learning_rate, t.lr_scheduler_type, t.lr_step_epochs,
            t.lr_gamma, t.num_train_epochs) == ("sgd", 0.9, 1e-4, 0.1, "step", 30, 0.1, 100)
    t = parse_vit_args(["--output_dir", "x", "--recipe", "paper", "--num_train_epochs", "5"]).training
    assert t.num_train_epochs == 5 and t.optimizer == "sgd"
    # the trainer's own defaults, and data_dir "synthetic" by default (config None: the builder's default config)
    args = parse_vit_args(["--output_dir", "x"])
    assert (args.training.learning_rate, args.training.num_train_epochs, args.training.weight_decay,
            args.data.data_dir, args.data.dataset_config_name) == (5e-4, 10, 0.05, "synthetic", None)
    with pytest.raises(SystemExit):
        parse_vit_args(["--output_dir", "x", "--crop_scale", "0.5"])


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        train_vit.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--model_name_or_path", "--model_type", "--use_lora", "--merge_lora", "--recipe", "--config",
                 "--resume_from_checkpoint", "--mixed_precision", "--push_to_hub", "--class_balanced_sampling",
                 "--random_resized_crop", "--hflip", "--vflip", "--gradient_accumulation_steps", "--eval_strategy",
                 "--optimizer_implementation", "--pixel_cache_mb", "--dataset_config_name", "--cache_dir"):
        assert flag in text, flag
    assert "paper: optimizer=sgd" in text  # the recipes are listed with their values


@pytest.mark.slow
def test_two_process_cpu_run_counts_each_sample_once(tmp_path, tiny_model):
    """A real two-process gloo run (torchrun); odd split sizes so padding duplicates would show."""
    out = tmp_path / "ddp"
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    import socket

    with socket.socket() as sock:  # a free port, so parallel suites do not collide
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           str(ROOT / "train_vit.py"), *_argv(tiny_model, out, "--max_train_samples", "40", "--max_eval_samples",
                                              "37", "--max_train_steps", "2", "--per_device_eval_batch_size", "5")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "all_results.json").read_text())
    assert res["num_processes"] == 2
    assert res["test_num_samples"] == 37 and res["splits"]["test"] == 37
    assert all(h["eval_num_samples"] == res["splits"]["validation"] for h in res["history"])
    assert sum(r["support"] for r in res["test_per_class"]) == 37


@pytest.mark.slow
def test_cnn_from_scratch_with_lora_tracking_and_config_file(tmp_path):
    """The paper's CNN rows run through the same flags: a random ResNet preset (edited), LoRA on its convolutions,
    bf16 autocast, gradient accumulation and TensorBoard tracking, all read from a YAML --config."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("\n".join([
        "data_dir: synthetic", "model_type: resnet", "model_size: tiny", "image_size: 32",
        "config_overrides: 'embedding_size=8,hidden_sizes=[8,16],depths=[1,1]'", "max_train_steps: 2",
        "max_train_samples: 16", "max_eval_samples: 12", "per_device_train_batch_size: 4", "use_lora: true",
        "gradient_accumulation_steps: 2", "mixed_precision: bf16", "with_tracking: true", "logging_steps: 1"]))
    out = tmp_path / "out"
    res = train_vit.main(["--config", str(cfg), "--output_dir", str(out)])
    assert res["model_type"] == "resnet" and res["init"] == "random-init" and res["method"] == "lora"
    assert res["saved"] == "lora-merged"  # a random base cannot be referred to: saved merged
    assert res["completed_steps"] == 2 and res["num_train_epochs"] == 1  # 4 batches, 2 per step
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    from transformers import AutoModelForImageClassification

    assert AutoModelForImageClassification.from_pretrained(out).config.model_type == "resnet"
    assert "random initialisation" in (out / "README.md").read_text()


def test_origin_follows_the_starting_folder(tmp_path):
    """Continuing from a random-init run stays random-init (naming the folder): all_results.json, sdx_run.json and
    the card, through the same rule as train_clip.py (sdx.train.runmeta.weights_origin)."""
    common = ["--data_dir", "synthetic", *COMMON, "--max_train_samples", "16", "--max_eval_samples", "12",
              "--max_train_steps", "1", "--skip_test"]
    first = tmp_path / "first"
    train_vit.main(common + ["--output_dir", str(first), "--model_type", "resnet", "--image_size", "32",
                             "--config_overrides", "embedding_size=8,hidden_sizes=[8,16],depths=[1,1]"])
    second = tmp_path / "second"
    res = train_vit.main(common + ["--output_dir", str(second), "--model_name_or_path", str(first)])
    assert res["init"] == f"random-init (from {first})"
    assert json.loads((second / "sdx_run.json").read_text())["origin"] == res["init"]
    card = (second / "README.md").read_text()
    assert f"initial weights: random-init (from {first})" in card and "Fine-tuned from the pretrained" not in card


@pytest.mark.parametrize("model_type,overrides,targets", [
    ("vit", TINY_VIT, ["k_proj", "q_proj", "v_proj"]),
    ("resnet", "embedding_size=8,hidden_sizes=[8,16],depths=[1,1]", ["convolution"]),
    ("convnext", "hidden_sizes=[8,16],depths=[1,1]", ["pwconv1", "pwconv2"]),
])
def test_presets_forward_and_lora_targets(model_type, overrides, targets):
    model = M.build_image_classifier(model_type, "tiny", ["a", "b", "c"], image_size=32, config_overrides=overrides)
    assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 3)
    assert M.find_lora_targets(model) == targets
    peft_model = M.apply_lora(model, r=2)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert all("lora_" in n or "classifier" in n for n in trainable)
    # the full presets have the documented sizes (no weights allocated: config only)
    assert set(M.IMAGE_MODEL_PRESETS[model_type]) == {"tiny", "small", "base"}


def test_label_checks_when_loading(tmp_path):
    """Generic LABEL_i heads take the dataset's names (size must match unless re-initialised); named heads must
    match the dataset's classes in order; a backbone without a head gets a new one; a missing folder is named."""
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    cfg = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16, image_size=32,
               patch_size=16)
    ViTForImageClassification(ViTConfig(num_labels=3, **cfg)).save_pretrained(tmp_path / "generic3")
    ViTModel(ViTConfig(**cfg)).save_pretrained(tmp_path / "backbone")
    m = M.load_image_classifier(str(tmp_path / "generic3"), ["a", "b", "c"])
    assert m.config.id2label == {0: "a", 1: "b", 2: "c"}
    with pytest.raises(ValueError, match="3 outputs.*5 classes.*--ignore_mismatched_sizes"):
        M.load_image_classifier(str(tmp_path / "generic3"), list("abcde"))
    assert M.load_image_classifier(str(tmp_path / "generic3"), list("abcde"),
                                   ignore_mismatched_sizes=True).classifier.out_features == 5
    assert M.load_image_classifier(str(tmp_path / "backbone"), list("abcde")).classifier.out_features == 5
    named = tmp_path / "named"
    M.load_image_classifier(str(tmp_path / "generic3"), ["a", "b", "c"]).save_pretrained(named)
    with pytest.raises(ValueError, match="another order"):
        M.load_image_classifier(str(named), ["b", "a", "c"])
    reinit = M.load_image_classifier(str(named), ["b", "a", "c"], ignore_mismatched_sizes=True)
    assert reinit.config.id2label[0] == "b"
    kept = M.load_image_classifier(str(named), ["a", "b", "c"])
    assert not torch.equal(reinit.classifier.weight, kept.classifier.weight)  # the head was re-initialised
    assert torch.equal(reinit.vit.embeddings.patch_embeddings.projection.weight,
                       kept.vit.embeddings.patch_embeddings.projection.weight)  # the backbone was loaded
    with pytest.raises(FileNotFoundError, match="nowhere"):
        M.load_image_classifier(str(tmp_path / "nowhere"), ["a"])
