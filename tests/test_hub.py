"""Any dataset in, Hub-ready artifacts out: --dataset_name (the project's export, a foreign parquet dataset with its
own column names), model cards checked against the Hub's metadata rules, --push_to_hub through huggingface_hub
against a fake Hub at the HTTP layer (`fake_hub`), processors on grayscale images, --report_to and the accelerate
config files. No network: a dataset "on the Hub" is read from a local folder, the offline form of the same
load_dataset call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.utils import validate_repo_id
from PIL import Image

import eval_benchmark
import train_clip
import train_vit
from sdx.data import levels as T
from sdx.data.builder import class_names, load_steeldefectx
from sdx.data.export import export_dataset
from sdx.data.naming import DatasetArguments, describe_data, is_hub_id
from sdx.data.source import load_rows, text_level_report
from sdx.models import classifiers as M
from sdx.train import outputs as O
from sdx.train.args import report_targets

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Bright scratch", "Punching", "Patches", "Water spot"]
TINY_VIT = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
SMALL = ["--per_device_train_batch_size", "6", "--per_device_eval_batch_size", "16", "--dataloader_num_workers", "0",
         "--max_train_steps", "2", "--learning_rate", "1e-3"]


# ---------------------------------------------------------------------------------------------------------------
# fixtures: a small synthetic layout, its export, a foreign parquet dataset, tiny models
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    from sdx.data.synthetic import generate

    out = tmp_path_factory.mktemp("syn") / "raw"
    generate(out, train_per_class=6, val_per_class=2, size=32, classes=CLASSES, progress=False)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hfcache"))


@pytest.fixture(scope="module")
def export(tmp_path_factory, layout, cache):
    out = tmp_path_factory.mktemp("exp") / "steeldefectx"
    export_dataset(out, layout, configs=["default", "fine"], cache_dir=cache, validation_fraction=0.25)
    return out


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Another project's image-text dataset: parquet files train / test, columns img (grayscale images), defect
    (class names as strings), description (one caption per image); no validation split, no level columns."""
    root = tmp_path_factory.mktemp("foreign") / "rolled-steel"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 3)):
        rows = {"img": [], "defect": [], "description": []}
        for cls in ("dent", "pit", "scale"):
            for i in range(n):
                rows["img"].append(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), mode="L"))
                rows["defect"].append(cls)
                rows["description"].append(f"a {cls} defect, number {i}, on rolled steel")
        features = datasets.Features({"img": datasets.Image(), "defect": datasets.Value("string"),
                                      "description": datasets.Value("string")})
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / f"{split}.parquet"))
    return root


FOREIGN_FLAGS = ["--image_column", "img", "--label_column", "defect", "--caption_column", "description",
                 "--caption_column_level", "t2"]


def _tiny_clip(path: Path, texts) -> Path:
    from sdx.models.clip import build_clip_from_scratch

    model, processor = build_clip_from_scratch("tiny", list(texts), vocab_size=400, seed=0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _tiny_vit(path: Path, names) -> Path:
    torch.manual_seed(0)
    model = M.build_image_classifier("vit", "tiny", names, image_size=32, patch_size=16, config_overrides=TINY_VIT)
    model.save_pretrained(path)
    M.load_or_build_image_processor(None, 32)[0].save_pretrained(path)
    return path


def _columns(ds, split, cols=("image_name", "label", "class_name", "caption", "t0", "t1", "t2", "t4")):
    return {c: ds[split][c] for c in cols}


# ---------------------------------------------------------------------------------------------------------------
# data in
# ---------------------------------------------------------------------------------------------------------------
def test_export_read_by_dataset_name_gives_the_builder_rows(layout, export, cache):
    for cfg in ("default", "fine"):
        ours = load_steeldefectx(layout, cfg, cache_dir=cache, validation_fraction=0.25)
        read = load_rows(None, DatasetArguments(dataset_name=str(export)), cfg, cache_dir=cache)
        assert list(read) == list(ours) == ["train", "validation", "test"]
        for split in ours:
            assert _columns(read, split) == _columns(ours, split), (cfg, split)
        assert class_names(read) == class_names(ours)
    data = describe_data(None, str(export))
    assert data == {"label": "steeldefectx", "hub_id": None, "synthetic": True, "kind": "local dataset folder"}


def test_foreign_dataset_columns_splits_and_missing_levels(foreign, cache, capsys):
    args = DatasetArguments(dataset_name=str(foreign), image_column="img", label_column="defect",
                            caption_column="description", caption_column_level="t2")
    ds = load_rows(None, args, None, cache_dir=cache, caption_level="t2")
    assert class_names(ds) == ["dent", "pit", "scale"]
    # no validation split: carved from train (one per class at 0.1 of 8), test kept; count in = count out
    assert {s: len(d) for s, d in ds.items()} == {"train": 21, "validation": 3, "test": 9}
    assert ds["test"][0]["caption"] == "a dent defect, number 0, on rolled steel"
    assert ds["test"][0]["t0"] == T.t0_prompt("dent") and ds["test"][0]["image"].mode == "L"
    report = text_level_report(ds, "t1")
    train = report["splits"]["train"]
    # levels the dataset lacks are reported, not invented: T1, T3, T4 empty; T1 captions fall back to T0
    assert train["present"] == {"t0": 21, "t1": 0, "t2": 21, "t3": 0, "t4": 0}
    assert train["caption_from"] == {"t1->t0": 21} and train["fallback_share"] == 1.0
    # a caption column of unstated level is used as is and reported as unknown
    unknown = load_rows(None, DatasetArguments(dataset_name=str(foreign), image_column="img",
                                               label_column="defect", caption_column="description"),
                        None, cache_dir=cache, caption_level="t2")
    assert unknown["train"][0]["caption"].startswith("a ") and \
        text_level_report(unknown, "t2")["source_caption_level"] == "unknown"
    with pytest.raises(ValueError, match="--label_column 'kind'"):
        load_rows(None, DatasetArguments(dataset_name=str(foreign), image_column="img", label_column="kind"), None,
                  cache_dir=cache)
    with pytest.raises(ValueError, match="--image_column 'image'"):
        load_rows(None, DatasetArguments(dataset_name=str(foreign), label_column="defect"), None, cache_dir=cache)
    with pytest.raises(SystemExit):
        train_vit.main(["--data_dir", "synthetic", "--dataset_name", str(foreign), "--output_dir", "x"])
    assert "give --data_dir (synthetic) or --dataset_name" in capsys.readouterr().err


@pytest.mark.slow
def test_clip_and_vit_train_on_a_foreign_dataset(tmp_path, foreign, cache):
    clip = _tiny_clip(tmp_path / "clip", [f"a {c} defect, number {i}, on rolled steel" for c in ("dent", "pit", "scale")
                                          for i in range(8)] + [T.t0_prompt(c) for c in ("dent", "pit", "scale")])
    out = tmp_path / "clip-run"
    res = train_clip.main(["--dataset_name", str(foreign), *FOREIGN_FLAGS, "--cache_dir", cache, "--caption_level",
                           "t2", "--model_name_or_path", str(clip), "--output_dir", str(out), *SMALL])
    assert res["splits"] == {"train": 21, "validation": 3, "test": 9} and res["test_num_samples"] == 9
    meta = json.loads((out / "sdx_run.json").read_text())
    assert meta["data"] == str(foreign) and meta["synthetic"] is False
    assert meta["text_levels"]["splits"]["train"]["caption_from"] == {"t2->t2": 21}
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "other" and "whose licence this card does not know" in (out / "LICENSE.md").read_text()
    assert card.data.datasets is None and card.data.base_model is None          # local data and local base
    assert "the local dataset folder `rolled-steel`" in card.text and "missing entirely: T1, T3, T4" in card.text
    assert "share of train captions that fell back: **0.0%**" in card.text
    check_card(out / "README.md")
    from transformers import AutoProcessor

    pixels = AutoProcessor.from_pretrained(out).image_processor(Image.new("L", (40, 40)), return_tensors="pt")
    assert pixels["pixel_values"].shape[1] == 3                  # the saved CLIP processor takes grayscale images
    vit = _tiny_vit(tmp_path / "vit", ["dent", "pit", "scale"])
    res = train_vit.main(["--dataset_name", str(foreign), "--image_column", "img", "--label_column", "defect",
                          "--cache_dir", cache, "--model_name_or_path", str(vit), "--output_dir",
                          str(tmp_path / "vit-run"), *SMALL])
    assert res["splits"] == {"train": 21, "validation": 3, "test": 9}
    check_card(tmp_path / "vit-run" / "README.md")


def test_clip_requires_captions_it_can_find(foreign, cache):
    """T2 falls back to T4 then T1; a dataset with none of them and no caption column has nothing to train on."""
    with pytest.raises(ValueError, match="split train: 21 of 21 rows have no text at level T2"):
        load_rows(None, DatasetArguments(dataset_name=str(foreign), image_column="img", label_column="defect"),
                  None, cache_dir=cache, caption_level="t2", require_captions=True)


@pytest.mark.slow
def test_export_round_trips_into_training_and_the_benchmark(tmp_path, layout, export, cache):
    clip_src = load_steeldefectx(layout, cache_dir=cache)
    texts = [t for split in clip_src.values() for lv in ("t0", "t1", "t2", "t4") for t in split[lv] if t]
    clip = _tiny_clip(tmp_path / "clip", texts)
    out = tmp_path / "clip-run"
    res = train_clip.main(["--dataset_name", str(export), "--dataset_config_name", "fine", "--caption_level", "t2",
                           "--cache_dir", cache, "--model_name_or_path", str(clip), "--output_dir", str(out), *SMALL])
    ours = load_steeldefectx(layout, "fine", cache_dir=cache, validation_fraction=0.25)
    assert res["splits"] == {s: len(d) for s, d in ours.items()}
    meta = json.loads((out / "sdx_run.json").read_text())
    assert meta["synthetic"] is True and meta["data"] == str(export)   # SYNTHETIC.md travelled with the export
    card = (out / "README.md").read_text()
    assert "**SYNTHETIC**" in card and "license: mit" not in card      # pretrained (local) base: licence other
    check_card(out / "README.md")
    bench = eval_benchmark.main(["--dataset_name", str(export), "--dataset_config_name", "fine", "--cache_dir", cache,
                                 "--model_name_or_path", f"t2={out}", "--tasks", "task2", "--no_progress",
                                 "--output_dir", str(tmp_path / "bench")])
    assert bench["meta"]["data"]["synthetic"] is True
    assert bench["meta"]["splits"]["test"]["images"] == len(ours["test"])
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "text levels in the train split" in report and "synthetic" in report.lower()


# ---------------------------------------------------------------------------------------------------------------
# model cards
# ---------------------------------------------------------------------------------------------------------------
HUB_LICENCES = {"mit", "apache-2.0", "cc-by-4.0", "other"}  # the ones these cards may carry (the Hub's list is longer)


def check_card(path: Path) -> None:
    """The Hub's metadata rules, checked with huggingface_hub's own parsers (the Hub's validate-yaml endpoint is
    not reachable here): the card parses as a ModelCard, model-index parses into EvalResults, `license` is one
    of the Hub's identifiers ("other" with a name and a link to a file in the repo), `base_model` and `datasets`
    are valid repo ids, no sample count is a metric, and no local path or token is written."""
    card = ModelCard.load(path)
    data = card.data
    assert data.license in HUB_LICENCES, data.license
    if data.license == "other":
        assert data.license_name and (path.parent / data.license_link).is_file()
    for repo in ([data.base_model] if isinstance(data.base_model, str) else data.base_model or []) + \
            list(data.datasets or []):
        validate_repo_id(repo)
    for result in data.eval_results or []:
        assert "num_samples" not in result.metric_type and result.dataset_type in (data.datasets or [])
    assert data.library_name == ("peft" if (path.parent / "adapter_config.json").is_file() else "transformers")
    outside_command = card.content.split("## Command")[0]      # the command is quoted as the user typed it
    assert "/tmp/" not in outside_command and "hf_" not in card.content


def _card(out: Path, **kw) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    args = dict(model_name=out.name, task="image-classification", base_model=None, init="random",
                metrics={"test_accuracy": 50.0, "test_num_samples": 40}, hyperparameters={"learning_rate": 0.1},
                command_line="train_vit.py --seed 1")
    return O.write_model_card(out, **{**args, **kw})


def test_model_cards_follow_the_hub_rules(tmp_path):
    synthetic = _card(tmp_path / "synthetic", dataset={**describe_data("synthetic"), "config": "default"})
    meta = ModelCard.load(synthetic).data
    assert meta.license == "mit" and meta.datasets is None and meta.eval_results is None
    assert "synthetic-data" in meta.tags and "SteelDefectX (the Hub release" not in synthetic.read_text()
    hub = _card(tmp_path / "hub", base_model="google/vit-base-patch16-224", init="pretrained",
                dataset={**describe_data("hub"), "config": "fine"})
    meta = ModelCard.load(hub).data
    assert meta.base_model == "google/vit-base-patch16-224" and meta.datasets == ["Zhaosxian/SteelDefectX"]
    assert [r.metric_type for r in meta.eval_results] == ["accuracy"] and meta.eval_results[0].dataset_split == "test"
    assert meta.license == "other" and "NEU: academic use" in (tmp_path / "hub" / "LICENSE.md").read_text()
    local_base = tmp_path / "bases" / "my-vit"
    local_base.mkdir(parents=True)
    local = _card(tmp_path / "local", base_model=str(local_base), init="pretrained",
                  dataset={**describe_data(None, "me/steeldefectx"), "config": "fine"})
    meta = ModelCard.load(local).data
    assert meta.base_model is None and "a local folder (`my-vit`, not on the Hub)" in local.read_text()
    assert meta.datasets == ["me/steeldefectx"] and str(local_base) not in local.read_text()
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    adapter = _card(tmp_path / "adapter", base_model="google/vit-base-patch16-224", init="pretrained",
                    dataset={**describe_data("hub"), "config": "default"})
    assert ModelCard.load(adapter).data.library_name == "peft"
    for path in (synthetic, hub, local, adapter):
        check_card(path)
    assert is_hub_id("me/steeldefectx") and not is_hub_id(str(local_base)) and not is_hub_id("./x")


# ---------------------------------------------------------------------------------------------------------------
# Hub push
# ---------------------------------------------------------------------------------------------------------------
def test_push_to_hub_fails_in_the_first_second_offline_or_without_token(tmp_path, monkeypatch):
    argv = ["--data_dir", "synthetic", "--output_dir", str(tmp_path / "run"), "--push_to_hub", *SMALL]
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        train_vit.main(argv)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("sdx.train.outputs.get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(PermissionError, match="write token"):
        train_clip.main(argv)
    assert time.perf_counter() - start < 2.0    # both refusals within the first second or so
    assert not (tmp_path / "run" / "checkpoints").exists()   # no step ran


@pytest.fixture
def fake_hub(monkeypatch):
    """A Hub answering at the HTTP layer (huggingface_hub's public `set_client_factory` with an httpx mock
    transport): repo creation, the card's YAML check, pre-upload and commits are recorded; nothing leaves the
    machine. Returns the list of recorded requests: ("create_repo", name, private), ("validate_yaml", content),
    ("commit", summary, {path: bytes})."""
    import base64

    import httpx2
    from huggingface_hub.utils import close_session, set_client_factory
    from huggingface_hub.utils._http import default_client_factory  # to restore the default: no public getter

    events: list[tuple] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        path, body = request.url.path, request.content
        if path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry: absent, as when unreachable
            return httpx2.Response(404, json={})
        if path == "/api/repos/create":
            data = json.loads(body)
            events.append(("create_repo", f"{data.get('organization')}/{data['name']}", bool(data.get("private"))))
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{data.get('organization')}/"
                                                     f"{data['name']}"})
        if path == "/api/validate-yaml":
            events.append(("validate_yaml", json.loads(body)["content"]))
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            summary = next(x["value"]["summary"] for x in lines if x["key"] == "header")
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            events.append(("commit", summary, files))
            repo = "/".join(path.split("/")[3:5])                       # /api/models/<ns>/<name>/commit/<rev>
            return httpx2.Response(200, json={"commitUrl": f"https://huggingface.co/{repo}/commit/" + "a" * 40,
                                              "commitOid": "a" * 40, "pullRequestUrl": None})
        events.append(("unexpected", request.method, path))
        return httpx2.Response(404, json={"error": f"not served by the fake Hub: {request.method} {path}"})

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handle)))
    yield events
    close_session()
    set_client_factory(default_client_factory)


def test_hub_strategy_checkpoint_pushes_each_save_and_the_last_checkpoint(tmp_path, fake_hub, synthetic_vit,
                                                                         monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")   # the token from the environment, as most users give it
    step_files: list[bool] = []
    from sdx.train.vit import parse_vit_args, run_vit_training

    args = parse_vit_args(["--data_dir", "synthetic", "--model_name_or_path", str(synthetic_vit), "--output_dir",
                           str(out), "--max_train_samples", "24", "--max_eval_samples", "12", "--checkpointing_steps",
                           "1", "--push_to_hub", "--hub_model_id", "me/vit", "--hub_strategy", "checkpoint",
                           "--with_tracking", "--report_to", "none", *SMALL])
    run_vit_training(args, step_callback=lambda step: step_files.append(len(fake_hub)))
    # the repo was created before the first step: one request recorded when step 1 ended
    assert fake_hub[0] == ("create_repo", "me/vit", False) and step_files[0] == 1
    commits = [e for e in fake_hub if e[0] == "commit"]
    assert [c[1] for c in commits] == ["Training in progress, step 1", "Checkpoint at step 1",
                                       "Training in progress, step 2", "Checkpoint at step 2", "End of training"]
    progress, last, end = set(commits[0][2]), set(commits[1][2]), set(commits[-1][2])
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= progress
    assert all(p.startswith("last-checkpoint/") for p in last) and "last-checkpoint/model.safetensors" in last
    assert {"README.md", "LICENSE.md", "all_results.json", "sdx_run.json"} <= end
    assert not any(p.startswith(("checkpoints/", "best/", "logs/")) for p in progress | end)
    assert not [e for e in fake_hub if e[0] == "unexpected"]
    card = next(e[1] for e in reversed(fake_hub) if e[0] == "validate_yaml")   # the YAML the Hub was asked to check
    assert "license: other" in card and "\nbase_model:" not in card
    uploaded = b"".join(b for c in commits for b in c[2].values())
    assert b"hf_secret_token" not in uploaded                       # the token reaches no uploaded file
    assert not (out / "logs").exists()                           # --report_to none: no tracker
    assert not [f for f in out.rglob("*") if f.is_file() and b"hf_secret_token" in f.read_bytes()]
    # the saved processor takes a grayscale image (the model wants RGB)
    from transformers import AutoImageProcessor

    pixels = AutoImageProcessor.from_pretrained(out)(Image.new("L", (40, 40), 128), return_tensors="pt")
    assert tuple(pixels["pixel_values"].shape) == (1, 3, 32, 32)


@pytest.fixture(scope="module")
def synthetic_vit(tmp_path_factory):
    return _tiny_vit(tmp_path_factory.mktemp("svit") / "vit", class_names(load_steeldefectx("synthetic")))


# ---------------------------------------------------------------------------------------------------------------
# grayscale processors, trackers, engines
# ---------------------------------------------------------------------------------------------------------------
def test_processors_convert_grayscale_where_the_model_wants_rgb(tmp_path):
    from transformers import AutoImageProcessor, ViTConfig, ViTImageProcessor

    gray = Image.new("L", (40, 40), 100)
    plain = ViTImageProcessor(size={"height": 32, "width": 32})   # transformers' default: no RGB conversion
    with pytest.raises(ValueError, match="mean must have 1 elements"):
        plain(gray)  # the upstream behaviour convert_to_rgb exists for; this fails when transformers changes it
    M.convert_to_rgb(plain, ViTConfig(num_channels=3))
    plain.save_pretrained(tmp_path / "p")
    assert AutoImageProcessor.from_pretrained(tmp_path / "p")(gray, return_tensors="pt")["pixel_values"].shape[1] == 3
    one = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5], image_std=[0.5])
    M.convert_to_rgb(one, ViTConfig(num_channels=1))           # a one-channel model keeps its images as they are
    assert not one.do_convert_rgb
    built, _ = M.load_or_build_image_processor(None, 32)
    built.save_pretrained(tmp_path / "b")
    assert AutoImageProcessor.from_pretrained(tmp_path / "b")(gray, return_tensors="pt")["pixel_values"].shape[1] == 3


def test_report_to_values_and_trackers():
    from types import SimpleNamespace

    from sdx.train.loop import trackers

    assert report_targets("tensorboard") == ["tensorboard"] and report_targets("all") == ["all"]
    assert report_targets("none") == ["none"] and report_targets("TensorBoard, wandb") == ["tensorboard", "wandb"]
    with pytest.raises(ValueError, match="comet"):
        report_targets("comet")
    with pytest.raises(ValueError, match="nothing"):
        report_targets(" , ")
    assert trackers(SimpleNamespace(with_tracking=True, report_to="none")) == []
    assert trackers(SimpleNamespace(with_tracking=False, report_to="tensorboard")) == []
    assert trackers(SimpleNamespace(with_tracking=True, report_to="tensorboard")) == ["tensorboard"]
    try:
        import wandb  # noqa: F401 - optional tracker
    except ImportError:
        with pytest.raises(ImportError, match="pip install wandb"):
            trackers(SimpleNamespace(with_tracking=True, report_to="wandb"))


def test_wandb_offline_run(tmp_path, monkeypatch, synthetic_vit):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    train_vit.main(["--data_dir", "synthetic", "--model_name_or_path", str(synthetic_vit), "--output_dir",
                    str(tmp_path / "run"), "--max_train_samples", "12", "--max_eval_samples", "12",
                    "--with_tracking", "--report_to", "wandb", *SMALL])
    assert list(tmp_path.rglob("*.wandb"))


def test_accelerate_config_files():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {p.stem: load_config_from_file(str(p)) for p in sorted((ROOT / "configs").glob("*.yaml"))}
    assert {k: c.distributed_type for k, c in kinds.items()} == {
        "ddp": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "fsdp": "FSDP", "multi_cpu": "MULTI_CPU"}
    assert kinds["deepspeed_zero2"].deepspeed_config["zero_stage"] == 2
    assert kinds["fsdp"].fsdp_config["fsdp_version"] == 2 and kinds["fsdp"].mixed_precision == "bf16"
    for name, cfg in kinds.items():
        assert yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["num_processes"] == cfg.num_processes


@pytest.mark.slow
def test_fsdp_is_gpu_only_in_this_accelerate():
    """accelerate turns FSDP on only for GPU-like processes (MULTI_CPU is not among them), so FSDP cannot run on
    this machine's CPUs; this fails when that changes, and a CPU FSDP test becomes possible."""
    code = ("import accelerate; a = accelerate.Accelerator(cpu=True); print(a.distributed_type)")
    env = dict(os.environ, ACCELERATE_USE_FSDP="true", ACCELERATE_USE_CPU="true", WORLD_SIZE="1", RANK="0",
               LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29591")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FSDP" not in proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_clip_every_save_pushes_snapshots_and_keeps_the_token_budget(tmp_path, fake_hub, layout, cache, monkeypatch):
    from sdx.train import clip as CT
    from sdx.train.job import run_job

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    ds = load_steeldefectx(layout, cache_dir=cache)
    clip = _tiny_clip(tmp_path / "clip", [t for split in ds.values() for lv in ("t0", "t1", "t2", "t4")
                                          for t in split[lv] if t])
    args = CT.parse_clip_args(["--data_dir", str(layout), "--cache_dir", cache, "--model_name_or_path", str(clip),
                               "--output_dir", str(tmp_path / "run"), "--max_seq_length", "12", "--checkpointing_steps",
                               "1", "--push_to_hub", "--hub_model_id", "me/clip", "--hub_strategy", "every_save",
                               *SMALL])
    job = CT.ClipJob(args)
    budgets: list[int] = []
    run_job(job, step_callback=lambda step: budgets.append(job.processor.tokenizer.model_max_length))
    assert budgets == [12, 12]                  # the snapshot saved after step 1 left the training budget alone
    commits = [e for e in fake_hub if e[0] == "commit"]
    assert [c[1] for c in commits] == ["Training in progress, step 1", "Training in progress, step 2",
                                       "End of training"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(commits[0][2])
    assert not any(p.startswith("last-checkpoint/") for c in commits for p in c[2])
