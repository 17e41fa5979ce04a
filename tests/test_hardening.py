"""The training, evaluator and report items of the hardening issue, one test (or a few) per item: secrets redacted
from every file, user folders never written, checkpoints whole or not at all, resume of the newest complete
checkpoint with its settings checked, a damaged embedding cache, bad flags before anything is written, one run per
output folder, task 1's restricted argmax reported, and `|` in table cells."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_long_captions import openai_state_dict, openai_tok_dir, tokenizer  # noqa: F401 (fixtures)
from test_training import Toy, _toy_data, _weights  # the toy model and data of the loop tests

import eval_benchmark
import train_clip
import train_vit
from sdx import redact as R
from sdx.bench.cache import ArrayStore
from sdx.report.markdown import md_cell, render_markdown
from sdx.train import checkpoints as C
from sdx.train import loop as T
from sdx.train import outputs as O
from sdx.train.args import TrainingArguments, parse_job_args

ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_Zq8XwV3nLk2PbR7tYcM4dJ9sHf6GaE1u"
TINY_VIT = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64"


def _tree(folder: Path) -> dict[str, str]:
    """{relative path: SHA-1 of the bytes} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# the toy loop (sdx.train.loop with a small model), as tests/test_training.py runs it
# ---------------------------------------------------------------------------------------------------------------
def _toy_run(out, extra=(), n=40, callback=None):
    (training,) = parse_job_args((TrainingArguments,), ["--output_dir", str(out), "--per_device_train_batch_size",
                                                        "4", "--learning_rate", "0.05", "--num_train_epochs", "2",
                                                        *extra], prog="toy.py", description="toy")
    O.check_output_dir(training)
    acc = T.make_accelerator(training, cpu=True)
    O.start_output_dir(training, acc, {"toy": True})
    model = Toy()
    loader = torch.utils.data.DataLoader(_toy_data(n), batch_size=training.per_device_train_batch_size,
                                         shuffle=True)

    def loss(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    return T.run_training(training, acc, model, T.create_optimizer(training, model), loader, loss, None,
                          step_callback=callback, data_fingerprint=f"toy-{n}")


class Killed(BaseException):
    """A kill in the middle of a save (BaseException, like KeyboardInterrupt: nothing catches it on the way)."""


# ---------------------------------------------------------------------------------------------------------------
# 1. secrets
# ---------------------------------------------------------------------------------------------------------------
def test_redaction_rules():
    argv = ["train_vit.py", "--hub_token", FAKE_TOKEN, "--api-key=abc", "--OPENAI_API_KEY", "sk-proj-12345abcdef",
            "--tokenizer_vocab_size", "300", "--max_tokens", "64", "--output_dir", "runs/hf_cache",
            "--data_dir", "https://user:p4ssw0rd@example.com/data", "--learning_rate", "-1e-3",
            "--model_name_or_path", "t3:name=ghp_abcdefghijklmnopqrstuvwx12",
            "--note", "Xk9mQ2vL7pR4tY8wZ3nB6cF1hJ5sD0gA",
            "--seed", "aB3" * 12]  # a random-looking run is redacted, a repetitive one is not
    red = R.redact_argv(argv)
    assert red == ["train_vit.py", "--hub_token", R.REDACTED, f"--api-key={R.REDACTED}", "--OPENAI_API_KEY",
                   R.REDACTED, "--tokenizer_vocab_size", "300", "--max_tokens", "64", "--output_dir", "runs/hf_cache",
                   "--data_dir", f"https://{R.REDACTED}@example.com/data", "--learning_rate", "-1e-3",
                   "--model_name_or_path", f"t3:name={R.REDACTED}", "--note", R.REDACTED, "--seed", "aB3" * 12]
    fingerprint = hashlib.sha1(b"x").hexdigest()
    hp = {"hub_token": FAKE_TOKEN, "apiKey": "x", "password": None, "seed": 3, "lr": 0.1,
          "command_line": f"train.py --hub_token {FAKE_TOKEN}", "fingerprint": fingerprint,
          "path": "/tmp/run-4f9c2e1a-7b3d-4e5f-9a8b-1c2d3e4f5a6b/x", "nested": {"auth": "Basic xyz"},
          "classes": ["Bright scratch", FAKE_TOKEN]}
    out = R.redact(hp)
    assert FAKE_TOKEN not in json.dumps(out)
    assert out["hub_token"] == out["apiKey"] == out["nested"]["auth"] == R.REDACTED and out["password"] is None
    assert (out["seed"], out["lr"], out["fingerprint"], out["path"]) == (3, 0.1, fingerprint, hp["path"])
    assert out["classes"] == ["Bright scratch", R.REDACTED]
    assert R.redact_command(f"train_vit.py --hub_token {FAKE_TOKEN} --seed 1") == \
        "train_vit.py --hub_token '<redacted>' --seed 1"


def test_hub_token_reaches_no_file(tmp_path, monkeypatch, capfd):
    """A real train_vit.py run with --hub_token, TensorBoard tracking and --push_to_hub (HfApi recorded at its
    network calls): the token is used for the upload and appears in no file of the output folder, nor on screen."""
    from huggingface_hub import HfApi

    sent = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: sent.setdefault("token", self.token))
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, content, **kw: None)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kw: sent.setdefault(
        "files", sorted(op.path_in_repo for op in operations)))
    monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # else --push_to_hub is refused at once
    out = tmp_path / "run"
    train_vit.main(["--data_dir", "synthetic", "--model_type", "vit", "--config_overrides", TINY_VIT,
                    "--image_size", "32", "--patch_size", "16", "--output_dir", str(out), "--max_train_samples", "16",
                    "--max_eval_samples", "8", "--max_train_steps", "2", "--per_device_train_batch_size", "8",
                    "--checkpointing_steps", "1", "--with_tracking", "--report_to", "tensorboard", "--logging_steps",
                    "1", "--push_to_hub", "--hub_model_id", "me/vit", "--hub_token", FAKE_TOKEN])
    assert sent["token"] == FAKE_TOKEN and "run_args.json" in sent["files"] and "README.md" in sent["files"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "hparams.yml" for p in files) and any("tfevents" in p.name for p in files)
    leaks = [str(p) for p in files if FAKE_TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert json.loads((out / "run_args.json").read_text())["hub_token"] == R.REDACTED
    assert "--hub_token '<redacted>'" in (out / "README.md").read_text()
    screen = capfd.readouterr()
    assert FAKE_TOKEN not in screen.out + screen.err


# ---------------------------------------------------------------------------------------------------------------
# 2. output folders: a user's files are never written; --overwrite_output_dir removes our stale files only
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def user_project(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "README.md").write_text("# my project\n")
    (project / "src" / "main.py").write_text("print('hi')\n")
    return project


def test_user_folder_is_refused_by_every_tool(user_project, monkeypatch):
    before = _tree(user_project)
    monkeypatch.chdir(user_project)
    for overwrite in ([], ["--overwrite_output_dir"]):
        with pytest.raises(FileExistsError, match="holds no run of these tools.*README.md"):
            train_vit.main(["--output_dir", ".", "--max_train_steps", "1", *overwrite])
        with pytest.raises(FileExistsError, match="holds no run of these tools"):
            train_clip.main(["--output_dir", ".", "--max_train_steps", "1", *overwrite])
        with pytest.raises(FileExistsError, match="holds no pipeline run"):
            from sdx import pipeline

            pipeline.main(["--output_dir", ".", "--preset", "smoke", *overwrite])
    with pytest.raises(FileExistsError, match="holds no evaluation"):
        eval_benchmark.main(["--output_dir", ".", "--tasks", "task1", "--vision_model_name_or_path", "x"])
    assert _tree(user_project) == before and sorted(p.name for p in user_project.iterdir()) == ["README.md", "src"]


def test_convert_clip_refuses_a_folder_that_is_not_empty(user_project, tmp_path, monkeypatch, openai_tok_dir):
    from transformers import AutoTokenizer

    from sdx.models import convert

    (user_project / "config.json").write_text("{}")
    before = _tree(user_project)
    src = tmp_path / "longclip.pt"
    torch.save(openai_state_dict(len(AutoTokenizer.from_pretrained(openai_tok_dir)), 77), src)
    with pytest.raises(FileExistsError, match=r"project is not empty .*README\.md, config\.json, src"):
        convert.convert_clip(src, user_project, tokenizer_dir=str(openai_tok_dir))
    monkeypatch.setattr(sys, "argv", ["convert-clip", str(src), str(user_project), "--tokenizer", str(openai_tok_dir)])
    with pytest.raises(SystemExit, match="convert-clip: error: .*project is not empty"):
        convert.main()  # the command line: the error as one line
    assert _tree(user_project) == before
    (tmp_path / "empty").mkdir()
    assert (convert.convert_clip(src, tmp_path / "empty", tokenizer_dir=str(openai_tok_dir)) / "config.json").is_file()


def test_overwrite_removes_only_what_our_runs_write(tmp_path, caplog):
    out = tmp_path / "run"
    (out / "lora").mkdir(parents=True)
    for name in ("run_args.json", "tokenizer.json", "processor_config.json", "clip_adapter.safetensors",
                 "lora/adapter_model.safetensors", "per_class_test.md"):
        (out / name).write_text("from an earlier CLIP run")
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds a run"):
        _toy_run(out)
    with caplog.at_level(logging.WARNING):
        _toy_run(out, ["--overwrite_output_dir"])
    assert sorted(p.name for p in out.iterdir()) == ["my_notes.txt", "run_args.json"]
    assert "kept my_notes.txt" in caplog.text and "tokenizer.json" in caplog.text
    assert json.loads((out / "run_args.json").read_text()) == {"toy": True}
    # a run that stopped before saving anything (run_args.json alone) is replaced without a flag
    (out / "my_notes.txt").unlink()
    _toy_run(out)


# ---------------------------------------------------------------------------------------------------------------
# 3. checkpoints whole or not at all; the limit prunes only after the new one is complete
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_during_save_with_total_limit_1_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from accelerate import Accelerator

    flags = ["--checkpointing_steps", "4", "--checkpoints_total_limit", "1"]
    want = _weights(_toy_run(tmp_path / "full", flags).model)
    assert [p.name for p in C.list_checkpoints(tmp_path / "full")] == ["checkpoint_4"]  # steps 4, 8, ..., 20

    original, calls = Accelerator.save_state, []

    def killed_on_second_save(self, output_dir=None, **kw):
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir).mkdir(parents=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise Killed
        return original(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", killed_on_second_save)
    with pytest.raises(Killed):
        _toy_run(tmp_path / "run", flags)
    monkeypatch.setattr(Accelerator, "save_state", original)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint_0"]  # complete; the half one is gone
    assert C.incomplete_reason(ckpts / "checkpoint_0") is None
    resumed = _toy_run(tmp_path / "run", flags + ["--resume_from_checkpoint", "latest"])
    assert resumed.resumed_from.endswith("checkpoint_0")
    for k, v in _weights(resumed.model).items():
        assert torch.equal(want[k], v), k
    assert [p.name for p in C.list_checkpoints(tmp_path / "run")] == ["checkpoint_4"]


# ---------------------------------------------------------------------------------------------------------------
# 4. latest = newest complete checkpoint; a full disk says so
# ---------------------------------------------------------------------------------------------------------------
def test_latest_skips_incomplete_checkpoints_and_says_which(tmp_path, caplog):
    _toy_run(tmp_path, ["--checkpointing_steps", "5"])  # steps 5, 10, 15, 20 -> checkpoint_0..3
    ckpts = tmp_path / "checkpoints"
    model = ckpts / "checkpoint_3" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])                      # truncated by a full disk
    (ckpts / "checkpoint_4").mkdir()                                  # cut short before training_state.json
    (ckpts / "checkpoint_4" / "optimizer.bin").write_bytes(b"x")
    (ckpts / ".tmp-checkpoint_5").mkdir()                             # a save in progress when killed
    with caplog.at_level(logging.WARNING):
        assert C.resolve_checkpoint("latest", tmp_path) == ckpts / "checkpoint_2"
    text = caplog.text
    assert "took checkpoint_2" in text and "checkpoint_4 (training_state.json is missing)" in text
    assert "checkpoint_3 (model.safetensors has 100 bytes" in text
    with pytest.raises(ValueError, match=r"checkpoint_3 is incomplete.*model\.safetensors has 100 bytes"):
        C.resolve_checkpoint(str(ckpts / "checkpoint_3"), tmp_path)
    res = _toy_run(tmp_path, ["--checkpointing_steps", "5", "--resume_from_checkpoint", "latest"])
    assert res.resumed_from.endswith("checkpoint_2") and res.completed_steps == 20


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4480 vs 4374"),
    OSError(errno.ENOSPC, "No space left on device")])
def test_full_disk_during_a_save_names_the_checkpoint(tmp_path, monkeypatch, failure):
    from accelerate import Accelerator

    original = Accelerator.save_state
    _toy_run(tmp_path, ["--checkpointing_steps", "5", "--max_train_steps", "5"])

    def full_disk(self, output_dir=None, **kw):
        original(self, output_dir, **kw)
        raise failure

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    with pytest.raises(OSError, match=r"disk full.*checkpoints/checkpoint_1") as err:
        _toy_run(tmp_path, ["--checkpointing_steps", "5", "--resume_from_checkpoint", "latest"])
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_0"]  # space given back


# ---------------------------------------------------------------------------------------------------------------
# 5. a resume keeps the data order, and damaged RNG states raise
# ---------------------------------------------------------------------------------------------------------------
def test_resume_refuses_changed_settings_and_bad_rng_states(tmp_path):
    _toy_run(tmp_path, ["--checkpointing_steps", "7"])
    resume = ["--checkpointing_steps", "7", "--resume_from_checkpoint", "latest"]
    steps = []
    for extra, n, changed in ((["--per_device_train_batch_size", "8"], 40, "per_device_train_batch_size 4 -> 8"),
                              (["--seed", "1"], 40, "seed 42 -> 1"),
                              (["--gradient_accumulation_steps", "2"], 40, "gradient_accumulation_steps 1 -> 2"),
                              ([], 44, "train_examples 40 -> 44; data_fingerprint 'toy-40' -> 'toy-44'")):
        with pytest.raises(ValueError, match="settings differ.*" + changed.replace("'", ".")):
            _toy_run(tmp_path, resume + extra, n=n, callback=steps.append)
    assert steps == []
    rng = tmp_path / "checkpoints" / "checkpoint_1" / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[: rng.stat().st_size // 2])
    state = json.loads((rng.parent / C.TRAINING_STATE).read_text())
    state["files"].pop(rng.name)  # the manifest would catch the truncation first: test the RNG check itself
    (rng.parent / C.TRAINING_STATE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"random_states_0\.pkl holds no usable random states"):
        _toy_run(tmp_path, resume, callback=steps.append)
    torch.save({"something": "else"}, rng)  # a foreign file
    with pytest.raises(ValueError, match=r"random_states_0\.pkl holds no usable random states.*random_state"):
        _toy_run(tmp_path, resume, callback=steps.append)
    assert steps == []


def test_trainer_refuses_a_changed_resume_before_rewriting_run_args(tmp_path):
    out = tmp_path / "run"
    base = ["--data_dir", "synthetic", "--model_type", "vit", "--config_overrides", TINY_VIT, "--image_size", "32",
            "--patch_size", "16", "--output_dir", str(out), "--max_train_samples", "16", "--max_eval_samples", "8",
            "--max_train_steps", "2", "--per_device_train_batch_size", "8", "--checkpointing_steps", "1",
            "--skip_test"]
    train_vit.main(base)
    before = _tree(out)
    with pytest.raises(ValueError, match="per_device_train_batch_size 8 -> 4"):
        train_vit.main(base + ["--per_device_train_batch_size", "4", "--resume_from_checkpoint", "latest"])
    with pytest.raises(ValueError, match="train_examples 16 -> 24; data_fingerprint"):
        train_vit.main(base + ["--max_train_samples", "24", "--resume_from_checkpoint", "latest"])
    assert _tree(out) == before


# ---------------------------------------------------------------------------------------------------------------
# 6. a damaged embedding-cache chunk is discarded, re-encoded and counted
# ---------------------------------------------------------------------------------------------------------------
def test_damaged_cache_chunks_are_discarded_and_reencoded(tmp_path, caplog):
    store = ArrayStore(tmp_path)
    for i in range(3):
        store.put([f"k{i}"], np.full((1, 2), i, np.float32))
    chunks = sorted(tmp_path.glob("chunk_*.json"))
    chunks[0].write_text(chunks[0].read_text()[:3])                           # a torn key list
    arr = chunks[1].with_suffix(".npy")
    arr.write_bytes(arr.read_bytes()[:40])                                     # a truncated array
    (tmp_path / "chunk_9_orphan.npy").write_bytes(b"written, key list not yet")  # a write in progress: left alone
    with caplog.at_level(logging.WARNING):
        store = ArrayStore(tmp_path)
    assert store.discarded == 2 and set(store.rows) == {"k2"}
    assert chunks[0].name in caplog.text and arr.name in caplog.text
    assert not chunks[0].exists() and not arr.exists() and (tmp_path / "chunk_9_orphan.npy").exists()
    got = store.get(["k0", "k1", "k2"], lambda pos: np.array([[10.0, 10.0]] * len(pos), np.float32))
    assert got[:, 0].tolist() == [10.0, 10.0, 2.0] and store.encoded == 2 and store.reused == 1
    assert sorted(ArrayStore(tmp_path).rows) == ["k0", "k1", "k2"]


# ---------------------------------------------------------------------------------------------------------------
# 7. bad flags stop the parse: nothing is written
# ---------------------------------------------------------------------------------------------------------------
BAD_FLAGS = [(["--max_train_steps", "0"], "--max_train_steps"), (["--max_train_steps", "-3"], "--max_train_steps"),
             (["--num_train_epochs", "0"], "--num_train_epochs"), (["--num_train_epochs", "-1"], "--num_train_epochs"),
             (["--shots", "0"], "--shots"), (["--warmup_steps", "-5"], "--warmup_steps"),
             (["--learning_rate", "nan"], "--learning_rate"), (["--learning_rate", "-0.001"], "--learning_rate"),
             (["--learning_rate", "inf"], "--learning_rate"), (["--per_device_train_batch_size", "0"],
                                                               "--per_device_train_batch_size"),
             (["--image_size", "0"], "--image_size"), (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit"),
             (["--validation_fraction", "1.5"], "--validation_fraction"), (["--adam_beta2", "1"], "--adam_beta2")]


@pytest.mark.parametrize("flags,name", BAD_FLAGS)
@pytest.mark.parametrize("trainer", [train_vit, train_clip], ids=["vit", "clip"])
def test_bad_flags_fail_before_anything_is_written(tmp_path, capsys, trainer, flags, name):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        trainer.main(["--output_dir", str(out), *flags])
    assert exc.value.code == 2 and name in capsys.readouterr().err
    assert not out.exists()


def test_bad_crop_scale_and_pipeline_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_vit.main(["--output_dir", str(tmp_path / "v"), "--crop_scale", "0.9", "0.1"])
    assert "--crop_scale" in capsys.readouterr().err
    from sdx import pipeline

    for flags, name in ((["--vit_epochs", "0"], "--vit_epochs"), (["--shots", "0"], "--shots"),
                        (["--batch_size", "-1"], "--batch_size")):
        with pytest.raises(ValueError, match=name):
            pipeline.main(["--output_dir", str(tmp_path / "p"), *flags])
    assert not (tmp_path / "v").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("flags,name", [(["--batch_size", "0"], "--batch_size"),
                                        (["--max_eval_samples", "0"], "--max_eval_samples"),
                                        (["--validation_fraction", "1.5"], "--validation_fraction"),
                                        (["--validation_fraction", "nan"], "--validation_fraction"),
                                        (["--shots", "0"], "--shots")])
def test_bad_evaluator_flags_fail_before_anything_is_written(tmp_path, flags, name):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=f"eval_benchmark.py: error: {name}"):
        eval_benchmark.main(["--output_dir", str(out), "--tasks", "task1", "--vision_model_name_or_path", "x", *flags])
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# 8. one run per output folder
# ---------------------------------------------------------------------------------------------------------------
HOLD = ("import sys, time\nfrom sdx.train.outputs import output_lock\nwith output_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n")


def test_second_run_into_a_locked_folder_is_refused_and_a_crashed_holder_frees_it(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        pid = str(holder.pid)
        with pytest.raises(RuntimeError, match=f"in use by another run.*{pid}"):
            train_vit.main(["--output_dir", str(out), "--max_train_steps", "1"])
        with pytest.raises(RuntimeError, match="in use by another run"):
            eval_benchmark.main(["--output_dir", str(out), "--tasks", "task1", "--vision_model_name_or_path", "x"])
    finally:
        holder.kill()  # a crash: SIGKILL, no clean-up; the lock file stays behind
        holder.wait()
    assert (out / O.LOCK_FILE).is_file()
    with O.output_lock(out):  # the kernel released the dead process's lock: taken at once
        assert json.loads((out / O.LOCK_FILE).read_text())["pid"] != int(pid)
    assert list(out.iterdir()) == []  # released: the lock file is removed


@pytest.mark.slow
def test_two_trainings_started_together_one_is_refused(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "train_vit.py"), "--data_dir", "synthetic", "--model_type", "vit",
            "--config_overrides", TINY_VIT, "--image_size", "32", "--patch_size", "16", "--output_dir", str(out),
            "--max_train_samples", "16", "--max_eval_samples", "8", "--max_train_steps", "4",
            "--per_device_train_batch_size", "4", "--skip_test"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    refused = next(err for code, err in results if code != 0)
    assert "in use by another run" in refused or "already holds a run" in refused
    assert json.loads((out / "all_results.json").read_text())["completed_steps"] == 4


# ---------------------------------------------------------------------------------------------------------------
# 9. task 1: the model's own argmax, and the restricted one beside it
# ---------------------------------------------------------------------------------------------------------------
def _vit(folder: Path, labels: list[str], weights: dict | None = None) -> dict:
    """Save a tiny ViT over `labels` (with `weights` when given) to `folder`; returns its state dict."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                    patch_size=8, num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={c: i for i, c in enumerate(labels)})
    model = ViTForImageClassification(cfg)
    if weights is not None:
        model.load_state_dict(weights)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model.state_dict()


def _vit_pair(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    """A ViT over the data's classes, and the same ViT with one more label that wins every image."""
    weights = _vit(tmp_path / "plain", names)
    weights["classifier.weight"] = torch.cat([weights["classifier.weight"], torch.zeros(1, 32)])
    weights["classifier.bias"] = torch.cat([weights["classifier.bias"], torch.tensor([100.0])])
    _vit(tmp_path / "extra", [*names, "Extra defect"], weights)
    return tmp_path / "plain", tmp_path / "extra"


def test_task1_reports_the_models_own_argmax_and_the_restricted_one(tmp_path):
    from sdx.data.builder import class_names, load_steeldefectx

    plain, extra = _vit_pair(tmp_path, class_names(load_steeldefectx("synthetic")))
    run = ["--data_dir", "synthetic", "--tasks", "task1", "--max_eval_samples", "24", "--no_progress"]
    ref = eval_benchmark.main(run + ["--vision_model_name_or_path", str(plain), "--output_dir", str(tmp_path / "a")])
    res = eval_benchmark.main(run + ["--vision_model_name_or_path", str(extra), "--output_dir", str(tmp_path / "b")])
    t1, r1 = res["task1"], ref["task1"]
    assert t1["acc"] == 0.0 and t1["predicted_not_present"] == t1["n"] == 24  # every answer is the extra label
    assert t1["labels_not_present"] == ["Extra defect"] and t1["model_labels"] == r1["model_labels"] + 1
    assert t1["restricted"]["acc"] == r1["acc"] == r1["restricted"]["acc"] and t1["restricted"]["n"] == 24
    assert r1["labels_not_present"] == [] and r1["predicted_not_present"] == 0
    assert "Extra defect (model label, not a data class)" in t1["confusion"]["labels"]
    report = (tmp_path / "b" / "report.md").read_text()
    assert "argmax restricted to the" in report and "24 of 24 test images got a label that is not a class" in report
    assert "argmax restricted" not in (tmp_path / "a" / "report.md").read_text()


def test_evaluator_cache_chunk_truncated_between_runs(tmp_path, caplog):
    """The second evaluation in a folder reuses the cache; a torn chunk is discarded, re-encoded and counted."""
    from sdx.data.builder import class_names, load_steeldefectx

    vit = tmp_path / "vit"
    _vit(vit, class_names(load_steeldefectx("synthetic")))
    argv = ["--data_dir", "synthetic", "--tasks", "task1", "--max_eval_samples", "16", "--no_progress",
            "--vision_model_name_or_path", str(vit), "--output_dir", str(tmp_path / "out")]
    first = eval_benchmark.main(argv)
    assert first["cache"]["logits"] == {"encoded": 16, "reused": 0, "discarded": 0}
    (chunk,) = (tmp_path / "out" / "cache" / "logits").rglob("chunk_*.json")
    chunk.write_text(chunk.read_text()[:10])
    with caplog.at_level(logging.WARNING):
        again = eval_benchmark.main(argv)
    assert chunk.name in caplog.text
    assert again["cache"]["logits"] == {"encoded": 16, "reused": 0, "discarded": 1}
    assert again["task1"]["acc"] == first["task1"]["acc"]
    assert "1 damaged cache chunk(s) discarded" in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["cache"]["logits"]["discarded"] == 1


# ---------------------------------------------------------------------------------------------------------------
# 10. `|` in a class name does not split a table row
# ---------------------------------------------------------------------------------------------------------------
def _cells(row: str) -> int:
    """The number of cells of a Markdown table row (GFM: a backslash escapes the next character)."""
    count, i = 0, 0
    while i < len(row):
        if row[i] == "\\":
            i += 2
            continue
        count += row[i] == "|"
        i += 1
    return count - 1


def _tables_are_rectangular(markdown: str) -> None:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert rows
    widths = {}
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            widths.setdefault("table", _cells(line))
            assert _cells(line) == widths["table"], line
        else:
            widths.clear()


def test_pipes_in_names_are_escaped_in_every_table(tmp_path):
    from sdx.train.vit import per_class_markdown

    weird = "Scratch | bright\\"
    row = {"class": weird, "support": 3, "correct": 1, "predicted": 2, "recall": 33.3, "precision": 50.0, "f1": 40.0}
    results = {"meta": {"tasks": ["task1"], "data": {}},
               "task1": {"acc": 50.0, "macc": 40.0, "macro_f1": 30.0, "n": 3, "per_class": [row],
                         "model": {"name": "vit|a", "kind": "image-classifier", "origin": "random-init"},
                         "restricted": {"acc": 60.0, "macc": 50.0, "macro_f1": 40.0, "n": 3, "classes": 1},
                         "model_labels": 2, "labels_not_present": ["x|y"], "predicted_not_present": 1},
               "hyperparameters": [{"model": "m|1", "method": "tip", "k": 1, "seed": 1, "name": "alpha|beta",
                                    "value": "1|2", "score": 5.0, "selected_on": "validation"}]}
    _tables_are_rectangular(render_markdown(results))
    _tables_are_rectangular(per_class_markdown([row]))
    card = O.write_model_card(tmp_path, model_name="m", task="image-classification", base_model=None,
                              init="random", dataset={"name": "SteelDefectX"}, metrics={"test_accuracy": 1.0},
                              hyperparameters={"classes": ["a|b", "c"], "recipe": "x|y"}, command_line="t.py")
    _tables_are_rectangular(card.read_text().split("---", 2)[2])
    assert md_cell("a|b\nc") == "a\\|b c"


def test_pipes_in_names_are_escaped_in_every_report_section():
    """Every section of report.md, with `|` in model, class and set names (shapes as in tests/test_report.py)."""
    from test_report import CHANCE, TRAINED, _cross, _target, _zero_shot

    name = "clip|t1"
    model = dict(TRAINED, name=name, metadata=dict(TRAINED["metadata"], exclude_classes=["B|b"]))
    target = _target("Steel|X", False, 33)
    target["models"] = {name: target["models"]["clip_t1"], "clip|x": target["models"]["clip_x"]}
    cross = dict(_cross(True), unseen_classes=["B|b", "D"])
    ext = {"classes": ["Blow|hole", "Crack"], "n_images": 6, "fingerprint": "x", "chance": dict(CHANCE, classes=2),
           "t0": {"acc": 50.0, "macc": 50.0}, "t1": {"acc": 60.0, "macc": 55.0}}
    long_clip = {"lineage": {"family": "Long-CLIP"}, "architecture": "ViT|B", "train_method": "lo|ra"}
    budget = {"max_length": 77, "text_positions": 77, "warning_share": 0.2,
              "levels": {"t3": {"texts": 5, "truncated": 1, "truncated_share": 0.2, "warning": False,
                                "tokens_lost_mean": 1.0, "tokens_lost_max": 3, "longest": 80}}}
    results = {
        "meta": {"data": {"data_dir": "real", "synthetic": False}, "tasks": ["task2", "task3", "task4"]},
        "models": [model], "chance": {"test": CHANCE}, "text_budget": {name: budget},
        "task2": {"test_levels": ["t0", "t1"], "candidates": ["A", "B|b"], "chance": CHANCE, "n_test": 10,
                  "rows": [{"model": name, "train_level": "t3", "results": _zero_shot(30.0), "setting": long_clip}]},
        "task3": {name: {"zero_shot": _zero_shot(30.0)}},
        "task4": {name: {"cross_class": cross, "external": {"mag|tile": ext}}},
        "retrieval": {name: {"t1": {"available": True, "images": 4, "texts": 4, "chance": None,
                                    **{d: {"R@1": 1.0, "R@5": 2.0, "R@10": 3.0} for d in ("i2t", "t2i")}},
                             "t3": {"available": False, "reason": "no t3|captions"}}},
        "localization": {"threshold": {"rule": "F1-max on validation", "validation_images": 5},
                         "normal_prompt": "flawless", "targets_without_masks": [], "targets": [target]},
    }
    md = render_markdown(results)
    for title in ("## Models", "## Text length", "## Task 2", "### Long-CLIP rows", "## Task 3", "## Task 4",
                  "## Retrieval", "## Text-guided localization"):
        assert title in md, title
    _tables_are_rectangular(md)
