"""The one `accelerate` training loop shared by train_vit.py and train_clip.py, and the output helpers both use.

Interface (what a trainer writes)
---------------------------------
::

    parser = argparse.ArgumentParser(...)
    add_training_args(parser, recipes={"paper": {...}})   # the shared flag set (+ --config, --recipe)
    parser.add_argument(...)                               # the trainer's own flags
    args = parse_args(parser, argv)                        # defaults < recipe < config file < command line
    check_output_dir(args)                                 # refuse a dir holding another run (before any work)
    accelerator = make_accelerator(args)                   # seeds, grad accumulation, precision, tracking, naming
    ...build model, optimizer = create_optimizer(args, params), train_loader, evaluation loaders...
    result = run_training(args, accelerator, model, optimizer, train_loader,
                          compute_loss=lambda model, batch: loss_tensor,
                          evaluate=lambda model: {"accuracy": ..., ...},   # or None
                          select_metric="accuracy")
    load_best(accelerator, result.model, result.best_dir)  # the best-by-validation weights
    write_all_results(args.output_dir, {...}); write_model_card(...); push_output_dir(...)

`run_training` (see its docstring) prepares the model, optimizer and train loader, builds and prepares the learning
rate scheduler (`create_scheduler`, unless one is passed), resumes (`--resume_from_checkpoint PATH|latest`), runs
the epochs with gradient accumulation, checkpointing, tracking and one `evaluate(model)` call per epoch, keeps the
best weights by `select_metric` in ``output_dir/best`` and returns a `TrainingResult` (history included).

Rules and thresholds
--------------------
- Layering of values: parser defaults < ``--recipe NAME`` values < ``--config FILE`` (JSON or YAML mapping of flag
  names, dashes or underscores) < flags given on the command line. "Given" is detected by re-parsing with every
  default suppressed, so ``--learning_rate 0.1`` given explicitly still wins over a recipe even if equal to the
  default. Unknown config keys are an error naming the file and the key.
- Steps: one *step* is one optimizer update (``gradient_accumulation_steps`` batches). ``--max_train_steps`` (if
  set) overrides ``--num_train_epochs``; the number of epochs is then ceil(max_train_steps / steps_per_epoch).
- Learning-rate schedules: ``linear``, ``cosine``, ``constant``, ``constant_with_warmup`` (transformers'
  `get_scheduler`) and ``step``: after ``--warmup_steps`` linear warm-up, multiply by ``--lr_gamma`` every
  ``--lr_step_epochs`` epochs (the paper's "divide by 10 every 30 epochs" is gamma 0.1, 30 epochs). Lengths are
  multiplied by the number of processes because accelerate steps a prepared scheduler once per process.
- Checkpoints: ``--checkpointing_steps N`` (every N steps) or ``epoch`` (after each epoch's evaluation), written by
  `Accelerator.save_state` with automatic naming to ``output_dir/checkpoints/checkpoint_<i>`` (model, optimizer,
  scheduler, sampler, RNG states) plus ``training_state.json`` (steps, epoch, batches done in the epoch, best metric,
  history). ``--checkpoints_total_limit`` keeps the newest K. A checkpoint that falls on the last batch of an epoch
  is written after that epoch's evaluation, so a resumed run never skips an evaluation.
- Resume: ``--resume_from_checkpoint`` takes a checkpoint folder or ``latest`` (highest ``checkpoint_<i>`` under
  ``output_dir/checkpoints``). A missing folder, a folder without ``training_state.json`` or a folder that
  `load_state` cannot read raises before any step, naming the path. After loading, accelerate's automatic
  checkpoint counter is set past every existing ``checkpoint_<i>`` (otherwise the next `save_state` fails), and the
  batches already done in the interrupted epoch are skipped with `Accelerator.skip_first_batches`. The shuffling
  sampler is re-seeded per epoch (accelerate's seedable sampler, or any sampler with ``set_epoch``), so with a fixed
  seed, no random augmentation and ``num_workers=0`` a resumed run reproduces the uninterrupted weights exactly.
  (Random augmentation draws from the global RNG while the loader pre-fetches one batch, so with augmentation the
  resumed run is statistically, not bit-for-bit, equivalent.)
- Evaluation: ``evaluate(model)`` is called once per epoch (also after a run stopped by ``--max_train_steps``) and
  must return a mapping holding ``select_metric``; non-scalar values are kept out of the history and trackers.
  The best epoch (strictly better than any earlier one; ``greater_is_better`` picks the direction) is saved with
  `Accelerator.save_model` to ``output_dir/best`` with ``best_record.json`` (epoch, step, metric). Without
  ``evaluate`` the last weights count as best. On resume the checkpoint's best record is kept only when
  ``output_dir/best/best_record.json`` matches it (otherwise best/ is missing or belongs to an abandoned later
  point, and best selection restarts with the next evaluation).
- Output dir: `check_output_dir` refuses a folder that already holds a run (any of ``run_args.json``,
  ``all_results.json``, ``config.json``, ``model.safetensors``, ``adapter_config.json`` or a non-empty
  ``checkpoints/``) unless ``--overwrite_output_dir`` (then our own ``checkpoints/`` and ``best/`` are removed) or
  the run resumes from a checkpoint.
- Hub: `push_output_dir` calls ``HfApi.create_repo(exist_ok=True)`` then ``HfApi.upload_folder`` without the
  ``checkpoints/`` and ``best/`` folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

logger = logging.getLogger(__name__)

TRAINING_STATE = "training_state.json"
BEST_RECORD = "best_record.json"
RUN_ARGS = "run_args.json"
RESULTS = "all_results.json"
RUN_MARKERS = (RUN_ARGS, RESULTS, "config.json", "model.safetensors", "adapter_config.json")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "step")
OPTIMIZERS = ("adamw", "adam", "sgd")


# ----------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------


def add_training_args(parser: argparse.ArgumentParser, recipes: Mapping[str, Mapping[str, Any]] | None = None,
                      **defaults: Any) -> argparse.ArgumentParser:
    """Add the flags shared by every trainer to `parser` (grouped under "training").

    `recipes` (name -> {dest: value}) adds ``--recipe``; `defaults` overrides this function's defaults per trainer
    (e.g. ``learning_rate=1e-4`` for CLIP).
    """
    g = parser.add_argument_group("training (shared by train_vit.py and train_clip.py)")
    g.add_argument("--config", type=str, default=None,
                   help="JSON or YAML file mapping flag names to values, read in place of flags; flags given on "
                        "the command line override it.")
    if recipes:
        g.add_argument("--recipe", choices=sorted(recipes), default=None,
                       help="a named set of hyper-parameters: " + "; ".join(
                           f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items()) for k, v in recipes.items())
                       + ". Explicit flags and the config file override it.")
    g.add_argument("--output_dir", type=str, required=False, default=None,
                   help="where checkpoints, the best model, the final model and all_results.json go (required)")
    g.add_argument("--overwrite_output_dir", action="store_true",
                   help="allow an output dir that already holds a run (its checkpoints/ and best/ are removed)")
    g.add_argument("--seed", type=int, default=42, help="random seed for weights, sampling and augmentation")
    g.add_argument("--num_train_epochs", type=int, default=3, help="training epochs")
    g.add_argument("--max_train_steps", type=int, default=None,
                   help="total optimizer steps; overrides --num_train_epochs when set")
    g.add_argument("--per_device_train_batch_size", type=int, default=32, help="training batch size per process")
    g.add_argument("--per_device_eval_batch_size", type=int, default=64, help="evaluation batch size per process")
    g.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
    g.add_argument("--weight_decay", type=float, default=0.0, help="weight decay")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="optimizer")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--adam_beta1", type=float, default=0.9, help="Adam(W) beta1")
    g.add_argument("--adam_beta2", type=float, default=0.999, help="Adam(W) beta2")
    g.add_argument("--lr_scheduler_type", choices=SCHEDULERS, default="linear", help="learning-rate schedule")
    g.add_argument("--lr_step_epochs", type=int, default=30, help="'step' schedule: epochs between decays")
    g.add_argument("--lr_gamma", type=float, default=0.1, help="'step' schedule: factor applied at each decay")
    g.add_argument("--warmup_steps", type=int, default=0, help="linear warm-up steps")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="batches accumulated per optimizer step")
    g.add_argument("--max_grad_norm", type=float, default=None, help="clip gradients to this norm (off if unset)")
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                   help="mixed precision (default: accelerate's config / ACCELERATE_MIXED_PRECISION)")
    g.add_argument("--checkpointing_steps", type=str, default=None,
                   help="save a resumable checkpoint every N steps, or 'epoch' after each epoch")
    g.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep only the newest K checkpoints")
    g.add_argument("--resume_from_checkpoint", type=str, default=None,
                   help="a checkpoint folder, or 'latest' for the newest under OUTPUT_DIR/checkpoints")
    g.add_argument("--logging_steps", type=int, default=10, help="log the training loss every N steps")
    g.add_argument("--with_tracking", action="store_true", help="log metrics to the trackers of --report_to")
    g.add_argument("--report_to", type=str, default="tensorboard",
                   help="tracker(s) for --with_tracking: tensorboard, wandb, ..., or 'all'")
    g.add_argument("--tracker_project_name", type=str, default="steeldefectx", help="tracker project name")
    g.add_argument("--dataloader_num_workers", type=int, default=0, help="data-loader worker processes")
    g.add_argument("--max_train_samples", type=int, default=None,
                   help="keep the first N training examples after a seeded shuffle (debugging / quick runs)")
    g.add_argument("--max_eval_samples", type=int, default=None,
                   help="keep the first N examples of each evaluation split after a seeded shuffle")
    g.add_argument("--push_to_hub", action="store_true", help="upload the output dir to the Hub at the end")
    g.add_argument("--hub_model_id", type=str, default=None,
                   help="Hub repository id for --push_to_hub (default: the output dir's name)")
    g.add_argument("--hub_token", type=str, default=None, help="Hub token (default: the cached login / HF_TOKEN)")
    g.add_argument("--hub_private", action="store_true", help="create the Hub repository as private")
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def _read_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config: file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"--config: cannot parse {p}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"--config: {p} must hold a mapping of flag names to values, got {type(data).__name__}")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}


def _given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations the user wrote on the command line (every default suppressed for one parse)."""
    saved = [(a, a.default) for a in parser._actions]
    saved_parser_defaults = dict(parser._defaults)
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        parser._defaults.clear()
        ns, _ = parser.parse_known_args(list(argv))
    finally:
        for a, d in saved:
            a.default = d
        parser._defaults.update(saved_parser_defaults)
    return set(vars(ns))


def _convert(action: argparse.Action, value: Any, source: str) -> Any:
    if value is None:
        return None
    if action.type is not None and isinstance(value, str):
        value = action.type(value)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{source}: {action.dest}={value!r} is not one of {list(action.choices)}")
    return value


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
               recipes: Mapping[str, Mapping[str, Any]] | None = None) -> argparse.Namespace:
    """Parse `argv` with layering defaults < recipe < --config file < command line.

    Adds ``args.explicit`` (sorted dests set by the config file or the command line), ``args.command_line`` (the
    shell-quoted command) and ``args.applied_recipe``. Requires ``--output_dir`` from one of the layers.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    given = _given_on_command_line(parser, argv)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    config: dict[str, Any] = {}
    if getattr(args, "config", None):
        config = _read_config_file(args.config)
        unknown = sorted(set(config) - set(actions))
        if unknown:
            raise ValueError(f"--config: {args.config}: unknown key(s) {unknown}; use flag names such as "
                             f"'learning_rate'")
        config = {k: _convert(actions[k], v, f"--config {args.config}") for k, v in config.items()}
    recipe_name = args.recipe if "recipe" in given else config.get("recipe", getattr(args, "recipe", None))
    layered: dict[str, Any] = {}
    if recipe_name:
        if not recipes or recipe_name not in recipes:
            raise ValueError(f"--recipe: unknown recipe {recipe_name!r}; known: {sorted(recipes or {})}")
        layered.update(recipes[recipe_name])
    layered.update(config)
    for dest, value in layered.items():
        if dest not in given:
            setattr(args, dest, value)
    args.recipe = recipe_name
    args.applied_recipe = dict(recipes[recipe_name]) if recipe_name else None
    args.explicit = sorted(given | set(config))
    args.command_line = " ".join(shlex.quote(a) for a in [parser.prog, *argv])
    if not getattr(args, "output_dir", None):
        parser.error("--output_dir is required (on the command line or in --config)")
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch":
        if not str(args.checkpointing_steps).isdigit() or int(args.checkpointing_steps) <= 0:
            parser.error(f"--checkpointing_steps must be a positive integer or 'epoch', got "
                         f"{args.checkpointing_steps!r}")
    if args.gradient_accumulation_steps < 1:
        parser.error("--gradient_accumulation_steps must be >= 1")
    return args


def jsonable_args(args: argparse.Namespace) -> dict[str, Any]:
    """The namespace as a JSON-serialisable dict (tokens left out)."""
    out = {}
    for k, v in vars(args).items():
        if k in ("hub_token", "func") or callable(v):
            continue
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = str(v)
    return out


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """Flat scalar hyper-parameters for `init_trackers` (TensorBoard accepts int/float/str/bool only)."""
    return {k: v for k, v in jsonable_args(args).items() if isinstance(v, (int, float, str, bool))}


# ----------------------------------------------------------------------------------------------------------------
# Output dir
# ----------------------------------------------------------------------------------------------------------------


def check_output_dir(args: argparse.Namespace) -> Path:
    """Refuse an output dir that already holds a run, before any work (see the module rules). Returns the path.

    Safe to call on every process before the main process writes anything into the folder.
    """
    out = Path(args.output_dir)
    if not out.exists():
        return out
    if not out.is_dir():
        raise NotADirectoryError(f"--output_dir {out} exists and is not a folder")
    found = [m for m in RUN_MARKERS if (out / m).exists()]
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        found.append("checkpoints/")
    if not found or getattr(args, "resume_from_checkpoint", None):
        return out
    if getattr(args, "overwrite_output_dir", False):
        return out
    raise FileExistsError(f"--output_dir {out} already holds a run ({', '.join(found)}); pass "
                          f"--overwrite_output_dir to replace it, --resume_from_checkpoint to continue it, or choose "
                          f"another folder")


def start_output_dir(args: argparse.Namespace, accelerator) -> Path:
    """Create the output dir on the main process, clear our own leftovers when overwriting, write run_args.json."""
    out = Path(args.output_dir)
    accelerator.wait_for_everyone()  # every rank has run check_output_dir on the untouched folder
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if getattr(args, "overwrite_output_dir", False) and not getattr(args, "resume_from_checkpoint", None):
            for sub in ("checkpoints", "best"):
                shutil.rmtree(out / sub, ignore_errors=True)
        (out / RUN_ARGS).write_text(json.dumps(jsonable_args(args), indent=2, sort_keys=True) + "\n")
    accelerator.wait_for_everyone()
    return out


def limit_samples(split, n: int | None, seed: int):
    """--max_train_samples / --max_eval_samples: a seeded subset of n rows of a datasets split (all when None)."""
    if n is None or n >= len(split):
        return split
    if n < 1:
        raise ValueError(f"--max_train_samples / --max_eval_samples must be >= 1, got {n}")
    return split.shuffle(seed=seed).select(range(n))


def write_all_results(output_dir: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write ``all_results.json`` (sorted keys, indented). Returns its path."""
    path = Path(output_dir) / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ----------------------------------------------------------------------------------------------------------------
# Accelerator, optimizer, scheduler
# ----------------------------------------------------------------------------------------------------------------


def _cache_accelerate_package_probes() -> None:
    """accelerate asks `is_lomo_available()` (an importlib find_spec over sys.path, ~0.5 ms) in every
    `backward` and optimizer `step`; the answer cannot change within a process, so it is cached (measured: about
    1 ms less loop overhead per step on CPU, see bench/bench_train_vit.py step)."""
    import functools

    import accelerate.accelerator as acc_mod
    import accelerate.optimizer as opt_mod

    for mod in (acc_mod, opt_mod):
        probe = getattr(mod, "is_lomo_available", None)
        if probe is not None and not hasattr(probe, "cache_info"):
            mod.is_lomo_available = functools.lru_cache(maxsize=None)(probe)


def make_accelerator(args: argparse.Namespace, **kwargs: Any):
    """An `Accelerator` for `args`: grad accumulation, precision, trackers, automatic checkpoint naming under
    ``output_dir``, seedable samplers; seeds every RNG with ``--seed``."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    project = ProjectConfiguration(project_dir=str(args.output_dir), logging_dir=str(Path(args.output_dir) / "logs"),
                                   automatic_checkpoint_naming=True, total_limit=args.checkpoints_total_limit)
    acc_kwargs: dict[str, Any] = dict(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        project_config=project,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if args.mixed_precision:
        acc_kwargs["mixed_precision"] = args.mixed_precision
    if getattr(args, "with_tracking", False):
        acc_kwargs["log_with"] = args.report_to
    acc_kwargs.update(kwargs)
    # a second trainer run in the same process (tests, notebooks, the pipeline) may ask for another precision or
    # accumulation: forget the previous run's accelerator settings (the process group, PartialState, is kept)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    _cache_accelerate_package_probes()
    accelerator = Accelerator(**acc_kwargs)
    set_seed(args.seed)
    return accelerator


def create_optimizer(args: argparse.Namespace, params: Iterable) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay), Adam or AdamW from the flags. Biases and norm weights get no weight decay when
    `params` is a model (a `torch.nn.Module`)."""
    if isinstance(params, torch.nn.Module):
        decay, no_decay = [], []
        for name, p in params.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        params = [{"params": decay, "weight_decay": args.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.learning_rate, momentum=args.momentum,
                               weight_decay=args.weight_decay)
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay)


def create_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, num_training_steps: int,
                     num_update_steps_per_epoch: int, num_processes: int = 1):
    """The learning-rate schedule of ``--lr_scheduler_type`` over `num_training_steps` optimizer steps.

    Step counts are multiplied by `num_processes` because accelerate steps a prepared scheduler once per process.
    """
    warmup = args.warmup_steps * num_processes
    total = num_training_steps * num_processes
    if args.lr_scheduler_type == "step":
        period = max(1, args.lr_step_epochs * num_update_steps_per_epoch * num_processes)
        gamma = args.lr_gamma

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            return gamma ** (step // period)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    from transformers import get_scheduler

    return get_scheduler(args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=warmup,
                         num_training_steps=total)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def _checkpoint_index(path: Path) -> int | None:
    m = re.fullmatch(r"checkpoint_(\d+)", path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``output_dir/checkpoints/checkpoint_<i>`` folders, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(i, p) for p in root.iterdir() if p.is_dir() and (i := _checkpoint_index(p)) is not None]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder to resume from, validated (exists, has training_state.json); None when not resuming.

    Raises FileNotFoundError / ValueError naming the path. Call it early (before loading data) to fail fast.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        ckpts = list_checkpoints(output_dir)
        if not ckpts:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint_<i> folder under "
                                    f"{Path(output_dir) / 'checkpoints'}")
        path = ckpts[-1]
    else:
        path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint: checkpoint folder not found: {path}")
    state = path / TRAINING_STATE
    if not state.is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint: {path} is not a checkpoint of this trainer "
                                f"({state} is missing)")
    try:
        data = json.loads(state.read_text())
        int(data["completed_steps"])
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"--resume_from_checkpoint: corrupt {state}: {exc}") from exc
    return path


def _save_checkpoint(accelerator, state: dict[str, Any]) -> Path:
    path = Path(accelerator.save_state())
    if accelerator.is_main_process:
        (path / TRAINING_STATE).write_text(json.dumps(state, indent=2, default=_json_default) + "\n")
    accelerator.wait_for_everyone()
    return path


def load_best(accelerator, model: torch.nn.Module, best_dir: str | os.PathLike) -> torch.nn.Module:
    """Load the weights `run_training` kept in `best_dir` into `model` (prepared or not). Returns the unwrapped
    model."""
    from safetensors.torch import load_file

    unwrapped = accelerator.unwrap_model(model)
    best = Path(best_dir)
    files = sorted(best.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors in {best}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = unwrapped.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{best}: weights not in the model: {unexpected[:5]}")
    # keys missing from the file are tied/shared tensors that save_model de-duplicated; check they are covered
    own = unwrapped.state_dict()
    stored_ptrs = {own[k].data_ptr() for k in state if k in own}
    uncovered = [k for k in missing if own[k].data_ptr() not in stored_ptrs]
    if uncovered:
        raise ValueError(f"{best}: weights missing for {uncovered[:5]}")
    return unwrapped


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


def _scalars(d: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v.item())
    return out


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                return int(v.shape[0])
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    return 0


def _read_best_record(best_dir: Path) -> dict | None:
    try:
        return json.loads((best_dir / BEST_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _get_rng_states() -> tuple:
    import random

    import numpy as np

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_states(states: tuple) -> None:
    import random

    import numpy as np

    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])
    if states[3] is not None:
        torch.cuda.set_rng_state_all(states[3])


def _restore_rng_on_first_batch(loader: Iterable, states: tuple):
    """Yield from `loader`, re-applying the checkpoint's RNG states once its first batch is out.

    Starting a DataLoader iterator draws a base seed from the global RNG; the uninterrupted run drew it at the start
    of the epoch, before the checkpoint, so the resumed run must not let that draw shift the stream.
    """
    first = True
    for batch in loader:
        if first:
            _set_rng_states(states)
            first = False
        yield batch


def run_training(
    args: argparse.Namespace,
    accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_dataloader: torch.utils.data.DataLoader,
    compute_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
    evaluate: Callable[[torch.nn.Module], Mapping[str, Any]] | None = None,
    *,
    scheduler: Any = None,
    select_metric: str | None = "accuracy",
    greater_is_better: bool = True,
    save_best: Callable[[Any, torch.nn.Module, Path], None] | None = None,
    step_callback: Callable[[int], None] | None = None,
) -> TrainingResult:
    """Train `model` and return a `TrainingResult`.

    Arguments
    - `args`: the namespace of `parse_args` (reads output_dir, num_train_epochs, max_train_steps,
      gradient_accumulation_steps, max_grad_norm, checkpointing_steps, resume_from_checkpoint, logging_steps,
      with_tracking, tracker_project_name and the scheduler flags).
    - `accelerator`: from `make_accelerator(args)`.
    - `model`, `optimizer`, `train_dataloader`: NOT prepared yet; this function prepares them (the evaluation
      loaders are the caller's: prepare them with ``accelerator.prepare`` and gather with ``gather_for_metrics``).
    - `compute_loss(model, batch) -> scalar loss tensor` (the model is the prepared, training-mode one).
    - `evaluate(model) -> {metric: value}`: called after every epoch on the prepared model, on every process (it
      must use collective gathers); it may switch the model to eval mode, the loop switches it back.
    - `scheduler`: None builds `create_scheduler(args, ...)` from the step counts; pass an (unprepared) scheduler
      to use your own.
    - `select_metric` / `greater_is_better`: the validation metric that picks the best epoch (None: last epoch).
    - `save_best(accelerator, model, folder)`: how to store the best weights (default `Accelerator.save_model`,
      read back by `load_best`).
    - `step_callback(completed_steps)`: called after each optimizer step (tests use it to simulate a crash).

    Each history entry: epoch, step, train_loss (mean over the epoch's batches and processes), learning_rate and
    the scalar evaluation metrics prefixed ``eval_``.
    """
    from tqdm.auto import tqdm

    out = Path(args.output_dir)
    resume_path = resolve_checkpoint(getattr(args, "resume_from_checkpoint", None), out)

    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    ga = args.gradient_accumulation_steps
    n_batches = len(train_dataloader)
    if n_batches == 0:
        raise ValueError("the training data loader is empty (no training examples on this process)")
    steps_per_epoch = math.ceil(n_batches / ga)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    if scheduler is None:
        scheduler = create_scheduler(args, optimizer, max_train_steps, steps_per_epoch, accelerator.num_processes)
    scheduler = accelerator.prepare(scheduler)

    ckpt_every = args.checkpointing_steps
    step_ckpt = int(ckpt_every) if ckpt_every not in (None, "epoch") else None

    if getattr(args, "with_tracking", False):
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config(args))

    history: list[dict[str, Any]] = []
    completed_steps = 0
    starting_epoch = 0
    skip_batches = 0
    best: dict[str, Any] = {"metric": None, "epoch": None, "step": None}
    best_dir = out / "best"
    resumed_rng = None
    if resume_path is not None:
        try:
            accelerator.load_state(str(resume_path))
        except Exception as exc:  # noqa: BLE001 - name the checkpoint
            raise ValueError(f"--resume_from_checkpoint: cannot load {resume_path}: {exc}") from exc
        state = json.loads((resume_path / TRAINING_STATE).read_text())
        completed_steps = int(state["completed_steps"])
        starting_epoch = int(state["epoch"])
        skip_batches = int(state["batches_done_in_epoch"])
        if skip_batches >= n_batches:
            starting_epoch, skip_batches = starting_epoch + 1, 0
        history = list(state.get("history", []))
        best = dict(state.get("best", best))
        on_disk = _read_best_record(best_dir)
        if best.get("epoch") is not None and on_disk != best:
            # best/ is missing (resumed into another folder) or belongs to a later point of an abandoned run:
            # forget the old best; the next evaluation saves a new one
            logger.warning("resuming: %s holds %s, the checkpoint's best is %s; best selection restarts at the next "
                           "evaluation", best_dir, on_disk, best)
            best = {"metric": None, "epoch": None, "step": None}
        # accelerate's automatic counter restarts at 0 after load_state: move it past every existing checkpoint
        resumed_rng = _get_rng_states()
        existing = [_checkpoint_index(p) for p in list_checkpoints(out)]
        accelerator.project_configuration.iteration = (max(existing) + 1) if existing else 0
        accelerator.print(f"resumed from {resume_path}: step {completed_steps}, epoch {starting_epoch}, "
                          f"skipping {skip_batches} batches")

    def state_dict_for(epoch: int, batches_done: int) -> dict[str, Any]:
        return {"completed_steps": completed_steps, "epoch": epoch, "batches_done_in_epoch": batches_done,
                "max_train_steps": max_train_steps, "steps_per_epoch": steps_per_epoch, "best": best,
                "history": history, "select_metric": select_metric}

    def default_save_best(acc, mdl, folder: Path) -> None:
        acc.save_model(mdl, str(folder))

    save_best = save_best or default_save_best
    progress = tqdm(total=max_train_steps, initial=completed_steps, desc="training",
                    disable=not accelerator.is_local_main_process)
    samples_seen = 0
    t0 = time.perf_counter()
    last_eval: dict[str, Any] = {}
    for epoch in range(starting_epoch, num_epochs):
        if completed_steps >= max_train_steps:
            break
        model.train()
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(epoch)
        loader = train_dataloader
        first = 0
        if epoch == starting_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
            # the new loader counts its own iterations from 0 and re-seeds the shared sampler with that count
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            first = skip_batches
        if epoch == starting_epoch and skip_batches and resumed_rng is not None:
            # mid-epoch resume only: at an epoch boundary the uninterrupted run also starts its iterator after
            # the checkpoint, so nothing is to be undone there
            loader = _restore_rng_on_first_batch(loader, resumed_rng)
        loss_sum = torch.zeros((), device=accelerator.device)
        loss_count = 0
        pending_step_ckpt = False
        batches_done = first
        for batch_index, batch in enumerate(loader, start=first):
            with accelerator.accumulate(model):
                loss = compute_loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            loss_sum += loss.detach().float()
            loss_count += 1
            samples_seen += _batch_size(batch)
            batches_done = batch_index + 1
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress.update(1)
            if step_callback is not None:
                step_callback(completed_steps)
            if getattr(args, "with_tracking", False) and args.logging_steps and \
                    completed_steps % args.logging_steps == 0:
                accelerator.log({"train_loss_step": accelerator.reduce(loss.detach().float(), "mean").item(),
                                 "learning_rate": scheduler.get_last_lr()[0], "epoch": epoch}, step=completed_steps)
            end_of_epoch = batches_done >= n_batches or completed_steps >= max_train_steps
            if step_ckpt and completed_steps % step_ckpt == 0:
                if end_of_epoch:
                    pending_step_ckpt = True  # written after this epoch's evaluation
                else:
                    _save_checkpoint(accelerator, state_dict_for(epoch, batches_done))
            if completed_steps >= max_train_steps:
                break

        mean_loss = accelerator.reduce(loss_sum / max(loss_count, 1), "mean").item() if loss_count else None
        entry: dict[str, Any] = {"epoch": epoch, "step": completed_steps, "train_loss": mean_loss,
                                 "learning_rate": scheduler.get_last_lr()[0]}
        if evaluate is not None:
            last_eval = dict(evaluate(model))
            model.train()
            scal = _scalars(last_eval)
            if select_metric and select_metric not in scal:
                raise KeyError(f"evaluate() returned no scalar {select_metric!r}; it returned {sorted(last_eval)}")
            entry.update({f"eval_{k}": v for k, v in scal.items()})
        history.append(entry)
        value = entry.get(f"eval_{select_metric}") if (evaluate is not None and select_metric) else None
        improved = (best["metric"] is None or value is None
                    or (value > best["metric"] if greater_is_better else value < best["metric"]))
        if improved:
            best = {"metric": value, "epoch": epoch, "step": completed_steps}
            accelerator.wait_for_everyone()
            save_best(accelerator, model, best_dir)
            if accelerator.is_main_process:
                best_dir.mkdir(parents=True, exist_ok=True)
                (best_dir / BEST_RECORD).write_text(json.dumps(best) + "\n")
            accelerator.wait_for_everyone()
        if getattr(args, "with_tracking", False):
            accelerator.log({k: v for k, v in entry.items() if v is not None}, step=completed_steps)
        progress.set_postfix({k: f"{v:.4g}" for k, v in entry.items()
                              if k in ("train_loss", f"eval_{select_metric}") and v is not None})
        accelerator.print(json.dumps(entry, default=_json_default))
        if ckpt_every == "epoch" or pending_step_ckpt:
            _save_checkpoint(accelerator, state_dict_for(epoch, batches_done))
    progress.close()
    runtime = time.perf_counter() - t0
    if getattr(args, "with_tracking", False):
        accelerator.end_training()
    return TrainingResult(
        history=history, completed_steps=completed_steps, max_train_steps=max_train_steps,
        num_train_epochs=num_epochs, steps_per_epoch=steps_per_epoch, best_metric=best["metric"],
        best_epoch=best["epoch"], best_step=best["step"], best_dir=best_dir if best["epoch"] is not None else None,
        select_metric=select_metric, resumed_from=str(resume_path) if resume_path else None, train_runtime=runtime,
        train_samples_seen=samples_seen * accelerator.num_processes, last_eval=last_eval, model=model,
        optimizer=optimizer, scheduler=scheduler, train_dataloader=train_dataloader)


# ----------------------------------------------------------------------------------------------------------------
# Model card and Hub
# ----------------------------------------------------------------------------------------------------------------


def write_model_card(output_dir: str | os.PathLike, *, model_name: str, task: str, base_model: str | None,
                     init: str, dataset: Mapping[str, Any], metrics: Mapping[str, Any],
                     hyperparameters: Mapping[str, Any], command_line: str, tags: Sequence[str] = (),
                     extra_sections: Mapping[str, str] | None = None, library_name: str = "transformers") -> Path:
    """Write ``README.md`` as a `huggingface_hub.ModelCard`: YAML metadata (eval results as model-index), the
    evaluation table, the data and configuration, whether the weights started pretrained or random, the command.

    `dataset`: {"name", "config", "data_dir", "splits": {split: n}, ...}; `metrics`: {"test_accuracy": ...}
    (scalars become model-index entries); `init`: "pretrained" or "random".
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    scal = _scalars(metrics)
    ds_name = str(dataset.get("name", "SteelDefectX"))
    eval_results = [EvalResult(task_type=task, dataset_type=str(dataset.get("id", "Zhaosxian/SteelDefectX")),
                               dataset_name=ds_name, dataset_config=str(dataset.get("config", "default")),
                               dataset_split=k.split("_", 1)[0] if "_" in k else None,
                               metric_type=k.split("_", 1)[-1], metric_name=k, metric_value=v)
                    for k, v in scal.items()]
    data = ModelCardData(model_name=model_name, library_name=library_name, tags=list(tags) + ["steeldefectx"],
                         base_model=base_model if (base_model and init == "pretrained") else None,
                         datasets=[str(dataset.get("id", "Zhaosxian/SteelDefectX"))],
                         eval_results=eval_results or None, pipeline_tag=task)
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in scal.items()) or "| (none) | |"
    hp = "\n".join(f"| {k} | {v} |" for k, v in hyperparameters.items())
    ds = "\n".join(f"- {k}: {v}" for k, v in dataset.items())
    init_text = (f"Fine-tuned from the pretrained weights `{base_model}`." if init == "pretrained"
                 else "Trained from a **random initialisation** (no pretrained weights).")
    body = [f"# {model_name}", "", f"{task} on SteelDefectX steel-surface defects. {init_text}", "",
            "## Evaluation", "", "| metric | value |", "|---|---|", rows, "", "## Data", "", ds, "",
            "## Training configuration", "", "| hyper-parameter | value |", "|---|---|", hp, "",
            "## Command", "", "```bash", command_line, "```", ""]
    for title, text in (extra_sections or {}).items():
        body += [f"## {title}", "", text, ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
    path = Path(output_dir) / "README.md"
    card.save(str(path))
    return path


def push_output_dir(output_dir: str | os.PathLike, repo_id: str | None = None, *, token: str | None = None,
                    private: bool = False, commit_message: str = "Upload SteelDefectX model",
                    ignore_patterns: Sequence[str] = ("checkpoints/*", "best/*", "logs/*")):
    """Upload `output_dir` to the Hub model repo `repo_id` (default: the folder's name) via `HfApi`:
    create_repo(exist_ok=True) then upload_folder. Returns upload_folder's result."""
    from huggingface_hub import HfApi

    repo_id = repo_id or Path(output_dir).resolve().name
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(output_dir),
                             commit_message=commit_message, ignore_patterns=list(ignore_patterns))
