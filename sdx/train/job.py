"""The one skeleton of a training run; train_vit.py and train_clip.py each supply a `Job` with what differs.

`run_job`: check the output dir and the checkpoint, make the accelerator, lock the output dir, load the data, select
the splits, build the model and the loaders, check a resume's settings, start the output dir, run the shared loop,
load the best weights, evaluate at the end, then (main process) save the model, the run metadata, all_results.json
and the model card, and push to the Hub.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from accelerate.utils import broadcast_object_list

from sdx.data.naming import describe_data
from sdx.models.classifiers import count_parameters
from sdx.train import outputs
from sdx.train.args import JobArguments, tracker_config
from sdx.train.checkpoints import check_order_settings, load_best, read_training_state, resolve_checkpoint
from sdx.train.loop import TrainingResult, create_optimizer, make_accelerator, order_settings, run_training
from sdx.train.runmeta import RunMetadata, is_pretrained


class Job:
    """The trainer-specific hooks `run_job` calls, in order. Subclasses set `kind` (RunMetadata.kind) and fill
    `origin` (sdx.train.runmeta.weights_origin) in `build_model`."""

    kind: str = ""
    origin: str = ""

    def __init__(self, args: JobArguments):
        self.args = args

    # what the run is
    @property
    def method(self) -> str:
        raise NotImplementedError

    @property
    def select_metric(self) -> str:
        return self.args.model.metric_for_best_model

    @property
    def select_rule(self) -> str:
        """`select_metric` in words, for the run metadata and the model card."""
        return f"validation {self.select_metric} (highest wins)"

    wants_test: bool = True

    caption_level: Optional[str] = None   # the text level trained on ("mixed" included); None: captions unused

    # data and model
    def load_data(self):
        """The DatasetDict (train / validation / test) of the data arguments."""
        raise NotImplementedError

    def build_model(self, ds, splits: Mapping[str, Any]) -> torch.nn.Module:
        """The module to train (its loss is `compute_loss`); bad model input raises here, before any step."""
        raise NotImplementedError

    def train_loader(self, split) -> torch.utils.data.DataLoader:
        raise NotImplementedError

    def eval_loader(self, split, name: str) -> torch.utils.data.DataLoader:
        raise NotImplementedError

    # training and evaluation
    def compute_loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, accelerator, model: torch.nn.Module, loader) -> dict[str, Any]:
        """Metrics of a prepared evaluation loader (the `select_metric` among them)."""
        raise NotImplementedError

    def final_metrics(self, accelerator, result: TrainingResult, model: torch.nn.Module,
                      loaders: Mapping[str, Any]) -> dict[str, Any]:
        """``validation_*`` and ``test_*`` metrics of the kept weights (`model`, unwrapped)."""
        raise NotImplementedError

    def training_summary(self, result: TrainingResult) -> dict[str, Any]:
        """The loop's figures as this trainer's all_results.json names them."""
        raise NotImplementedError

    # outputs (main process)
    def save(self, model: torch.nn.Module, out: Path, results: dict[str, Any]) -> None:
        """The final model, its processor and the trainer's own files; may add entries to `results`."""
        raise NotImplementedError

    def metadata_fields(self) -> dict[str, Any]:
        """The trainer's own fields of `RunMetadata`."""
        return {}

    def model_card(self, results: Mapping[str, Any]) -> dict[str, Any]:
        """`write_model_card` arguments besides the name, base model, init and command line."""
        raise NotImplementedError


def select_splits(ds, job: Job) -> dict[str, Any]:
    """train / validation (required, non-empty) and test (when present and wanted), cut to --max_*_samples."""
    data, t = job.args.data, job.args.training
    for split in ("train", "validation"):
        if split not in ds or len(ds[split]) == 0:
            raise ValueError(f"the {split} split is empty (data {data.data_label}, classes {data.classes}, "
                             f"validation_fraction {data.validation_fraction}): nothing to "
                             f"{'train on' if split == 'train' else 'validate on'}")
    splits = {"train": limit_samples(ds["train"], t.max_train_samples, t.seed),
              "validation": limit_samples(ds["validation"], t.max_eval_samples, t.seed)}
    if job.wants_test and "test" in ds and len(ds["test"]):
        splits["test"] = limit_samples(ds["test"], t.max_eval_samples, t.seed)
    return splits


def limit_samples(split, n: Optional[int], seed: int):
    """--max_train_samples / --max_eval_samples: a seeded subset of n rows of a datasets split (all when None)."""
    if n is None or n >= len(split):
        return split
    return split.shuffle(seed=seed).select(range(n))


def run_metadata(job: Job, train_split, names, text_levels: Mapping[str, Any]) -> RunMetadata:
    data, t = job.args.data, job.args.training
    return RunMetadata(kind=job.kind, origin=job.origin, method=job.method, seed=t.seed, data=data.data_label,
                       synthetic=describe_data(data.data_dir, data.dataset_name)["synthetic"],
                       train_classes=sorted({names[i] for i in set(train_split["label"])}),
                       exclude_classes=list(data.exclude_classes or []), select_metric=job.select_metric,
                       text_levels=dict(text_levels), select_rule=job.select_rule,
                       **job.metadata_fields())


def write_outputs(job: Job, model: torch.nn.Module, out: Path, results: dict[str, Any], meta: RunMetadata) -> None:
    """Main process: the model (job.save), sdx_run.json, all_results.json, the model card."""
    t, m = job.args.training, job.args.model
    from sdx.data.source import format_text_levels  # heavy (datasets): a run only

    job.save(model, out, results)
    meta.write(out)
    outputs.write_all_results(out, results)
    outputs.write_model_card(out, model_name=out.resolve().name, base_model=m.model_name_or_path,
                             init="pretrained" if is_pretrained(job.origin) else "random", command_line=t.command_line,
                             text_levels=format_text_levels(meta.text_levels), **job.model_card(results))


def shards_parameters(accelerator) -> bool:
    """True under engines whose processes each hold a part of the parameters (FSDP, DeepSpeed ZeRO-3): the model
    object is then no complete copy, and a saved model is built from the gathered state dict."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and getattr(plugin, "zero_stage", 0) == 3


def model_to_save(accelerator, prepared: torch.nn.Module, template: Optional[torch.nn.Module], *,
                  fresh: bool = False) -> Optional[torch.nn.Module]:
    """The trained model as a plain module on the main process (None elsewhere). Every process must call it: the
    weights come from `accelerator.get_state_dict` (gathered under FSDP / ZeRO-3) into `template`, the model as
    built before `prepare` (copied first when `fresh`), or, without a template, the unwrapped model itself."""
    state = accelerator.get_state_dict(prepared)
    if not accelerator.is_main_process:
        return None
    if template is None:
        return accelerator.unwrap_model(prepared)
    model = copy.deepcopy(template) if fresh else template
    model.load_state_dict(state)
    return model


def save_hook(job: Job, accelerator, out: Path, hub: outputs.HubPush, template):
    """`run_training`'s on_save for --hub_strategy every_save / checkpoint: the model as saved now (job.save of a
    fresh copy) in the output folder, then the upload."""
    def on_save(prepared, checkpoint: Path, step: int) -> None:
        model = model_to_save(accelerator, prepared, template, fresh=True)
        if accelerator.is_main_process:
            job.save(model, out, {})
            hub.on_save(checkpoint, step)
        accelerator.wait_for_everyone()

    return on_save


def train_fingerprint(split) -> str:
    """SHA-1 of the training rows in order (image names and labels): what a resume must find unchanged."""
    rows = json.dumps([list(split["image_name"]), [int(v) for v in split["label"]]])
    return hashlib.sha1(rows.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def locked_output_dir(accelerator, out: Path) -> Iterator[None]:
    """The main process holds the output dir's lock (outputs.output_lock) while the block runs; when another run
    holds it, every process raises the same RuntimeError (so no process waits at a barrier for a failed one)."""
    with contextlib.ExitStack() as stack:
        error = None
        if accelerator.is_main_process:
            try:
                stack.enter_context(outputs.output_lock(out))
            except RuntimeError as exc:
                error = str(exc)
        error = broadcast_object_list([error])[0]
        if error:
            raise RuntimeError(error)
        yield


def run_job(job: Job, step_callback: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Train as the job's arguments say and return the results written to all_results.json."""
    t = job.args.training
    out = outputs.check_output_dir(t)
    resolve_checkpoint(t.resume_from_checkpoint, out, warn=False)  # a bad checkpoint fails before the data is read
    hub = outputs.HubPush(t, out) if t.push_to_hub else None  # offline or no token: refused before any work
    accelerator = make_accelerator(t)
    with locked_output_dir(accelerator, out):
        return _run_locked(job, accelerator, out, step_callback, hub)


def _run_locked(job: Job, accelerator, out: Path, step_callback, hub: Optional[outputs.HubPush]) -> dict[str, Any]:
    from sdx.data.builder import class_names  # heavy (datasets, ~1 s): a run only, not --help
    from sdx.data.source import text_level_report  # heavy (datasets): a run only

    t = job.args.training
    if hub is not None and accelerator.is_main_process:
        hub.create_repo()  # the repo exists (or the token is refused) before the first step
    with accelerator.main_process_first():
        ds = job.load_data()
    splits = select_splits(ds, job)
    model = job.build_model(ds, splits)
    trainable, total = count_parameters(model)
    if not trainable:
        raise ValueError(f"method {job.method}: no trainable parameter")
    snapshots = hub is not None and hub.strategy != "end"
    template = copy.deepcopy(model) if accelerator.is_main_process and (
        snapshots or shards_parameters(accelerator)) else None
    train_loader = job.train_loader(splits["train"])
    loaders = {"validation": accelerator.prepare(job.eval_loader(splits["validation"], "validation"))}
    fingerprint = train_fingerprint(splits["train"])
    resume = resolve_checkpoint(t.resume_from_checkpoint, out, warn=False)
    if resume is not None:  # refused before run_args.json is rewritten
        check_order_settings(resume, read_training_state(resume),
                             order_settings(t, accelerator.num_processes, train_loader, fingerprint))
    outputs.start_output_dir(t, accelerator, job.args.flat())
    evaluate = None if t.eval_strategy == "no" else (
        lambda prepared: job.evaluate(accelerator, prepared, loaders["validation"]))
    result = run_training(t, accelerator, model, create_optimizer(t, model), train_loader,
                          compute_loss=job.compute_loss, evaluate=evaluate, select_metric=job.select_metric,
                          step_callback=step_callback, hparams=tracker_config(job.args.flat()),
                          data_fingerprint=fingerprint,
                          on_save=save_hook(job, accelerator, out, hub, template) if snapshots else None)
    if result.best_dir:
        load_best(accelerator, result.best_dir)
    if "test" in splits:
        loaders["test"] = accelerator.prepare(job.eval_loader(splits["test"], "test"))
    results = job.final_metrics(accelerator, result, result.model, loaders)
    results.update(job.training_summary(result))
    results.update(init=job.origin, method=job.method, select_metric=job.select_metric, select_rule=job.select_rule,
                   num_processes=accelerator.num_processes,
                   trainable_parameters=trainable, total_parameters=total,
                   splits={k: len(v) for k, v in splits.items()})
    model = model_to_save(accelerator, result.model, template)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        levels = text_level_report({"train": splits["train"]}, job.caption_level)
        with outputs.disk_full_named(out, "model and results"):
            write_outputs(job, model, out, results, run_metadata(job, splits["train"], class_names(ds), levels))
        if hub is not None:
            hub.at_end()
    accelerator.wait_for_everyone()
    return results
