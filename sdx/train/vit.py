"""Vision-only classification on SteelDefectX (train_vit.py's job, benchmark task 1), run by sdx.train.loop's loop.

What it does, top to bottom (`run_vit_training`)
-----------------------------------------------
1. Checks before any work: the output dir (`sdx.train.loop.check_output_dir`), the checkpoint to resume from.
2. Data: ``sdx.data.builder.load_steeldefectx(--data_dir, --dataset_config, validation_fraction, classes, ...)``;
   splits train / validation (stratified carve-out of the official train) / test (the official val split).
   Labels are the dataset's ClassLabel over ALL classes (25 for the release), so the head has one output per class
   even for classes without images. ``--max_train_samples`` / ``--max_eval_samples`` keep the first N examples after
   a seeded shuffle.
3. Model: ``--model_name_or_path`` (Hub id or local dir, any AutoModelForImageClassification, labels checked against
   the dataset's, see sdx.models) or a random ``--model_type`` (vit, resnet, convnext) of ``--model_size``
   (tiny, small, base) at ``--image_size`` px; ``--config_overrides`` edits a preset. ``--use_lora`` wraps it with
   peft LoRA (targets found from the model's own module names, head trained), ``--merge_lora`` saves merged weights.
   ``--gradient_checkpointing`` recomputes activations in the backward pass (transformers' non-reentrant
   checkpointing; ViT yes, ResNet / ConvNeXt do not support it and say so).
4. Preprocessing, on the fly (`datasets.Dataset.with_transform`): every image converted to RGB (the release mixes
   grayscale and RGB), then for training the optional augmentations, in this order, with torch's global RNG
   (seeded by ``--seed``; restored on resume): ``--random_resized_crop`` (area share uniform in
   [``--crop_scale`` min, max] of the image, aspect ratio log-uniform in [3/4, 4/3], up to 10 tries, else the
   central crop of the clamped ratio; resized to the model's input size, bicubic), ``--hflip`` and ``--vflip``
   (each with probability 0.5); then the model's image processor (resize, rescale, normalise).
   ``--class_balanced_sampling`` draws each epoch len(train) examples with replacement, each with probability
   proportional to 1 / (its class's training count), from a generator seeded with seed + epoch (identical on every
   process and after a resume).
5. Training: `sdx.train.loop.run_training` (cross-entropy of the model's head; evaluation on ``validation`` after
   every epoch; best epoch by validation ``accuracy``; checkpoints, resume, accumulation, precision, tracking).
6. Test: the best weights evaluated once on ``test``.
7. Outputs in ``--output_dir``: ``model.safetensors`` + ``config.json`` (id2label = dataset class names) +
   the processor (or, for LoRA without --merge_lora on a pretrained base, the adapter; a random base is always saved
   merged because no checkpoint to refer to exists), ``all_results.json``, ``per_class_test.json`` (and .md),
   ``confusion_matrix_test.png``, ``sdx_run.json`` (the run-metadata record of
   sdx.train.runmeta, read by eval_benchmark.py), ``README.md`` (model card); ``--push_to_hub`` uploads the folder.

Metrics (sdx.metrics, in percent): accuracy (Acc), mean_class_accuracy (the paper's mAcc: mean per-class recall over
the classes present in the split), macro_f1; evaluation predictions are gathered with
``Accelerator.gather_for_metrics`` so each sample counts once whatever the number of processes (``num_samples`` is
recorded for every evaluation).

``--recipe paper`` = the paper's vision-only recipe: SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 every
30 epochs, 100 epochs; explicit flags (command line or --config) override each value.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

RECIPES = {
    "paper": {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "learning_rate": 0.1,
              "lr_scheduler_type": "step", "lr_step_epochs": 30, "lr_gamma": 0.1, "num_train_epochs": 100,
              "warmup_steps": 0},
}


# ----------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from sdx.models.classifiers import MODEL_SIZES, MODEL_TYPES
    from sdx.train.loop import add_training_args

    p = argparse.ArgumentParser(
        prog="train_vit.py",
        description="Train a vision-only SteelDefectX classifier (ViT by default; ResNet / ConvNeXt too) with "
                    "accelerate: full fine-tuning or LoRA, checkpoints and resume, best-by-validation, test "
                    "Acc / mAcc / macro-F1, model card, Hub push. Run with `accelerate launch train_vit.py ...` "
                    "for several GPUs or nodes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data_dir", type=str, default=None,
                   help="folder in the official SteelDefectX layout, 'synthetic' for the embedded demo data, or "
                        "unset for the Hub release (needs network)")
    d.add_argument("--dataset_config", type=str, default="default",
                   help="builder config: default, t0, coarse, fine, attributes, structured (the caption column "
                        "is unused here)")
    d.add_argument("--validation_fraction", type=float, default=0.1,
                   help="share of the official train split carved out (stratified) for validation")
    d.add_argument("--classes", nargs="+", default=None, help="keep only these class names")
    d.add_argument("--exclude_classes", nargs="+", default=None, help="drop these class names")
    d.add_argument("--shots", type=int, default=None, help="k training images per class (few-shot)")
    d.add_argument("--cache_dir", type=str, default=None, help="datasets cache folder")
    d.add_argument("--on_error", choices=("raise", "skip"), default="raise",
                   help="bad raw files: raise naming the file, or skip and count them")
    m = p.add_argument_group("model")
    m.add_argument("--model_name_or_path", type=str, default=None,
                   help="Hub id or local dir of an AutoModelForImageClassification checkpoint; unset: random "
                        "--model_type/--model_size")
    m.add_argument("--model_type", choices=MODEL_TYPES, default="vit", help="architecture of a random model")
    m.add_argument("--model_size", choices=MODEL_SIZES, default="tiny", help="size preset of a random model")
    m.add_argument("--image_size", type=int, default=224, help="input size of a random model (px)")
    m.add_argument("--patch_size", type=int, default=16, help="ViT patch size of a random model")
    m.add_argument("--config_overrides", type=str, default=None,
                   help="edit the preset config: 'hidden_size=96,num_hidden_layers=4,depths=[2,2]'")
    m.add_argument("--ignore_mismatched_sizes", action="store_true",
                   help="re-initialise the classification head when the checkpoint's labels differ")
    m.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute activations in the backward pass (less memory, about 30%% more compute)")
    a = p.add_argument_group("augmentation and sampling")
    a.add_argument("--random_resized_crop", action="store_true", help="random resized crop (training only)")
    a.add_argument("--crop_scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"),
                   help="area share range of --random_resized_crop")
    a.add_argument("--hflip", action="store_true", help="random horizontal flip, p=0.5")
    a.add_argument("--vflip", action="store_true", help="random vertical flip, p=0.5")
    a.add_argument("--class_balanced_sampling", action="store_true",
                   help="sample training images with probability 1/class count (long-tailed classes)")
    lo = p.add_argument_group("LoRA")
    lo.add_argument("--use_lora", action="store_true", help="train LoRA adapters + the head instead of all weights")
    lo.add_argument("--lora_r", type=int, default=8, help="LoRA rank")
    lo.add_argument("--lora_alpha", type=int, default=16, help="LoRA alpha")
    lo.add_argument("--lora_dropout", type=float, default=0.0, help="LoRA dropout")
    lo.add_argument("--lora_target_modules", nargs="+", default=None,
                   help="module names to adapt (default: discovered: attention q/k/v projections, else Linear, "
                        "else Conv2d)")
    lo.add_argument("--merge_lora", action="store_true", help="save the LoRA weights merged into the model")
    e = p.add_argument_group("evaluation")
    e.add_argument("--metric_for_best_model", choices=("accuracy", "mean_class_accuracy", "macro_f1"),
                   default="accuracy", help="validation metric that selects the best epoch")
    e.add_argument("--skip_test", action="store_true", help="do not evaluate the test split at the end")
    add_training_args(p, recipes=RECIPES, learning_rate=5e-4, num_train_epochs=10,
                      per_device_train_batch_size=32, weight_decay=0.05)
    return p


def parse_vit_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from sdx.train.loop import parse_args

    return parse_args(build_parser(), argv, recipes=RECIPES)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def random_resized_crop(img, size: tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random area/aspect crop of a PIL image resized to `size` (h, w); torch's global RNG (module docstring)."""
    from PIL import Image

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
    """Batch transform for `Dataset.with_transform`: RGB, optional augmentation, the processor; -> pixel_values,
    labels. Picklable (data-loader workers)."""

    def __init__(self, processor, train: bool, *, random_crop: bool = False, crop_scale=(0.08, 1.0),
                 hflip: bool = False, vflip: bool = False):
        from sdx.models.classifiers import processor_image_size

        self.processor = processor
        self.train = train
        self.random_crop, self.crop_scale, self.hflip, self.vflip = random_crop, tuple(crop_scale), hflip, vflip
        self.size = processor_image_size(processor)

    def augment(self, img):
        from PIL import Image

        if self.random_crop:
            img = random_resized_crop(img, self.size, self.crop_scale)
        if self.hflip and float(torch.rand(1)) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.vflip and float(torch.rand(1)) < 0.5:
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


def load_data(args: argparse.Namespace):
    """The DatasetDict of `args` (module docstring, step 2), images and labels only."""
    from sdx.data.builder import load_steeldefectx

    overrides: dict[str, Any] = {"validation_fraction": args.validation_fraction, "on_error": args.on_error,
                                 "with_masks": False}
    for key in ("classes", "exclude_classes", "shots"):
        if getattr(args, key, None):
            overrides[key] = getattr(args, key)
    ds = load_steeldefectx(args.data_dir, args.dataset_config, cache_dir=args.cache_dir, **overrides)
    return ds


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, names: Sequence[str]):
    """(model, processor, origin) for `args`; origin is "pretrained:<path>" or "random-init"."""
    from sdx.models.classifiers import apply_lora, build_image_classifier, load_image_classifier, load_or_build_image_processor

    if args.model_name_or_path:
        model = load_image_classifier(args.model_name_or_path, names,
                                      ignore_mismatched_sizes=args.ignore_mismatched_sizes)
        size = getattr(model.config, "image_size", args.image_size)
        processor, _ = load_or_build_image_processor(args.model_name_or_path, size if isinstance(size, int)
                                                     else args.image_size)
        origin = f"pretrained:{args.model_name_or_path}"
    else:
        model = build_image_classifier(args.model_type, args.model_size, names, image_size=args.image_size,
                                       patch_size=args.patch_size, config_overrides=args.config_overrides)
        processor, _ = load_or_build_image_processor(None, args.image_size)
        origin = "random-init"
    if getattr(args, "gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
    if args.use_lora:
        model = apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                           target_modules=args.lora_target_modules)
    return model, processor, origin


def enable_gradient_checkpointing(model) -> None:
    """transformers' gradient checkpointing (non-reentrant, so frozen inputs under LoRA still get gradients)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"--gradient_checkpointing: {type(model).__name__} does not support gradient "
                         "checkpointing")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


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
    from sdx import metrics as M

    out = {"accuracy": M.accuracy(y, p), "mean_class_accuracy": M.mean_class_accuracy(y, p),
           "macro_f1": M.macro_f1(y, p), "num_samples": int(len(y))}
    if loss is not None:
        out["loss"] = loss
    return out


def _per_class_markdown(rows: list[dict]) -> str:
    lines = ["| class | support | correct | recall % | precision % | F1 % |", "|---|---|---|---|---|---|"]
    for r in rows:
        rec = "-" if r["recall"] is None else f"{r['recall']:.2f}"
        lines.append(f"| {r['class']} | {r['support']} | {r['correct']} | {rec} | {r['precision']:.2f} | "
                     f"{r['f1']:.2f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def _save_final(args, model, processor, out: Path, origin: str) -> str:
    """Write the final weights; returns what was saved ("full", "lora-merged" or "lora-adapter")."""
    kind = "full"
    if args.use_lora:
        if args.merge_lora or origin == "random-init":
            if not args.merge_lora:
                logger.warning("LoRA on a random initialisation: no base checkpoint to refer to, saving merged "
                               "weights")
            model = model.merge_and_unload()
            kind = "lora-merged"
        else:
            kind = "lora-adapter"
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    return kind


def run_vit_training(args: argparse.Namespace, step_callback: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train as `args` says (module docstring) and return the results written to all_results.json."""
    from sdx.data.builder import class_names
    from sdx.data.synthetic import is_synthetic_dir
    from sdx.models.classifiers import count_parameters
    from sdx import metrics as M
    from sdx.report.plots import plot_confusion
    from sdx.train.runmeta import RunMetadata
    from sdx.train.loop import (check_output_dir, create_optimizer, limit_samples, load_best, make_accelerator,
                              push_output_dir,
                              resolve_checkpoint, run_training, start_output_dir, write_all_results,
                              write_model_card)

    out = check_output_dir(args)
    resolve_checkpoint(args.resume_from_checkpoint, out)  # a bad checkpoint fails before the data is read
    accelerator = make_accelerator(args)
    with accelerator.main_process_first():
        ds = load_data(args)
    names = class_names(ds)
    for split in ("train", "validation"):
        if split not in ds or len(ds[split]) == 0:
            raise ValueError(f"the {split} split is empty (data_dir {args.data_dir}, classes {args.classes}, "
                             f"validation_fraction {args.validation_fraction})")
    splits = {"train": limit_samples(ds["train"], args.max_train_samples, args.seed),
              "validation": limit_samples(ds["validation"], args.max_eval_samples, args.seed)}
    if not args.skip_test and "test" in ds and len(ds["test"]):
        splits["test"] = limit_samples(ds["test"], args.max_eval_samples, args.seed)
    splits = {k: v.select_columns(["image", "label"]) for k, v in splits.items()}

    model, processor, origin = build_model(args, names)  # label / LoRA-target errors raise here, before any step
    trainable, total = count_parameters(model)
    start_output_dir(args, accelerator)

    train_tf = ImageTransform(processor, True, random_crop=args.random_resized_crop, crop_scale=args.crop_scale,
                              hflip=args.hflip, vflip=args.vflip)
    eval_tf = ImageTransform(processor, False)
    train_set = splits["train"].with_transform(train_tf)
    sampler = ClassBalancedSampler(splits["train"]["label"], args.seed) if args.class_balanced_sampling else None
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.per_device_train_batch_size, shuffle=sampler is None, sampler=sampler,
        collate_fn=collate, num_workers=args.dataloader_num_workers)

    def eval_loader(split):
        return accelerator.prepare(torch.utils.data.DataLoader(
            split.with_transform(eval_tf), batch_size=args.per_device_eval_batch_size, shuffle=False,
            collate_fn=collate, num_workers=args.dataloader_num_workers))

    val_loader = eval_loader(splits["validation"])

    def evaluate(prepared) -> dict[str, float]:
        return classification_scores(*predict(accelerator, prepared, val_loader))

    optimizer = create_optimizer(args, model)
    result = run_training(args, accelerator, model, optimizer, train_loader,
                          compute_loss=lambda m, b: m(**b).loss, evaluate=evaluate,
                          select_metric=args.metric_for_best_model, step_callback=step_callback)
    model = load_best(accelerator, result.model, result.best_dir) if result.best_dir else \
        accelerator.unwrap_model(result.model)
    prepared = result.model  # shares its parameters with `model`

    summary = result.summary()
    best_entry = next((h for h in summary["history"] if h["epoch"] == result.best_epoch), {})
    results: dict[str, Any] = {f"validation_{k[5:]}": v for k, v in best_entry.items() if k.startswith("eval_")}
    test_rows = None
    if "test" in splits:
        y, p, loss = predict(accelerator, prepared, eval_loader(splits["test"]))
        results.update({f"test_{k}": v for k, v in classification_scores(y, p, loss).items()})
        if accelerator.is_main_process:
            present = sorted(set(np.unique(y).tolist()) | set(np.unique(p).tolist()))
            test_rows = M.per_class_table(y, p, present, names)
    results.update({
        "best_epoch": result.best_epoch, "best_step": result.best_step, "completed_steps": result.completed_steps,
        "num_train_epochs": result.num_train_epochs, "train_runtime": result.train_runtime,
        "train_samples_per_second": summary["train_samples_per_second"], "resumed_from": result.resumed_from,
        "history": summary["history"], "init": origin, "method": "lora" if args.use_lora else "full",
        "model_type": (getattr(model, "config", None).model_type if hasattr(model, "config") else None),
        "trainable_parameters": trainable, "total_parameters": total, "num_processes": accelerator.num_processes,
        "splits": {k: len(v) for k, v in splits.items()}, "recipe": args.recipe, "class_names": list(names),
    })
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        saved = _save_final(args, model, processor, out, origin)
        results["saved"] = saved
        if test_rows is not None:
            results["test_per_class"] = test_rows
            (out / "per_class_test.json").write_text(json.dumps(test_rows, indent=2) + "\n")
            (out / "per_class_test.md").write_text(_per_class_markdown(test_rows))
            shown = sorted(set(np.unique(y).tolist()) | set(np.unique(p).tolist()))
            plot_confusion({"labels": [names[i] for i in shown], "matrix": M.confusion(y, p, shown).tolist()},
                           out / "confusion_matrix_test.png", f"test confusion (Acc {results['test_accuracy']:.2f}, "
                           f"mAcc {results['test_mean_class_accuracy']:.2f})")
        RunMetadata(kind="image-classifier", origin=origin, method=results["method"], seed=args.seed,
                    data=str(args.data_dir), synthetic=is_synthetic_dir(args.data_dir),
                    dataset_config=args.dataset_config,
                    train_classes=sorted({names[i] for i in set(splits["train"]["label"])}),
                    exclude_classes=list(args.exclude_classes or []),
                    select_metric=args.metric_for_best_model).write(out)
        write_all_results(out, results)
        metric_keys = ("accuracy", "mean_class_accuracy", "macro_f1", "num_samples")
        write_model_card(
            out, model_name=out.resolve().name, task="image-classification",
            base_model=args.model_name_or_path, init="pretrained" if args.model_name_or_path else "random",
            dataset={"name": "SteelDefectX", "data_dir": str(args.data_dir), "config": args.dataset_config,
                     "splits": results["splits"],
                     "validation": f"stratified {args.validation_fraction:.0%} carve-out of the official train "
                                   "split (selects the best epoch)",
                     "test": "the official val split (what the paper reports)"},
            metrics={f"{s}_{k}": results[f"{s}_{k}"] for s in ("validation", "test") for k in metric_keys
                     if f"{s}_{k}" in results},
            hyperparameters={k: getattr(args, k) for k in (
                "recipe", "model_type", "model_size", "image_size", "use_lora", "lora_r", "optimizer",
                "learning_rate", "weight_decay", "lr_scheduler_type", "num_train_epochs", "max_train_steps",
                "per_device_train_batch_size", "gradient_accumulation_steps", "mixed_precision",
                "random_resized_crop", "hflip", "vflip", "class_balanced_sampling", "seed")},
            command_line=args.command_line, tags=["image-classification", results["method"]],
            extra_sections={"Initial weights and method": (
                f"- initial weights: {origin}\n- method: {results['method']} ({saved})\n"
                f"- trainable parameters: {trainable:,} of {total:,}\n"
                f"- best epoch (by validation {args.metric_for_best_model}): {result.best_epoch}")}
            | ({"Per-class test results": _per_class_markdown(test_rows)} if test_rows else {}))
        if args.push_to_hub:
            push_output_dir(out, args.hub_model_id, token=args.hub_token, private=args.hub_private)
    accelerator.wait_for_everyone()
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """train_vit.py: parse the arguments and train."""
    return run_vit_training(parse_vit_args(argv))
