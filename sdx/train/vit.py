"""Vision-only classification on SteelDefectX (train_vit.py, benchmark task 1): its arguments, data path, model and
the `Job` hooks the shared skeleton (sdx.train.job) runs. What it does and writes: docs/training.md."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from sdx import metrics as M
from sdx.data.naming import describe_data
from sdx.models.classifiers import (
    apply_lora,
    build_image_classifier,
    convert_to_rgb,
    load_image_classifier,
    load_or_build_image_processor,
    processor_image_size,
)
from sdx.report.markdown import md_cell
from sdx.report.plots import SYNTHETIC_TAG, plot_confusion
from sdx.train.args import (
    DataArguments,
    JobArguments,
    TrainingArguments,
    arg_help,
    check_ranges,
    parse_job_args,
    with_defaults,
)
from sdx.train.job import Job, run_job
from sdx.train.pixels import CachedPixels, PixelBudget, draw_flips
from sdx.train.runmeta import weights_origin

logger = logging.getLogger(__name__)

RECIPES = {
    "paper": {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "learning_rate": 0.1,
              "lr_scheduler_type": "step", "lr_step_epochs": 30, "lr_gamma": 0.1, "num_train_epochs": 100,
              "warmup_steps": 0},
}
CARD_HYPERPARAMETERS = (
    "recipe", "model_type", "model_size", "image_size", "use_lora", "lora_r", "optimizer", "learning_rate",
    "weight_decay", "lr_scheduler_type", "num_train_epochs", "max_train_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "mixed_precision", "eval_strategy", "random_resized_crop", "hflip", "vflip",
    "class_balanced_sampling", "seed")
DESCRIPTION = (
    "Train a vision-only SteelDefectX classifier (ViT by default; ResNet / ConvNeXt too) with accelerate: full "
    "fine-tuning or LoRA, checkpoints and resume, best-by-validation, test Acc / mAcc / macro-F1, model card, Hub "
    "push. Run with `accelerate launch train_vit.py ...` for several GPUs or nodes.")


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class VitDataArguments(DataArguments):
    """Data, augmentation and sampling of train_vit.py."""

    _argument_group_name = "data, augmentation and sampling"

    random_resized_crop: bool = field(default=False, metadata=arg_help("random resized crop (training only)"))
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0], metadata=arg_help(
        "area share range of --random_resized_crop: MIN MAX", metavar="SHARE"))
    hflip: bool = field(default=False, metadata=arg_help("random horizontal flip, p=0.5"))
    vflip: bool = field(default=False, metadata=arg_help("random vertical flip, p=0.5"))
    class_balanced_sampling: bool = field(default=False, metadata=arg_help(
        "sample training images with probability 1/class count (long-tailed classes)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"--crop_scale takes MIN MAX with 0 < MIN <= MAX <= 1, got {self.crop_scale}")


@dataclass
class VitModelArguments:
    """Model, LoRA and evaluation of train_vit.py."""

    _argument_group_name = "model, LoRA and evaluation"

    model_name_or_path: Optional[str] = field(default=None, metadata=arg_help(
        "Hub id or local dir of an AutoModelForImageClassification checkpoint; unset: a random "
        "--model_type/--model_size"))
    model_type: Literal["vit", "resnet", "convnext"] = field(default="vit", metadata=arg_help(
        "architecture of a random model"))
    model_size: Literal["tiny", "small", "base"] = field(default="tiny", metadata=arg_help(
        "size preset of a random model"))
    image_size: int = field(default=224, metadata=arg_help("input size of a random model (px)"))
    patch_size: int = field(default=16, metadata=arg_help("ViT patch size of a random model"))
    config_overrides: Optional[str] = field(default=None, metadata=arg_help(
        "edit the preset config: 'hidden_size=96,num_hidden_layers=4,depths=[2,2]'"))
    ignore_mismatched_sizes: bool = field(default=False, metadata=arg_help(
        "re-initialise the classification head when the checkpoint's labels differ"))
    gradient_checkpointing: bool = field(default=False, metadata=arg_help(
        "recompute activations in the backward pass (less memory, about 30%% more compute)"))
    use_lora: bool = field(default=False, metadata=arg_help("train LoRA adapters + the head instead of all weights"))
    lora_r: int = field(default=8, metadata=arg_help("LoRA rank"))
    lora_alpha: int = field(default=16, metadata=arg_help("LoRA alpha"))
    lora_dropout: float = field(default=0.0, metadata=arg_help("LoRA dropout"))
    lora_target_modules: Optional[list[str]] = field(default=None, metadata=arg_help(
        "module names to adapt (default: discovered: attention q/k/v projections, else Linear, else Conv2d)"))
    merge_lora: bool = field(default=False, metadata=arg_help("save the LoRA weights merged into the model"))
    metric_for_best_model: Literal["accuracy", "mean_class_accuracy", "macro_f1"] = field(
        default="accuracy", metadata=arg_help("validation metric that selects the best epoch"))
    skip_test: bool = field(default=False, metadata=arg_help("do not evaluate the test split at the end"))

    def __post_init__(self) -> None:
        check_ranges(self, {"image_size": ">= 1", "patch_size": ">= 1", "lora_r": ">= 1", "lora_dropout": "in [0, 1)"})


VitTrainingArguments = with_defaults(TrainingArguments, "VitTrainingArguments", learning_rate=5e-4,
                                     num_train_epochs=10, weight_decay=0.05)


def parse_vit_args(argv: Sequence[str] | None = None) -> JobArguments:
    """train_vit.py's arguments: defaults < --recipe < --config < command line (sdx.train.args)."""
    data, model, training = parse_job_args((VitDataArguments, VitModelArguments, VitTrainingArguments), argv,
                                           prog="train_vit.py", description=DESCRIPTION, recipes=RECIPES)
    return JobArguments(data=data, model=model, training=training)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def random_resized_crop(img, size: tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random area/aspect crop of a PIL image resized to `size` (h, w), drawn from torch's global RNG.

    torchvision's RandomResizedCrop does this, but torchvision does not load beside this CPU torch (its compiled
    ops fail to register), so the same rule is written here: area share uniform in `scale`, log-uniform aspect in
    `ratio`, 10 tries, else the central crop of the clamped ratio; bicubic resize.
    """
    w, h = img.size
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(1).uniform_(*log_r)))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,)))
            left = int(torch.randint(0, w - cw + 1, (1,)))
            break
    else:  # central crop with the ratio clamped into range
        in_ratio = w / h
        if in_ratio < ratio[0]:
            cw, ch = w, int(round(w / ratio[0]))
        elif in_ratio > ratio[1]:
            ch, cw = h, int(round(h * ratio[1]))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    return img.resize((size[1], size[0]), Image.BICUBIC, box=(left, top, left + cw, top + ch))


class ImageTransform:
    """Batch transform for `Dataset.with_transform`: RGB, optional augmentation (training), the processor;
    -> pixel_values, labels. Picklable (data-loader workers)."""

    def __init__(self, processor, train: bool, *, random_crop: bool = False, crop_scale=(0.08, 1.0),
                 hflip: bool = False, vflip: bool = False):
        self.processor = processor
        self.train = train
        self.random_crop, self.crop_scale, self.hflip, self.vflip = random_crop, tuple(crop_scale), hflip, vflip
        self.size = processor_image_size(processor)

    def augment(self, img):
        if self.random_crop:
            img = random_resized_crop(img, self.size, self.crop_scale)
        h, v = draw_flips(self.hflip, self.vflip)
        if h:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if v:
            img = img.transpose(Image.FLIP_TOP_BOTTOM)
        return img

    def __call__(self, batch: Mapping[str, list]) -> dict[str, Any]:
        images = [im.convert("RGB") for im in batch["image"]]
        if self.train:
            images = [self.augment(im) for im in images]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": torch.as_tensor(batch["label"], dtype=torch.long)}


def collate(examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.stack([torch.as_tensor(e["labels"]) for e in examples])}


class ClassBalancedSampler(torch.utils.data.Sampler):
    """len(labels) indices drawn with replacement, p(i) proportional to 1/count(label_i); seeded per epoch."""

    def __init__(self, labels: Sequence[int], seed: int):
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.multinomial(self.weights, len(self.weights), replacement=True, generator=g).tolist()


def load_data(data: VitDataArguments):
    """The DatasetDict of the data arguments (images and labels; no masks)."""
    from sdx.data.source import load_rows  # heavy (datasets, ~1 s): a run only, not --help

    overrides: dict[str, Any] = {"validation_fraction": data.validation_fraction, "on_error": data.on_error,
                                 "with_masks": False}
    for key in ("classes", "exclude_classes", "shots"):
        if getattr(data, key):
            overrides[key] = getattr(data, key)
    return load_rows(data.data_dir, data, data.dataset_config_name, cache_dir=data.cache_dir, **overrides)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def build_model(m: VitModelArguments, names: Sequence[str]):
    """(model, processor, origin); origin as sdx.train.runmeta.weights_origin says."""
    if m.model_name_or_path:
        model = load_image_classifier(m.model_name_or_path, names, ignore_mismatched_sizes=m.ignore_mismatched_sizes)
        size = getattr(model.config, "image_size", m.image_size)
        processor, _ = load_or_build_image_processor(m.model_name_or_path,
                                                     size if isinstance(size, int) else m.image_size)
    else:
        model = build_image_classifier(m.model_type, m.model_size, names, image_size=m.image_size,
                                       patch_size=m.patch_size, config_overrides=m.config_overrides)
        processor, _ = load_or_build_image_processor(None, m.image_size)
    convert_to_rgb(processor, model.config)
    origin = weights_origin(m.model_name_or_path)
    if m.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if m.use_lora:
        model = apply_lora(model, r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout,
                           target_modules=m.lora_target_modules)
    return model, processor, origin


def enable_activation_checkpointing(model) -> None:
    """transformers' activation (gradient) checkpointing, non-reentrant so frozen inputs under LoRA still get
    gradients."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"--gradient_checkpointing: {type(model).__name__} does not support gradient "
                         "checkpointing")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(accelerator, model, loader) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, predictions, mean loss) over a prepared loader, each sample once (gather_for_metrics)."""
    model.eval()
    labels, preds, losses = [], [], []
    for batch in loader:
        logits = model(pixel_values=batch["pixel_values"]).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="none")
        p, y, l_ = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"], loss))
        labels.append(y.cpu())
        preds.append(p.cpu())
        losses.append(l_.float().cpu())
    y = torch.cat(labels).numpy()
    return y, torch.cat(preds).numpy(), float(torch.cat(losses).mean()) if losses else float("nan")


def classification_scores(y: np.ndarray, p: np.ndarray, loss: float | None = None) -> dict[str, float]:
    """accuracy, mean_class_accuracy (mAcc), macro_f1 (percent), num_samples (and loss)."""
    out = {"accuracy": M.accuracy(y, p), "mean_class_accuracy": M.mean_class_accuracy(y, p),
           "macro_f1": M.macro_f1(y, p), "num_samples": int(len(y))}
    if loss is not None:
        out["loss"] = loss
    return out


def per_class_markdown(rows: list[dict]) -> str:
    lines = ["| class | support | correct | recall % | precision % | F1 % |", "|---|---|---|---|---|---|"]
    for r in rows:
        rec = "-" if r["recall"] is None else f"{r['recall']:.2f}"
        lines.append(f"| {md_cell(r['class'])} | {r['support']} | {r['correct']} | {rec} | {r['precision']:.2f} | "
                     f"{r['f1']:.2f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------------------------


class VitJob(Job):
    """train_vit.py's hooks of the shared skeleton (sdx.train.job.run_job)."""

    kind = "image-classifier"

    def __init__(self, args: JobArguments):
        super().__init__(args)
        self.wants_test = not args.model.skip_test
        self.names: list[str] = []
        self.processor = None
        self.model_type: Optional[str] = None
        self.pixels = PixelBudget(args.data.pixel_cache_mb)
        self.test_predictions: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def method(self) -> str:
        return "lora" if self.args.model.use_lora else "full"

    def load_data(self):
        return load_data(self.args.data)

    def build_model(self, ds, splits):
        from sdx.data.builder import class_names  # heavy (datasets): a run only

        self.names = class_names(ds)
        model, self.processor, self.origin = build_model(self.args.model, self.names)
        self.model_type = getattr(getattr(model, "config", None), "model_type", None)
        return model

    def train_loader(self, split):
        """Cached pixel values unless --random_resized_crop applies (flips act on the cached values), when they
        fit; else the per-batch path."""
        d, t = self.args.data, self.args.training
        pixels = None if d.random_resized_crop else self.pixels.cache(split, self.processor, "train images")
        sampler = ClassBalancedSampler(split["label"], t.seed) if d.class_balanced_sampling else None
        return torch.utils.data.DataLoader(
            self._dataset(split, pixels, train=True), sampler=sampler, batch_size=t.per_device_train_batch_size,
            shuffle=sampler is None, collate_fn=collate, num_workers=t.dataloader_num_workers)

    def eval_loader(self, split, name):
        t = self.args.training
        pixels = self.pixels.cache(split, self.processor, "validation images") if name == "validation" else None
        return torch.utils.data.DataLoader(
            self._dataset(split, pixels, train=False), batch_size=t.per_device_eval_batch_size, shuffle=False,
            collate_fn=collate, num_workers=t.dataloader_num_workers)

    def _dataset(self, split, pixels: Optional[torch.Tensor], train: bool):
        d = self.args.data
        if pixels is not None:
            return CachedPixels(pixels, split["label"], hflip=train and d.hflip, vflip=train and d.vflip)
        transform = ImageTransform(self.processor, train, random_crop=d.random_resized_crop, crop_scale=d.crop_scale,
                                   hflip=d.hflip, vflip=d.vflip)
        return split.select_columns(["image", "label"]).with_transform(transform)

    def compute_loss(self, model, batch):
        return model(**batch).loss

    def evaluate(self, accelerator, model, loader):
        return classification_scores(*predict(accelerator, model, loader))

    def final_metrics(self, accelerator, result, model, loaders):
        """Validation: the kept epoch's entry of the history (evaluated now under --eval_strategy no); test:
        evaluated once with the kept weights."""
        best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
        scores = {k[5:]: v for k, v in best.items() if k.startswith("eval_")}
        if not scores:
            scores = self.evaluate(accelerator, result.model, loaders["validation"])
        out = {f"validation_{k}": v for k, v in scores.items()}
        if "test" in loaders:
            y, p, loss = predict(accelerator, result.model, loaders["test"])
            out.update({f"test_{k}": v for k, v in classification_scores(y, p, loss).items()})
            self.test_predictions = (y, p)
        return out

    def training_summary(self, result):
        summary = result.summary()
        return {"best_epoch": result.best_epoch, "best_step": result.best_step,
                "completed_steps": result.completed_steps, "num_train_epochs": result.num_train_epochs,
                "train_runtime": result.train_runtime,
                "train_samples_per_second": summary["train_samples_per_second"],
                "resumed_from": result.resumed_from, "history": summary["history"], "model_type": self.model_type,
                "recipe": self.args.training.recipe, "class_names": list(self.names)}

    def save(self, model, out, results):
        results["saved"] = save_final(self.args.model, model, self.processor, out)
        if self.test_predictions is not None:
            d = self.args.data
            write_test_report(out, *self.test_predictions, self.names, results,
                              synthetic=describe_data(d.data_dir, d.dataset_name)["synthetic"])

    def metadata_fields(self):
        return {"dataset_config": self.args.data.dataset_config_name or "default"}

    def model_card(self, results):
        return vit_model_card(self.args, results, self.origin)


def save_final(m: VitModelArguments, model, processor, out: Path) -> str:
    """Write the final weights and the processor; returns what was saved ("full", "lora-merged" or
    "lora-adapter"). LoRA on a model built here is always merged: there is no base checkpoint to refer to."""
    kind = "full"
    if m.use_lora:
        if m.merge_lora or not m.model_name_or_path:
            if not m.merge_lora:
                logger.warning("LoRA on a random initialisation: no base checkpoint to refer to, saving merged "
                               "weights")
            model = model.merge_and_unload()
            kind = "lora-merged"
        else:
            kind = "lora-adapter"
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    return kind


def write_test_report(out: Path, y: np.ndarray, p: np.ndarray, names: Sequence[str], results: dict,
                      synthetic: bool = False) -> None:
    """per_class_test.json / .md and confusion_matrix_test.png (its title tagged on synthetic data); the per-class
    rows go into `results` too."""
    shown = sorted(set(np.unique(y).tolist()) | set(np.unique(p).tolist()))
    rows = M.per_class_table(y, p, shown, names)
    results["test_per_class"] = rows
    (out / "per_class_test.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "per_class_test.md").write_text(per_class_markdown(rows))
    plot_confusion({"labels": [names[i] for i in shown], "matrix": M.confusion(y, p, shown).tolist()},
                   out / "confusion_matrix_test.png", f"test confusion (Acc {results['test_accuracy']:.2f}, "
                   f"mAcc {results['test_mean_class_accuracy']:.2f}){SYNTHETIC_TAG if synthetic else ''}")


def split_texts(d: VitDataArguments) -> dict[str, str]:
    """What the validation and test splits are, for the model card."""
    if d.dataset_name:
        return {"validation": f"the dataset's `{d.validation_split_name}` split, or where it has none a stratified "
                              f"{d.validation_fraction:.0%} carve-out of `{d.train_split_name}` (selects the best "
                              "epoch)",
                "test": f"the dataset's `{d.test_split_name}` split"}
    return {"validation": f"stratified {d.validation_fraction:.0%} carve-out of the official train split (selects the "
                          "best epoch)", "test": "the official val split (what the paper reports)"}


def vit_model_card(args: JobArguments, results: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """The ViT-specific `write_model_card` arguments."""
    d, m, t = args.data, args.model, args.training
    keys = ("accuracy", "mean_class_accuracy", "macro_f1")   # sample counts are in the splits, not metrics
    chosen = (f"by validation {m.metric_for_best_model}" if t.eval_strategy == "epoch"
              else "the last epoch (--eval_strategy no)")
    flat = args.flat()
    hyper = {k: flat[k] for k in CARD_HYPERPARAMETERS}
    sections = {"Initial weights and method": (
        f"- initial weights: {origin}\n- method: {results['method']} ({results['saved']})\n"
        f"- trainable parameters: {results['trainable_parameters']:,} of {results['total_parameters']:,}\n"
        f"- kept epoch ({chosen}): {results['best_epoch']}")}
    if results.get("test_per_class"):
        sections["Per-class test results"] = per_class_markdown(results["test_per_class"])
    return dict(task="image-classification", tags=["image-classification", results["method"]],
                dataset={**describe_data(d.data_dir, d.dataset_name), "config": d.dataset_config_name or "default",
                         "splits": results["splits"],
                         **split_texts(d)},
                metrics={f"{s}_{k}": results[f"{s}_{k}"] for s in ("validation", "test") for k in keys
                         if f"{s}_{k}" in results},
                hyperparameters=hyper, extra_sections=sections)


def run_vit_training(args: JobArguments, step_callback: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Train as `args` says and return the results written to all_results.json."""
    return run_job(VitJob(args), step_callback)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """train_vit.py: parse the arguments and train."""
    return run_vit_training(parse_vit_args(argv))
