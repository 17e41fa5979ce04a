"""The one `accelerate` training loop both trainers run, with its accelerator, optimizer and schedule.

How the loop counts steps, schedules, checkpoints, resumes and keeps the best epoch: docs/training.md ("The
shared loop").
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DataLoaderConfiguration,
    ProjectConfiguration,
    is_tensorboard_available,
    is_wandb_available,
    set_seed,
)
from tqdm.auto import tqdm

from sdx.redact import redact
from sdx.train import checkpoints as C
from sdx.train.args import report_targets, tracker_config, training_hparams
from sdx.train.outputs import json_default, scalars

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Accelerator, optimizer, scheduler
# ----------------------------------------------------------------------------------------------------------------


def forget_accelerator_settings() -> None:
    """Let the next `Accelerator` of this process take another mixed precision (tests, notebooks, the pipeline).

    accelerate keeps its settings in a process-wide singleton and refuses a changed precision; it has no public
    reset, so this calls `AcceleratorState._reset_state` as transformers' Trainer does (the process group,
    `PartialState`, is kept). tests/test_training.py fails when accelerate stops refusing, or drops the method.
    """
    AcceleratorState._reset_state(reset_partial_state=False)


def make_accelerator(training, **kwargs: Any):
    """An `Accelerator` for the training arguments: grad accumulation, precision, trackers (logs under
    ``output_dir/logs``), seedable samplers; seeds every RNG with ``--seed``. Checkpoints are named and pruned by
    sdx.train.checkpoints (accelerate's automatic naming deletes the oldest before the new one is written)."""
    out = Path(training.output_dir)
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs"))
    acc_kwargs: dict[str, Any] = dict(gradient_accumulation_steps=training.gradient_accumulation_steps,
                                      project_config=project,
                                      dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    if training.mixed_precision:
        acc_kwargs["mixed_precision"] = training.mixed_precision
    log_with = trackers(training)
    if log_with:
        acc_kwargs["log_with"] = log_with
    acc_kwargs.update(kwargs)
    forget_accelerator_settings()
    accelerator = Accelerator(**acc_kwargs)
    set_seed(training.seed)
    return accelerator


def trackers(training) -> list[str]:
    """accelerate's ``log_with`` for --with_tracking / --report_to: [] without tracking or with "none". A tracker
    asked for by name must be installed (accelerate would skip it in silence)."""
    names = report_targets(training.report_to) if training.with_tracking else []
    if names == ["none"]:
        return []
    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    missing = [n for n in names if n in available and not available[n]()]
    if missing:
        raise ImportError(f"--report_to {training.report_to}: {', '.join(missing)} is not installed "
                          f"(pip install {' '.join(missing)}), or choose another tracker")
    return names


def optimizer_kernel(implementation: str) -> dict[str, bool]:
    """torch's ``fused`` / ``foreach`` switches for ``--optimizer_implementation``.

    "auto" asks for the fused kernel (one kernel per parameter instead of about ten small ops): measured fastest on
    this CPU, e.g. AdamW on a 0.57 M-parameter ViT 1.1 vs 16 (foreach) vs 39 ms (for-loop, torch's CPU default)
    per step (bench/bench_trainers.py optimizers); torch has fused Adam, AdamW and SGD for CPU and GPU parameters.
    """
    return {"auto": {"fused": True}, "fused": {"fused": True}, "foreach": {"foreach": True},
            "for_loop": {"foreach": False}}[implementation]


def create_optimizer(training, params: Iterable | torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay), Adam or AdamW from the flags. Biases and norm weights get no weight decay when
    `params` is a model (a `torch.nn.Module`); frozen parameters are left out."""
    if isinstance(params, torch.nn.Module):
        decay, no_decay = [], []
        for name, p in params.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        params = [{"params": decay, "weight_decay": training.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
    kernel = optimizer_kernel(training.optimizer_implementation)
    if training.optimizer == "sgd":
        return torch.optim.SGD(params, lr=training.learning_rate, momentum=training.momentum,
                               weight_decay=training.weight_decay, **kernel)
    cls = torch.optim.AdamW if training.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=training.learning_rate, betas=(training.adam_beta1, training.adam_beta2),
               weight_decay=training.weight_decay, **kernel)


def create_scheduler(training, optimizer: torch.optim.Optimizer, num_training_steps: int,
                     num_update_steps_per_epoch: int, num_processes: int = 1):
    """The learning-rate schedule of ``--lr_scheduler_type`` over `num_training_steps` optimizer steps.

    Step counts are multiplied by `num_processes` because accelerate steps a prepared scheduler once per process.
    """
    warmup = training.warmup_steps * num_processes
    if training.lr_scheduler_type == "step":
        period = max(1, training.lr_step_epochs * num_update_steps_per_epoch * num_processes)
        gamma = training.lr_gamma

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            return gamma ** (step // period)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    from transformers import get_scheduler  # heavy (~5 s, transformers' optimization module): a run only

    return get_scheduler(training.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=warmup,
                         num_training_steps=num_training_steps * num_processes)


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    """What `run_training` returns. `model`/`optimizer`/`train_dataloader` are the prepared objects."""

    history: list[dict[str, Any]]
    completed_steps: int
    max_train_steps: int
    num_train_epochs: int
    steps_per_epoch: int
    best_metric: float | None
    best_epoch: int | None
    best_step: int | None
    best_dir: Path | None
    select_metric: str | None
    resumed_from: str | None
    train_runtime: float
    train_samples_seen: int
    last_eval: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    train_dataloader: Any = None

    def summary(self) -> dict[str, Any]:
        """The JSON-able part (no model objects)."""
        d = {k: v for k, v in asdict(self).items()
             if k not in ("model", "optimizer", "scheduler", "train_dataloader", "last_eval")}
        d["best_dir"] = str(self.best_dir) if self.best_dir else None
        d["train_samples_per_second"] = (self.train_samples_seen / self.train_runtime) if self.train_runtime else None
        return d


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Mapping):
        batch = [v for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim > 0]
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    return 0


def order_settings(training, num_processes: int, train_dataloader, data_fingerprint: str | None) -> dict[str, Any]:
    """What fixes the examples of each step (a checkpoint records it; a resume must not change it): batch size,
    processes, accumulation, seed, the training examples (count and fingerprint) and the sampler's kind."""
    dataset = getattr(train_dataloader, "dataset", None)
    return {"per_device_train_batch_size": training.per_device_train_batch_size, "num_processes": num_processes,
            "gradient_accumulation_steps": training.gradient_accumulation_steps, "seed": training.seed,
            "train_examples": len(dataset) if hasattr(dataset, "__len__") else None,
            "data_fingerprint": data_fingerprint,
            "sampler": type(getattr(train_dataloader, "sampler", None)).__name__}


@dataclass
class LoopState:
    """Where the loop stands; what a checkpoint's training_state.json holds (plus the step plan)."""

    completed_steps: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"metric": None, "epoch": None, "step": None})


class TrainingLoop:
    """`run_training`'s parts: prepare, resume, one epoch of steps, evaluate and keep the best, checkpoint."""

    def __init__(self, training, accelerator, model, optimizer, train_dataloader, compute_loss, evaluate,
                 scheduler, select_metric, greater_is_better, step_callback, hparams, data_fingerprint=None,
                 on_save=None):
        self.args, self.acc, self.hparams, self.on_save = training, accelerator, hparams, on_save
        self.compute_loss, self.evaluate, self.step_callback = compute_loss, evaluate, step_callback
        self.select_metric = select_metric if evaluate is not None else None
        self.greater_is_better = greater_is_better
        self.out = Path(training.output_dir)
        self.best_dir = self.out / "best"
        self.settings = order_settings(training, accelerator.num_processes, train_dataloader, data_fingerprint)
        self.next_checkpoint = C.next_checkpoint_index(self.out)
        self.model, self.optimizer, self.loader = accelerator.prepare(model, optimizer, train_dataloader)
        self.n_batches = len(self.loader)
        if self.n_batches == 0:
            raise ValueError("the training data loader is empty (no training examples on this process)")
        ga = training.gradient_accumulation_steps
        self.steps_per_epoch = math.ceil(self.n_batches / ga)
        self.max_train_steps = training.max_train_steps or training.num_train_epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.max_train_steps / self.steps_per_epoch)
        if scheduler is None:
            scheduler = create_scheduler(training, self.optimizer, self.max_train_steps, self.steps_per_epoch,
                                         accelerator.num_processes)
        self.scheduler = accelerator.prepare(scheduler)
        self.state = LoopState()
        self.resumed_rng = None
        self.samples_seen = 0
        self.last_eval: dict[str, Any] = {}

    # -- resume ------------------------------------------------------------------------------------------------
    def resume(self, path: Path) -> None:
        """Load a checkpoint made with the same data-order settings; keep its best record only when ``best/`` on
        disk still holds that epoch."""
        C.check_order_settings(path, C.read_training_state(path), self.settings)
        saved = C.load_training_state(self.acc, path)
        s = self.state
        s.completed_steps, s.epoch = int(saved["completed_steps"]), int(saved["epoch"])
        s.batches_done_in_epoch = int(saved["batches_done_in_epoch"])
        if s.batches_done_in_epoch >= self.n_batches:
            s.epoch, s.batches_done_in_epoch = s.epoch + 1, 0
        s.history = list(saved.get("history", []))
        s.best = dict(saved.get("best", s.best))
        on_disk = C.read_best_record(self.best_dir)
        if s.best.get("epoch") is not None and self.evaluate is not None and on_disk != s.best:
            # best/ is missing (resumed into another folder) or belongs to a later point of an abandoned run
            logger.warning("resuming: %s holds %s, the checkpoint's best is %s; best selection restarts at the next "
                           "evaluation", self.best_dir, on_disk, s.best)
            s.best = {"metric": None, "epoch": None, "step": None}
        self.resumed_rng = C.get_rng_states()
        self.acc.print(f"resumed from {path}: step {s.completed_steps}, epoch {s.epoch}, "
                       f"skipping {s.batches_done_in_epoch} batches")

    def _epoch_batches(self, epoch: int, first_epoch: int):
        """The epoch's loader (re-seeded for `epoch`), past the batches a mid-epoch resume already did."""
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        skip = self.state.batches_done_in_epoch if epoch == first_epoch else 0
        if not skip:
            return self.loader, 0
        loader = self.acc.skip_first_batches(self.loader, skip)
        # the new loader counts its own iterations from 0 and re-seeds the shared sampler with that count
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        if self.resumed_rng is not None:
            # mid-epoch only: at an epoch boundary the uninterrupted run also starts its iterator after the checkpoint
            loader = C.restore_rng_on_first_batch(loader, self.resumed_rng)
        return loader, skip

    # -- one epoch ---------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, first_epoch: int, progress) -> tuple[float | None, bool]:
        """Run the epoch's steps. Returns (mean training loss over batches and processes, whether a step
        checkpoint falls on the epoch's end and waits for its evaluation)."""
        args, acc, s = self.args, self.acc, self.state
        self.model.train()
        loader, first = self._epoch_batches(epoch, first_epoch)
        every = int(args.checkpointing_steps) if args.checkpointing_steps not in (None, "epoch") else None
        loss_sum, loss_count, pending = torch.zeros((), device=acc.device), 0, False
        s.epoch, s.batches_done_in_epoch = epoch, first
        for batch_index, batch in enumerate(loader, start=first):
            loss = self._step(batch)
            loss_sum += loss.detach().float()
            loss_count += 1
            self.samples_seen += _batch_size(batch)
            s.batches_done_in_epoch = batch_index + 1
            if not acc.sync_gradients:
                continue
            s.completed_steps += 1
            progress.update(1)
            if self.step_callback is not None:
                self.step_callback(s.completed_steps)
            self._log_step(loss, epoch)
            end_of_epoch = s.batches_done_in_epoch >= self.n_batches or s.completed_steps >= self.max_train_steps
            if every and s.completed_steps % every == 0:
                if end_of_epoch:
                    pending = True  # written after this epoch's evaluation
                else:
                    self.checkpoint()
            if s.completed_steps >= self.max_train_steps:
                break
        mean = acc.reduce(loss_sum / loss_count, "mean").item() if loss_count else None
        return mean, pending

    def _step(self, batch) -> torch.Tensor:
        acc = self.acc
        with acc.accumulate(self.model):
            loss = self.compute_loss(self.model, batch)
            acc.backward(loss)
            if acc.sync_gradients and self.args.max_grad_norm:
                acc.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        return loss

    def _log_step(self, loss: torch.Tensor, epoch: int) -> None:
        args, step = self.args, self.state.completed_steps
        if args.with_tracking and args.logging_steps and step % args.logging_steps == 0:
            self.acc.log({"train_loss_step": self.acc.reduce(loss.detach().float(), "mean").item(),
                          "learning_rate": self.scheduler.get_last_lr()[0], "epoch": epoch}, step=step)

    # -- end of an epoch ---------------------------------------------------------------------------------------
    def end_epoch(self, epoch: int, train_loss: float | None) -> dict[str, Any]:
        """Evaluate (when an `evaluate` was given), keep the best, log; returns the history entry."""
        s = self.state
        entry: dict[str, Any] = {"epoch": epoch, "step": s.completed_steps, "train_loss": train_loss,
                                 "learning_rate": self.scheduler.get_last_lr()[0]}
        if self.evaluate is not None:
            self.last_eval = dict(self.evaluate(self.model))
            self.model.train()
            values = scalars(self.last_eval)
            if self.select_metric and self.select_metric not in values:
                raise KeyError(f"evaluate() returned no scalar {self.select_metric!r}; it returned "
                               f"{sorted(self.last_eval)}")
            entry.update({f"eval_{k}": v for k, v in values.items()})
            self._keep_if_best(entry)
        s.history.append(entry)
        if self.args.with_tracking:
            self.acc.log({k: v for k, v in entry.items() if v is not None}, step=s.completed_steps)
        self.acc.print(json.dumps(entry, default=json_default))
        return entry

    def _keep_if_best(self, entry: dict[str, Any]) -> None:
        """Save the epoch's weights to best/ when strictly better than every earlier epoch (or no metric)."""
        best = self.state.best
        value = entry.get(f"eval_{self.select_metric}") if self.select_metric else None
        if best["metric"] is None or value is None or (
                value > best["metric"] if self.greater_is_better else value < best["metric"]):
            self.state.best = {"metric": value, "epoch": entry["epoch"], "step": entry["step"]}
            C.save_best(self.acc, self.best_dir, self.state.best)

    def checkpoint(self) -> Path:
        s = self.state
        path = C.save_checkpoint(self.acc, self.out, self.next_checkpoint, {
            "completed_steps": s.completed_steps, "epoch": s.epoch, "batches_done_in_epoch": s.batches_done_in_epoch,
            "max_train_steps": self.max_train_steps, "steps_per_epoch": self.steps_per_epoch, "best": s.best,
            "history": s.history, "select_metric": self.select_metric, "order_settings": self.settings},
            self.args.checkpoints_total_limit)
        self.next_checkpoint += 1
        if self.on_save is not None:
            self.on_save(self.model, path, s.completed_steps)
        return path

    # -- the run -----------------------------------------------------------------------------------------------
    def run(self, resume_path: Path | None) -> TrainingResult:
        args, acc, s = self.args, self.acc, self.state
        if args.with_tracking:
            acc.init_trackers(args.tracker_project_name, config=tracker_config(self.hparams))
        if resume_path is not None:
            self.resume(resume_path)
        first_epoch = s.epoch
        progress = tqdm(total=self.max_train_steps, initial=s.completed_steps, desc="training",
                        disable=not acc.is_local_main_process)
        t0 = time.perf_counter()
        for epoch in range(first_epoch, self.num_epochs):
            if s.completed_steps >= self.max_train_steps:
                break
            train_loss, pending = self.train_epoch(epoch, first_epoch, progress)
            entry = self.end_epoch(epoch, train_loss)
            progress.set_postfix({k: f"{v:.4g}" for k, v in entry.items()
                                  if k in ("train_loss", f"eval_{self.select_metric}") and v is not None})
            if args.checkpointing_steps == "epoch" or pending:
                self.checkpoint()
        progress.close()
        runtime = time.perf_counter() - t0
        if args.with_tracking:
            acc.end_training()
        return self._result(resume_path, runtime)

    def _result(self, resume_path: Path | None, runtime: float) -> TrainingResult:
        s = self.state
        best = s.best if self.evaluate is not None else {
            "metric": None, "epoch": s.history[-1]["epoch"] if s.history else None, "step": s.completed_steps}
        return TrainingResult(
            history=s.history, completed_steps=s.completed_steps, max_train_steps=self.max_train_steps,
            num_train_epochs=self.num_epochs, steps_per_epoch=self.steps_per_epoch, best_metric=best["metric"],
            best_epoch=best["epoch"], best_step=best["step"],
            best_dir=self.best_dir if self.evaluate is not None and best["epoch"] is not None else None,
            select_metric=self.select_metric, resumed_from=str(resume_path) if resume_path else None,
            train_runtime=runtime, train_samples_seen=self.samples_seen * self.acc.num_processes,
            last_eval=self.last_eval, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            train_dataloader=self.loader)


def run_training(training, accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 train_dataloader: torch.utils.data.DataLoader,
                 compute_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
                 evaluate: Callable[[torch.nn.Module], Mapping[str, Any]] | None = None, *,
                 scheduler: Any = None, select_metric: str | None = "accuracy", greater_is_better: bool = True,
                 step_callback: Callable[[int], None] | None = None,
                 hparams: Mapping[str, Any] | None = None, data_fingerprint: str | None = None,
                 on_save: Callable[[Any, Path, int], None] | None = None) -> TrainingResult:
    """Train `model` and return a `TrainingResult` (docs/training.md, "The shared loop").

    - `training`: the `TrainingArguments`; `accelerator` from `make_accelerator`.
    - `model`, `optimizer`, `train_dataloader`: NOT prepared yet; prepared here (evaluation loaders are the
      caller's: prepare them and gather with ``gather_for_metrics``).
    - `compute_loss(model, batch) -> scalar loss`; `evaluate(model) -> {metric: value}` after every epoch, on every
      process (None: no evaluation, the last weights are the result, nothing is written to best/).
    - `scheduler`: None builds `create_scheduler` from the step counts.
    - `select_metric` / `greater_is_better`: the validation metric that picks the best epoch.
    - `step_callback(completed_steps)`: called after each optimizer step (tests use it to simulate a crash).
    - `hparams`: what the trackers record (default: the training arguments; redacted either way, sdx.redact).
    - `data_fingerprint`: of the training examples in order, recorded in checkpoints; a resume on other data is
      refused (with the batch size, processes, accumulation and seed: `order_settings`).
    - `on_save(prepared_model, checkpoint_dir, completed_steps)`: called on every process after each checkpoint
      (the Hub push of --hub_strategy every_save / checkpoint).
    """
    resume_path = C.resolve_checkpoint(training.resume_from_checkpoint, training.output_dir)
    loop = TrainingLoop(training, accelerator, model, optimizer, train_dataloader, compute_loss, evaluate,
                        scheduler, select_metric, greater_is_better, step_callback,
                        redact(dict(hparams if hparams is not None else training_hparams(training))),
                        data_fingerprint, on_save)
    return loop.run(resume_path)
