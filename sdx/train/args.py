"""Typed command-line arguments of the trainers: dataclasses parsed with `transformers.HfArgumentParser`.

`TrainingArguments` and `DataArguments` hold the flags both trainers share; each trainer adds its own dataclasses
and named recipes. `parse_job_args` layers defaults < ``--recipe`` < ``--config FILE`` < the command line
(docs/training.md, "Arguments").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

from transformers import HfArgumentParser

from sdx.data.naming import DatasetArguments, choose_data
from sdx.redact import redact, redact_argv

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "step")


TRACKERS = ("tensorboard", "wandb")


def report_targets(value: str) -> list[str]:
    """--report_to as a list: each of TRACKERS, "all" or "none" (alone), or a comma list of TRACKERS."""
    names = [v.strip().lower() for v in str(value).split(",") if v.strip()]
    if names in (["all"], ["none"]):
        return names
    unknown = [n for n in names if n not in TRACKERS]
    if unknown or not names:
        raise ValueError(f"--report_to: {', '.join(unknown) or 'nothing'} is not one of {', '.join(TRACKERS)}, "
                         "'all' or 'none'")
    return names


def arg_help(text: str, **more: Any) -> dict[str, Any]:
    """Field metadata for HfArgumentParser: the help text and any other add_argument keyword."""
    return {"help": text, **more}


RANGES: dict[str, Callable[[float], bool]] = {
    ">= 1": lambda v: v >= 1, ">= 0": lambda v: v >= 0, "> 0": lambda v: v > 0, "in [0, 1)": lambda v: 0 <= v < 1}


def check_ranges(obj: Any, rules: Mapping[str, str]) -> None:
    """Raise ValueError naming the flag when a field of `obj` breaks its rule (a key of RANGES) or is NaN or
    infinite; an unset optional (None) passes. Called by the argument dataclasses, so a bad value stops the parse
    before anything is written."""
    for name, rule in rules.items():
        value = getattr(obj, name)
        if value is not None and not (math.isfinite(value) and RANGES[rule](value)):
            raise ValueError(f"--{name} must be {rule}, got {value!r}")


@dataclass
class TrainingArguments:
    """The flags every trainer shares: seeds, steps, optimizer, schedule, precision, checkpoints, tracking, Hub."""

    _argument_group_name = "training (shared by train_vit.py and train_clip.py)"

    output_dir: Optional[str] = field(default=None, metadata=arg_help(
        "where checkpoints, the best model, the final model and all_results.json go (required)"))
    config: Optional[str] = field(default=None, metadata=arg_help(
        "JSON or YAML file mapping flag names to values; flags given on the command line override it"))
    recipe: Optional[str] = field(default=None, metadata=arg_help(
        "a named set of hyper-parameters (listed at the end of --help); the config file and the command line "
        "override each of its values"))
    overwrite_output_dir: bool = field(default=False, metadata=arg_help(
        "allow an output dir that already holds a run (its checkpoints/ and best/ are removed)"))
    seed: int = field(default=42, metadata=arg_help("random seed for weights, sampling and augmentation"))
    num_train_epochs: int = field(default=3, metadata=arg_help("training epochs"))
    max_train_steps: Optional[int] = field(default=None, metadata=arg_help(
        "total optimizer steps; overrides --num_train_epochs when set"))
    per_device_train_batch_size: int = field(default=32, metadata=arg_help("training batch size per process"))
    per_device_eval_batch_size: int = field(default=64, metadata=arg_help("evaluation batch size per process"))
    learning_rate: float = field(default=5e-5, metadata=arg_help("peak learning rate"))
    weight_decay: float = field(default=0.0, metadata=arg_help("weight decay (biases and norm weights get none)"))
    optimizer: Literal["adamw", "adam", "sgd"] = field(default="adamw", metadata=arg_help("optimizer"))
    optimizer_implementation: Literal["auto", "fused", "foreach", "for_loop"] = field(
        default="auto", metadata=arg_help(
            "torch kernel of the optimizer step; auto: the one measured fastest on CPU (fused; docs/training.md, "
            "Speed)"))
    momentum: float = field(default=0.9, metadata=arg_help("SGD momentum"))
    adam_beta1: float = field(default=0.9, metadata=arg_help("Adam(W) beta1"))
    adam_beta2: float = field(default=0.999, metadata=arg_help("Adam(W) beta2"))
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup", "step"] = field(
        default="linear", metadata=arg_help("learning-rate schedule"))
    lr_step_epochs: int = field(default=30, metadata=arg_help("'step' schedule: epochs between decays"))
    lr_gamma: float = field(default=0.1, metadata=arg_help("'step' schedule: factor applied at each decay"))
    warmup_steps: int = field(default=0, metadata=arg_help("linear warm-up steps"))
    gradient_accumulation_steps: int = field(default=1, metadata=arg_help("batches accumulated per optimizer step"))
    max_grad_norm: Optional[float] = field(default=None, metadata=arg_help(
        "clip gradients to this norm (off if unset)"))
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = field(default=None, metadata=arg_help(
        "mixed precision (default: accelerate's config / ACCELERATE_MIXED_PRECISION)"))
    eval_strategy: Literal["epoch", "no"] = field(default="epoch", metadata=arg_help(
        "epoch: evaluate the validation split after every epoch and keep the best epoch's weights; no: no "
        "per-epoch evaluation, the last epoch's weights are kept (validation is evaluated once at the end)"))
    checkpointing_steps: Optional[str] = field(default=None, metadata=arg_help(
        "save a resumable checkpoint every N steps, or 'epoch' after each epoch"))
    checkpoints_total_limit: Optional[int] = field(default=None, metadata=arg_help(
        "keep only the newest K checkpoints"))
    resume_from_checkpoint: Optional[str] = field(default=None, metadata=arg_help(
        "a checkpoint folder, or 'latest' for the newest under OUTPUT_DIR/checkpoints"))
    logging_steps: int = field(default=10, metadata=arg_help("log the training loss every N steps (--with_tracking)"))
    with_tracking: bool = field(default=False, metadata=arg_help("log metrics to the trackers of --report_to"))
    report_to: str = field(default="tensorboard", metadata=arg_help(
        "tracker(s) of --with_tracking, through accelerate: tensorboard, wandb (optional package; offline with "
        "WANDB_MODE=offline), all (every tracker installed), none (no tracking), or a comma list"))
    tracker_project_name: str = field(default="steeldefectx", metadata=arg_help("tracker project name"))
    dataloader_num_workers: int = field(default=0, metadata=arg_help("data-loader worker processes"))
    max_train_samples: Optional[int] = field(default=None, metadata=arg_help(
        "keep N training examples drawn by a seeded shuffle (debugging / quick runs)"))
    max_eval_samples: Optional[int] = field(default=None, metadata=arg_help(
        "keep N examples of each evaluation split drawn by a seeded shuffle"))
    push_to_hub: bool = field(default=False, metadata=arg_help("upload the output dir to the Hub at the end"))
    hub_model_id: Optional[str] = field(default=None, metadata=arg_help(
        "Hub repository id for --push_to_hub (default: the output dir's name)"))
    hub_token: Optional[str] = field(default=None, metadata=arg_help(
        "Hub token (default: the cached login / HF_TOKEN); never written to any file"))
    hub_private: bool = field(default=False, metadata=arg_help("create the Hub repository as private"))
    hub_strategy: Literal["end", "every_save", "checkpoint"] = field(default="end", metadata=arg_help(
        "what --push_to_hub uploads when: end (the output folder once, at the end); every_save (also the model at "
        "each checkpoint save); checkpoint (also the checkpoint itself as last-checkpoint/, resumable)"))
    command_line: str = field(default="", init=False)   # the shell-quoted command, for the model card

    def __post_init__(self) -> None:
        steps = self.checkpointing_steps
        if steps is not None and steps != "epoch" and (not str(steps).isdigit() or int(steps) <= 0):
            raise ValueError(f"--checkpointing_steps must be a positive integer or 'epoch', got {steps!r}")
        check_ranges(self, {
            **dict.fromkeys(("num_train_epochs", "max_train_steps", "per_device_train_batch_size",
                             "per_device_eval_batch_size", "gradient_accumulation_steps", "lr_step_epochs",
                             "checkpoints_total_limit", "max_train_samples", "max_eval_samples"), ">= 1"),
            **dict.fromkeys(("warmup_steps", "logging_steps", "dataloader_num_workers", "weight_decay", "momentum"),
                            ">= 0"),
            **dict.fromkeys(("learning_rate", "lr_gamma", "max_grad_norm"), "> 0"),
            **dict.fromkeys(("adam_beta1", "adam_beta2"), "in [0, 1)")})
        self.report_to = ",".join(report_targets(self.report_to))


@dataclass
class DataArguments(DatasetArguments):
    """The data flags both trainers share: a raw folder (sdx.data.builder.load_steeldefectx) or any `datasets`
    dataset (--dataset_name and its column / split flags, sdx.data.source)."""

    _argument_group_name = "data"

    data_dir: Optional[str] = field(default=None, metadata=arg_help(
        "folder in the official SteelDefectX layout, 'synthetic' (the embedded demo data) or 'hub' (the Hub "
        "release, needs network); default: synthetic, unless --dataset_name is given"))
    dataset_config_name: Optional[str] = field(default=None, metadata=arg_help(
        "with --data_dir: the builder config (default, t0, coarse, fine, attributes, structured); with "
        "--dataset_name: the dataset's config (default: its default config)"))
    cache_dir: Optional[str] = field(default=None, metadata=arg_help("the datasets cache folder"))
    validation_fraction: float = field(default=0.1, metadata=arg_help(
        "share of the official train split carved out (stratified) for validation"))
    classes: Optional[list[str]] = field(default=None, metadata=arg_help("keep only these class names"))
    exclude_classes: Optional[list[str]] = field(default=None, metadata=arg_help("drop these class names"))
    shots: Optional[int] = field(default=None, metadata=arg_help("k training images per class (few-shot)"))
    on_error: Literal["raise", "skip"] = field(default="raise", metadata=arg_help(
        "bad raw files: raise naming the file and field, or skip and count them"))
    pixel_cache_mb: float = field(default=1024, metadata=arg_help(
        "pre-process the training images (when no random augmentation applies) and the validation images once "
        "and keep them in memory when they fit in this many MB (0: process every batch on the fly; identical "
        "pixel values either way)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, {"shots": ">= 1", "validation_fraction": "in [0, 1)", "pixel_cache_mb": ">= 0"})
        self.data_dir = choose_data(self.data_dir, self.dataset_name)

    @property
    def data_label(self) -> str:
        """What the run read: the --data_dir value or the --dataset_name."""
        return str(self.dataset_name or self.data_dir)


def with_defaults(cls: type, name: str = "", **defaults: Any) -> type:
    """A subclass of dataclass `cls` whose fields take other defaults (help texts kept): per-trainer defaults."""
    own = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(defaults) - set(own))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {unknown}")
    types = typing.get_type_hints(cls)
    specs = [(k, types[k], field(default=v, metadata=own[k].metadata)) for k, v in defaults.items()]
    return dataclasses.make_dataclass(name or cls.__name__, specs, bases=(cls,),
                                      namespace={"_argument_group_name": cls._argument_group_name})


@dataclass
class JobArguments:
    """The parsed command of one trainer: its data, model/method and training arguments."""

    data: Any
    model: Any
    training: TrainingArguments

    def flat(self) -> dict[str, Any]:
        """Every argument by name, JSON-able, secrets redacted (run_args.json, trackers, model cards)."""
        out: dict[str, Any] = {}
        for part in (self.data, self.model):
            out.update(dataclasses.asdict(part))
        return redact({**out, **training_hparams(self.training)})


def training_hparams(training: TrainingArguments) -> dict[str, Any]:
    """The training arguments as a dict, secrets redacted (sdx.redact: the Hub token, token-like values)."""
    return redact(dataclasses.asdict(training))


def tracker_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat scalar hyper-parameters for `init_trackers` (TensorBoard accepts int/float/str/bool only)."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool))}


# ----------------------------------------------------------------------------------------------------------------
# --config and --recipe layering
# ----------------------------------------------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a JSON or YAML config file, keys normalised to field names (dashes -> underscores)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config: file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml  # optional: only YAML config files need it

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"--config: cannot parse {p}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config: {p} must hold a mapping of flag names to values, got {type(data).__name__}")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}


def mapping_to_argv(values: Mapping[str, Any], fields: Mapping[str, dataclasses.Field], source: str) -> list[str]:
    """Argument strings for a {field: value} mapping (a config file or a recipe), so the parser converts and checks
    them exactly like typed flags. Unknown keys and nulls for fields that cannot be null raise naming `source`."""
    unknown = sorted(k for k in values if k not in fields or not fields[k].init or k == "config")
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; use flag names such as 'learning_rate'")
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            if fields[key].default is not None:
                raise ValueError(f"{source}: {key}: null is not allowed (default {fields[key].default!r})")
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        argv += [f"--{key}", *(json.dumps(v) if isinstance(v, bool) else str(v) for v in items)]
    return argv


class _ConfigCheckParser(argparse.ArgumentParser):
    """Raises instead of exiting, so a bad value of a config file is reported with the file's name."""

    def error(self, message: str):  # type: ignore[override]
        raise ValueError(message)


def _hf_parser(dataclass_types: Sequence[type], parser_class: type = argparse.ArgumentParser, **kwargs: Any):
    class Parser(HfArgumentParser, parser_class):  # HfArgumentParser's fields, `parser_class`'s error handling
        pass

    return Parser(list(dataclass_types), **kwargs)


def _pre_parse(argv: Sequence[str]) -> argparse.Namespace:
    """--config and --recipe as given on the command line (before the full parse)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--recipe", default=None)
    return pre.parse_known_args(list(argv))[0]


def recipes_epilog(recipes: Mapping[str, Mapping[str, Any]]) -> str:
    return "recipes (--recipe NAME; the config file and the command line override each value):\n" + "\n".join(
        f"  {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()) for name, values in recipes.items())


def parse_job_args(dataclass_types: Sequence[type], argv: Sequence[str] | None, *, prog: str, description: str,
                   recipes: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Any, ...]:
    """Parse `argv` into instances of `dataclass_types`: defaults < recipe < --config file < command line.

    The recipe and the config file become argument strings placed before the command line (the last value of a
    flag wins), so they are converted and checked like flags. A value that fails a dataclass check exits with the
    parser's usage error. The `TrainingArguments` instance gets ``command_line``; ``--output_dir`` is required
    from one of the layers.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    recipes = dict(recipes or {})
    kwargs = dict(prog=prog, description=description, epilog=recipes_epilog(recipes) if recipes else None,
                  formatter_class=_HelpFormatter)
    parser = _hf_parser(dataclass_types, **kwargs)
    fields = {f.name: f for t in dataclass_types for f in dataclasses.fields(t)}
    given = _pre_parse(argv)
    config_argv: list[str] = []
    recipe = given.recipe
    if given.config:
        config = read_config_file(given.config)
        config_argv = mapping_to_argv(config, fields, f"--config {given.config}")
        try:  # check the file's values alone, so an error names the file
            _hf_parser(dataclass_types, _ConfigCheckParser, add_help=False).parse_known_args(config_argv)
        except ValueError as exc:
            raise ValueError(f"--config {given.config}: {exc}") from None
        recipe = recipe or config.get("recipe")
    recipe_argv: list[str] = []
    if recipe is not None:
        if recipe not in recipes:
            parser.error(f"--recipe: unknown recipe {recipe!r}; known: {sorted(recipes)}")
        recipe_argv = mapping_to_argv(recipes[recipe], fields, f"--recipe {recipe}")
    try:
        parsed = parser.parse_args_into_dataclasses(args=recipe_argv + config_argv + argv, look_for_args_file=False)
    except ValueError as exc:  # a dataclass check (__post_init__)
        parser.error(str(exc))
    training = next(p for p in parsed if isinstance(p, TrainingArguments))
    if not training.output_dir:
        parser.error("--output_dir is required (on the command line or in --config)")
    training.recipe = recipe
    training.command_line = shlex.join(redact_argv([prog, *argv]))
    return tuple(parsed)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the description / recipe list printed as written."""
