"""Tests of the shared training code: typed arguments and their layering (sdx.train.args), output-dir rules,
the loop (accumulation, checkpoints, exact resume, best-by-validation, no evaluation), the accelerate workaround,
model card and the Hub upload (HfApi mocked at the network call)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from sdx.train import checkpoints as C
from sdx.train import loop as T
from sdx.train import outputs as O
from sdx.train.args import TrainingArguments, parse_job_args

RECIPES = {"paper": {"optimizer": "sgd", "learning_rate": 0.1, "lr_scheduler_type": "step", "num_train_epochs": 100}}


@dataclass
class OwnArguments:
    own_flag: int = field(default=3, metadata={"help": "a trainer's own flag"})


def _parse(argv):
    own, training = parse_job_args((OwnArguments, TrainingArguments), argv, prog="toy.py", description="toy",
                                   recipes=RECIPES)
    return own, training


# ---------------------------------------------------------------- flags


def test_recipe_then_config_then_command_line(tmp_path):
    _, args = _parse(["--output_dir", str(tmp_path), "--recipe", "paper"])
    assert (args.optimizer, args.learning_rate, args.num_train_epochs, args.recipe) == ("sgd", 0.1, 100, "paper")
    # an explicit flag equal to the parser default still overrides the recipe
    _, args = _parse(["--output_dir", str(tmp_path), "--recipe", "paper", "--learning_rate", "5e-05"])
    assert args.learning_rate == 5e-05 and args.optimizer == "sgd"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: paper\nnum-train-epochs: 7\nown_flag: '9'\nwith_tracking: true\noutput_dir: "
                   + str(tmp_path / "o") + "\n")
    own, args = _parse(["--config", str(cfg), "--num_train_epochs", "2"])
    assert args.num_train_epochs == 2 and own.own_flag == 9 and args.optimizer == "sgd" and args.with_tracking
    assert args.output_dir == str(tmp_path / "o") and args.recipe == "paper"
    assert args.command_line == f"toy.py --config {cfg} --num_train_epochs 2"
    # the command line's recipe replaces the file's; the file still overrides the recipe
    _, args = _parse(["--config", str(cfg), "--recipe", "paper"])
    assert args.num_train_epochs == 7


def test_config_errors_name_file_and_key(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"output_dir": "x", "learnin_rate": 1}))
    with pytest.raises(ValueError, match=r"c\.json.*learnin_rate"):
        _parse(["--config", str(cfg)])
    cfg.write_text(json.dumps({"output_dir": "x", "optimizer": "lion"}))
    with pytest.raises(ValueError, match=r"c\.json.*optimizer.*lion"):
        _parse(["--config", str(cfg)])
    cfg.write_text(json.dumps({"output_dir": "x", "seed": None}))
    with pytest.raises(ValueError, match=r"c\.json.*seed"):
        _parse(["--config", str(cfg)])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        _parse(["--config", str(tmp_path / "nope.json")])


def test_bad_flags_exit_with_a_usage_error(tmp_path, capsys):
    for argv in (["--recipe", "fast"], ["--checkpointing_steps", "0"], ["--gradient_accumulation_steps", "0"],
                 ["--max_train_samples", "0"], []):
        out = [] if not argv else ["--output_dir", str(tmp_path)]
        with pytest.raises(SystemExit):
            _parse(out + argv)
    assert "--output_dir is required" in capsys.readouterr().err


def test_output_dir_holding_a_run_is_refused(tmp_path):
    _, args = _parse(["--output_dir", str(tmp_path)])
    assert O.check_output_dir(args) == tmp_path  # empty folder: fine
    (tmp_path / "run_args.json").write_text("{}")
    (tmp_path / "all_results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a run.*all_results.json"):
        O.check_output_dir(args)
    args.overwrite_output_dir = True
    O.check_output_dir(args)


def test_accelerate_still_needs_the_settings_reset():
    """accelerate refuses a second Accelerator with another precision in one process (hence
    loop.forget_accelerator_settings, which calls its private reset). When this test fails, accelerate changed:
    drop the workaround if it no longer refuses, or update it if the method moved."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    T.forget_accelerator_settings()
    Accelerator(cpu=True, mixed_precision="no")
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(cpu=True, mixed_precision="bf16")
    assert callable(AcceleratorState._reset_state)
    T.forget_accelerator_settings()
    assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
    T.forget_accelerator_settings()


def test_both_trainers_run_one_skeleton():
    """One skeleton, one loop, one run-metadata record and one parameter count for both trainers (identity)."""
    from sdx.models import classifiers
    from sdx.train import clip, job, runmeta, vit

    assert issubclass(vit.VitJob, job.Job) and issubclass(clip.ClipJob, job.Job)
    assert vit.run_job is clip.run_job is job.run_job
    assert job.RunMetadata is runmeta.RunMetadata and job.count_parameters is classifiers.count_parameters
    assert job.run_training is T.run_training
    assert vit.PixelBudget is clip.PixelBudget


def test_optimizer_implementation_and_no_decay_groups(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model[1].weight.requires_grad_(False)
    for impl, want in (("auto", {"fused": True}), ("foreach", {"foreach": True}), ("for_loop", {"foreach": False})):
        for name in ("adamw", "adam", "sgd"):
            _, args = _parse(["--output_dir", str(tmp_path), "--optimizer", name, "--optimizer_implementation", impl,
                              "--weight_decay", "0.1"])
            opt = T.create_optimizer(args, model)
            assert all(g[k] == v for g in opt.param_groups for k, v in want.items()), (impl, name)
            decay, no_decay = opt.param_groups
            assert [p.shape for p in decay["params"]] == [(3, 4)] and decay["weight_decay"] == 0.1
            assert len(no_decay["params"]) == 2 and no_decay["weight_decay"] == 0.0  # biases; frozen weight left out
            model(torch.randn(2, 4)).sum().backward()
            opt.step()  # the chosen kernel runs on CPU parameters


# ---------------------------------------------------------------- the loop


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


def _toy_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return torch.utils.data.TensorDataset(x, y)


def _run(out, extra=(), callback=None, evaluate=True):
    _, args = _parse(["--output_dir", str(out), "--per_device_train_batch_size", "4", "--learning_rate", "0.05",
                      "--num_train_epochs", "3", *extra])
    O.check_output_dir(args)
    acc = T.make_accelerator(args, cpu=True)
    O.start_output_dir(args, acc, {"toy": True})
    model = Toy()
    opt = T.create_optimizer(args, model)
    data = _toy_data()
    loader = torch.utils.data.DataLoader(data, batch_size=args.per_device_train_batch_size, shuffle=True)
    eval_loader = acc.prepare(torch.utils.data.DataLoader(data, batch_size=16))

    def compute_loss(m, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(m(x), y)

    def evaluate_fn(m):
        m.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in eval_loader:
                p, yy = acc.gather_for_metrics((m(x).argmax(-1), y))
                correct += int((p == yy).sum())
                total += len(yy)
        return {"accuracy": correct / total, "n": total}

    res = T.run_training(args, acc, model, opt, loader, compute_loss, evaluate_fn if evaluate else None,
                         step_callback=callback)
    return args, acc, res


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loop_trains_checkpoints_and_keeps_best(tmp_path):
    args, acc, res = _run(tmp_path / "a", ["--checkpointing_steps", "4", "--gradient_accumulation_steps", "2"])
    # 40 samples / batch 4 = 10 batches, 2 per step -> 5 steps per epoch, 3 epochs
    assert res.steps_per_epoch == 5 and res.completed_steps == 15 and len(res.history) == 3
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    assert all(h["eval_n"] == 40 for h in res.history)
    names = [p.name for p in C.list_checkpoints(tmp_path / "a")]
    assert names == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]  # steps 4, 8, 12
    steps = [json.loads((tmp_path / "a" / "checkpoints" / n / C.TRAINING_STATE).read_text())["completed_steps"]
             for n in names]
    assert steps == [4, 8, 12]
    best_acc = max(h["eval_accuracy"] for h in res.history)
    assert res.best_metric == best_acc
    assert res.history[res.best_epoch]["eval_accuracy"] == best_acc
    # best/ is an accelerate state beside the numbered checkpoints (their numbering untouched above); load_best
    # restores exactly what was saved for the best epoch into the prepared model, through Accelerator.load_state
    from safetensors.torch import load_file

    assert json.loads((res.best_dir / C.BEST_RECORD).read_text())["epoch"] == res.best_epoch
    saved = load_file(str(res.best_dir / "model.safetensors"))
    with torch.no_grad():
        for p in res.model.parameters():
            p.add_(1.0)
    C.load_best(acc, res.best_dir)
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, saved[k])
    with pytest.raises(FileNotFoundError, match="best_record"):
        C.load_best(acc, tmp_path / "a" / "checkpoints" / "checkpoint_0")


@pytest.mark.slow
def test_kill_and_resume_reproduces_uninterrupted_weights(tmp_path):
    # uninterrupted: 3 epochs of 10 steps, checkpoint every 7 steps (mid-epoch) -> checkpoints at 7, 14, 21, 28
    _, _, full = _run(tmp_path / "full", ["--checkpointing_steps", "7"])
    want = _weights(full.model)

    # killed after step 16 (an exception in the middle of epoch 1)
    class Killed(RuntimeError):
        pass

    def kill(step):
        if step == 16:
            raise Killed

    with pytest.raises(Killed):
        _run(tmp_path / "run", ["--checkpointing_steps", "7"], callback=kill)
    assert [p.name for p in C.list_checkpoints(tmp_path / "run")] == ["checkpoint_0", "checkpoint_1"]
    _, _, resumed = _run(tmp_path / "run", ["--checkpointing_steps", "7", "--resume_from_checkpoint", "latest"])
    assert resumed.resumed_from.endswith("checkpoint_1") and resumed.completed_steps == 30
    got = _weights(resumed.model)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    # the counter moved past the old checkpoints: steps 21 and 28 were saved as checkpoint_2, checkpoint_3
    assert [p.name for p in C.list_checkpoints(tmp_path / "run")][-2:] == ["checkpoint_2", "checkpoint_3"]
    # the history spans all epochs exactly once and matches the uninterrupted run
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert [h["eval_accuracy"] for h in resumed.history] == [h["eval_accuracy"] for h in full.history]

    # resuming from a middle checkpoint of another folder also gives the same weights
    _, _, again = _run(tmp_path / "other",
                       ["--resume_from_checkpoint", str(tmp_path / "full" / "checkpoints" / "checkpoint_0")])
    for k, v in _weights(again.model).items():
        assert torch.equal(want[k], v), k

    # epoch-boundary checkpoints: resuming at the start of epoch 1 reproduces the same weights too
    _, _, ep = _run(tmp_path / "ep", ["--checkpointing_steps", "epoch"])
    for k, v in _weights(ep.model).items():
        assert torch.equal(want[k], v), k
    _, _, again = _run(tmp_path / "other2",
                       ["--resume_from_checkpoint", str(tmp_path / "ep" / "checkpoints" / "checkpoint_0")])
    for k, v in _weights(again.model).items():
        assert torch.equal(want[k], v), k
    # best/ of the source folder is not here: best selection restarted and saved a best of the resumed epochs
    assert again.best_epoch in (1, 2) and (tmp_path / "other2" / "best" / "best_record.json").is_file()


def test_bad_checkpoints_fail_before_any_step(tmp_path):
    steps = []
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _run(tmp_path / "a", ["--resume_from_checkpoint", str(tmp_path / "nowhere")], callback=steps.append)
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        _run(tmp_path / "b", ["--resume_from_checkpoint", "latest"], callback=steps.append)
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    with pytest.raises(FileNotFoundError, match=r"bogus.*training_state\.json"):
        _run(tmp_path / "c", ["--resume_from_checkpoint", str(bogus)], callback=steps.append)
    (bogus / C.TRAINING_STATE).write_text(json.dumps({"completed_steps": 3, "epoch": 0, "batches_done_in_epoch": 3}))
    with pytest.raises(ValueError, match=r"bogus.*random_states_0\.pkl is missing"):
        _run(tmp_path / "d", ["--resume_from_checkpoint", str(bogus)], callback=steps.append)
    assert steps == []


def test_step_schedule_and_max_train_steps(tmp_path):
    args, acc, res = _run(tmp_path / "s", ["--lr_scheduler_type", "step", "--lr_step_epochs", "1", "--lr_gamma",
                                           "0.5", "--max_train_steps", "25"], evaluate=False)
    assert res.completed_steps == 25 and res.num_train_epochs == 3
    lrs = [h["learning_rate"] for h in res.history]
    assert lrs == pytest.approx([0.05 * 0.5, 0.05 * 0.25, 0.05 * 0.25])  # decays after 10 and 20 steps
    assert res.best_epoch == 2 and res.best_dir is None  # no evaluate: the last weights, nothing kept in best/
    assert not (tmp_path / "s" / "best").exists()


# ---------------------------------------------------------------- outputs


def test_model_card_and_push_are_built_offline(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"x")
    (out / "checkpoints" / "checkpoint_0").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint_0" / "optimizer.bin").write_bytes(b"x")
    O.write_all_results(out, {"test_accuracy": 0.5})
    card = O.write_model_card(out, model_name="vit-sdx", task="image-classification", base_model=None,
                              init="random", dataset={"label": "Zhaosxian/SteelDefectX", "hub_id":
                                                      "Zhaosxian/SteelDefectX", "synthetic": False,
                                                      "kind": "hub release", "config": "default"},
                              metrics={"test_accuracy": 0.5, "test_mean_class_accuracy": 0.25},
                              hyperparameters={"learning_rate": 0.1}, command_line="train_vit.py --x 1")
    text = card.read_text()
    assert "random initialisation" in text and "train_vit.py --x 1" in text and "0.2500" in text
    from huggingface_hub import ModelCard

    loaded = ModelCard.load(card)
    assert loaded.data.eval_results[0].metric_value == 0.5

    from huggingface_hub import HfApi

    sent = {}

    def fake_create_repo(self, repo_id, **kw):
        sent["repo"] = (repo_id, kw.get("private"), kw.get("exist_ok"))
        return f"https://huggingface.co/{repo_id}"

    def fake_create_commit(self, repo_id, operations, **kw):
        sent["commit"] = (repo_id, sorted(op.path_in_repo for op in operations), kw.get("commit_message"))
        return "commit-info"

    def fake_validate_yaml(self, content, **kw):  # POST /api/validate-yaml: record what would be validated
        sent["yaml"] = content

    monkeypatch.setattr(HfApi, "_validate_yaml", fake_validate_yaml)
    # the classic path (one create_commit) instead of the streamed xet pipeline, so create_commit is the boundary
    monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)
    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    args = SimpleNamespace(hub_strategy="end", hub_private=True, hub_model_id="me/vit-sdx", hub_token="hf_x")
    push = O.HubPush(args, out)
    push.create_repo()
    push.at_end()
    assert sent["repo"] == ("me/vit-sdx", True, True)
    assert sent["commit"][0] == "me/vit-sdx"
    assert sent["commit"][1] == ["LICENSE.md", "README.md", "all_results.json", "config.json", "model.safetensors"]
    assert "model-index" in sent["yaml"] and "test_accuracy" in sent["yaml"]
