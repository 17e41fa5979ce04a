#!/usr/bin/env python
"""Our trainers against a plain `transformers.Trainer` on the same work, timed in one run, with the ratios.

``vit``         train_vit.py's job (`sdx.train.vit.main`) and a plain `Trainer` run of the same random-init model
                folder on the same data: the real fixture (or a seeded subsample, ``--max_train_samples``), batch
                32, AdamW lr 1e-3 (linear schedule, no weight decay, no gradient clipping), seed 42, one process,
                ``--epochs`` epochs. With ``--eval_strategy no`` neither evaluates per epoch; with ``epoch`` both
                evaluate the validation split after every epoch and keep the best epoch (the Trainer through
                ``save_strategy="epoch"`` and ``load_best_model_at_end``). Both then evaluate validation and test
                once and save the model. Goal: ours / Trainer <= 0.95.
``clip``        train_clip.py's job and a plain `Trainer` of the same tiny CLIP folder and the same class-aware loss
                (the `Trainer` gets `ClipTrainModule` wrapped to return ``{"loss": ...}``) on T2 captions of the same
                data; the `Trainer` processes images per batch (as the transformers example does), ours keeps its
                pixel cache. No per-epoch evaluation in either; both then run the same zero-shot evaluation of
                validation and test (T0 and T1 prompts) and save the model.
``optimizers``  one optimizer step of AdamW, Adam and SGD (momentum) with each torch kernel (for-loop, foreach,
                fused) on the ViT's parameters: what ``--optimizer_implementation auto`` is chosen from.

Each comparison alternates the two runs (ours, Trainer, Trainer, ours, ...) ``--rounds`` times in one process and
reports the median of each and the ratio, the per-round ratios (how noisy the shared machine was) and, for the
trainers, both the whole run (data loading to saved model) and the training loop alone (``train_runtime`` of
each). Usage::

    OMP_NUM_THREADS=2 python bench/bench_trainers.py vit --epochs 3 --rounds 2 [--max_train_samples 640]
    python bench/bench_trainers.py all
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

from sdx.data.builder import load_steeldefectx
from sdx.data.levels import CLASS_NAMES
from sdx.models.classifiers import build_image_classifier, load_or_build_image_processor
from sdx.models.clip import build_clip_from_scratch, load_clip
from sdx.train import clip as train_clip
from sdx.train import vit as train_vit

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "steeldefectx-real-subset"
VIT_OVERRIDES = "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256"
SEED, BATCH, LR = 42, 32, 1e-3


def _median_ratio(ours: list[float], theirs: list[float]) -> dict:
    return {"ours_s": [round(x, 2) for x in ours], "trainer_s": [round(x, 2) for x in theirs],
            "ratio": statistics.median(ours) / statistics.median(theirs),
            "round_ratios": [round(a / b, 3) for a, b in zip(ours, theirs)]}


def alternate(rounds: int, ours, theirs) -> tuple[list[dict], list[dict]]:
    """Run ours(n) and theirs(n) alternately (ABBA...), each returning {"total_s", "train_s", ...}, after one short
    untimed run of each (n=64 training images, 1 epoch: the first run in a process pays imports, kernel set-up and
    the datasets cache)."""
    ours(warmup=True), theirs(warmup=True)
    a, b = [], []
    for r in range(rounds):
        order = ((a, ours), (b, theirs)) if r % 2 == 0 else ((b, theirs), (a, ours))
        for sink, fn in order:
            sink.append(fn())
            print(json.dumps({"round": r, "run": "ours" if sink is a else "trainer", **sink[-1]}), flush=True)
    return a, b


def _subsample(split, n, seed=SEED):
    return split if n is None or n >= len(split) else split.shuffle(seed=seed).select(range(n))


# ----------------------------------------------------------------------------------------------------------------
# ViT
# ----------------------------------------------------------------------------------------------------------------


def save_vit(folder: Path, image_size: int = 64) -> Path:
    """The random-init model folder both ViT runs start from (the real-data baseline's ViT, 25 classes)."""
    torch.manual_seed(0)
    build_image_classifier("vit", "tiny", CLASS_NAMES, image_size=image_size, patch_size=8,
                           config_overrides=VIT_OVERRIDES).save_pretrained(folder)
    load_or_build_image_processor(None, image_size)[0].save_pretrained(folder)
    return folder


def ours_vit(model_dir, data_dir, epochs, eval_strategy, max_train_samples, tmp) -> dict:
    argv = ["--data_dir", str(data_dir), "--model_name_or_path", str(model_dir), "--output_dir",
            tempfile.mkdtemp(dir=tmp), "--per_device_train_batch_size", str(BATCH), "--per_device_eval_batch_size",
            "64", "--learning_rate", str(LR), "--weight_decay", "0", "--num_train_epochs", str(epochs), "--seed",
            str(SEED), "--eval_strategy", eval_strategy]
    if max_train_samples:
        argv += ["--max_train_samples", str(max_train_samples)]
    t0 = time.perf_counter()
    res = train_vit.main(argv)
    return {"total_s": time.perf_counter() - t0, "train_s": res["train_runtime"],
            "test_accuracy": res["test_accuracy"], "steps": res["completed_steps"]}


def trainer_vit(model_dir, data_dir, epochs, eval_strategy, max_train_samples, tmp) -> dict:
    """A plain transformers Trainer on the same model folder and data (the example scripts' data path without
    torchvision: RGB, then the model's image processor, per batch)."""
    t0 = time.perf_counter()
    ds = load_steeldefectx(str(data_dir), validation_fraction=0.1, on_error="raise", with_masks=False)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir)

    def transform(batch):
        pixels = processor(images=[im.convert("RGB") for im in batch["image"]], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": torch.as_tensor(batch["label"])}

    def prepared(split):
        return split.select_columns(["image", "label"]).with_transform(transform)

    def collate(rows):
        return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
                "labels": torch.stack([r["labels"] for r in rows])}

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean() * 100)}

    epoch = eval_strategy == "epoch"
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(dir=tmp), per_device_train_batch_size=BATCH, per_device_eval_batch_size=64,
        learning_rate=LR, weight_decay=0.0, num_train_epochs=epochs, seed=SEED, lr_scheduler_type="linear",
        max_grad_norm=0.0, eval_strategy=eval_strategy, save_strategy="epoch" if epoch else "no",
        save_total_limit=1 if epoch else None, load_best_model_at_end=epoch, metric_for_best_model="accuracy",
        report_to="none", remove_unused_columns=False, use_cpu=True, dataloader_num_workers=0, logging_steps=10)
    trainer = Trainer(model=model, args=args, train_dataset=prepared(_subsample(ds["train"], max_train_samples)),
                      eval_dataset=prepared(ds["validation"]), data_collator=collate, compute_metrics=accuracy)
    train = trainer.train()
    trainer.evaluate()
    test = trainer.evaluate(prepared(ds["test"]), metric_key_prefix="test")
    trainer.save_model()
    processor.save_pretrained(args.output_dir)
    return {"total_s": time.perf_counter() - t0, "train_s": train.metrics["train_runtime"],
            "test_accuracy": test["test_accuracy"], "steps": train.global_step, "optim": str(args.optim)}


def bench_vit(a) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_vit(Path(tmp) / "vit")
        def run(warmup=False):
            return (model_dir, a.data_dir, 1 if warmup else a.epochs, a.eval_strategy,
                    64 if warmup else a.max_train_samples, tmp)

        ours, theirs = alternate(a.rounds, lambda **w: ours_vit(*run(**w)), lambda **w: trainer_vit(*run(**w)))
    return {"bench": "vit", "epochs": a.epochs, "eval_strategy": a.eval_strategy,
            "max_train_samples": a.max_train_samples, "threads": torch.get_num_threads(),
            "whole_run": _median_ratio([r["total_s"] for r in ours], [r["total_s"] for r in theirs]),
            "training_loop": _median_ratio([r["train_s"] for r in ours], [r["train_s"] for r in theirs]),
            "test_accuracy": {"ours": [r["test_accuracy"] for r in ours],
                              "trainer": [r["test_accuracy"] for r in theirs]},
            "trainer_optim": theirs[0]["optim"], "goal": "ratio <= 0.95"}


# ----------------------------------------------------------------------------------------------------------------
# CLIP
# ----------------------------------------------------------------------------------------------------------------


def save_clip(folder: Path, data_dir) -> Path:
    """A tiny random CLIP with a tokenizer trained on the data's captions, saved with its processor."""
    train = load_steeldefectx(str(data_dir), caption_level="t2", validation_fraction=0.1, seed=SEED)["train"]
    cols = [c for c in ("class_name", "t0", "t1", "t2", "t3", "t4") if c in train.column_names]
    texts = [t for row in train.select_columns(cols) for t in train_clip.level_texts(row).values()]
    model, processor = build_clip_from_scratch("tiny", texts, vocab_size=2000, seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def ours_clip(model_dir, data_dir, epochs, max_train_samples, tmp) -> dict:
    argv = ["--data_dir", str(data_dir), "--model_name_or_path", str(model_dir), "--output_dir",
            tempfile.mkdtemp(dir=tmp), "--per_device_train_batch_size", str(BATCH), "--learning_rate", str(LR),
            "--num_train_epochs", str(epochs), "--seed", str(SEED), "--caption_level", "t2", "--eval_strategy", "no"]
    if max_train_samples:
        argv += ["--max_train_samples", str(max_train_samples)]
    t0 = time.perf_counter()
    res = train_clip.main(argv)
    return {"total_s": time.perf_counter() - t0, "train_s": res["train_runtime"],
            "steps": res["train_completed_steps"]}


class LossOutput(torch.nn.Module):
    """ClipTrainModule returning {"loss": ...}, the shape a Trainer expects."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, pixel_values, labels, input_ids, attention_mask):
        return {"loss": self.module(pixel_values, labels, input_ids, attention_mask)}


def trainer_clip(model_dir, data_dir, epochs, max_train_samples, tmp) -> dict:
    t0 = time.perf_counter()
    ds = load_steeldefectx(str(data_dir), caption_level="t2", validation_fraction=0.1, seed=SEED)
    clip, processor = load_clip(str(model_dir))

    def transform(batch):
        enc = processor.tokenizer(batch["caption"], padding=True, truncation=True, return_tensors="pt")
        pixels = processor.image_processor(images=[im.convert("RGB") for im in batch["image"]],
                                           return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.as_tensor(batch["label"])}

    train = _subsample(ds["train"], max_train_samples).select_columns(["image", "caption", "label"])
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(dir=tmp), per_device_train_batch_size=BATCH, learning_rate=LR,
        num_train_epochs=epochs, seed=SEED, lr_scheduler_type="linear", max_grad_norm=0.0, eval_strategy="no",
        save_strategy="no", report_to="none", remove_unused_columns=False, use_cpu=True, logging_steps=10)
    trainer = Trainer(model=LossOutput(train_clip.ClipTrainModule(clip, "full", "class_aware")), args=args,
                      train_dataset=train.with_transform(transform))
    out = trainer.train()
    zero_shot_validation_and_test(trainer.accelerator, clip, processor, ds)
    clip.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    return {"total_s": time.perf_counter() - t0, "train_s": out.metrics["train_runtime"], "steps": out.global_step}


def zero_shot_validation_and_test(accelerator, clip, processor, ds) -> dict:
    """The final evaluation train_clip.py does (T0 and T1 prompts, images processed per batch), for the Trainer."""
    ids, t0, t1 = train_clip.class_prompts(ds)
    out = {}
    for split in ("validation", "test"):
        loader = torch.utils.data.DataLoader(train_clip.ImageDataset(ds[split]), batch_size=64,
                                             collate_fn=train_clip.ClipCollator(processor, with_text=False))
        out[split] = train_clip.zero_shot_eval(accelerator, clip, loader, processor.tokenizer, ids,
                                               {"t0": t0, "t1": t1})
    return out


def bench_clip(a) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_clip(Path(tmp) / "clip", a.data_dir)
        def run(warmup=False):
            return model_dir, a.data_dir, 1 if warmup else a.epochs, 64 if warmup else a.max_train_samples, tmp

        ours, theirs = alternate(a.rounds, lambda **w: ours_clip(*run(**w)), lambda **w: trainer_clip(*run(**w)))
    return {"bench": "clip", "epochs": a.epochs, "max_train_samples": a.max_train_samples,
            "whole_run": _median_ratio([r["total_s"] for r in ours], [r["total_s"] for r in theirs]),
            "training_loop": _median_ratio([r["train_s"] for r in ours], [r["train_s"] for r in theirs])}


# ----------------------------------------------------------------------------------------------------------------
# optimizer kernels
# ----------------------------------------------------------------------------------------------------------------


def bench_optimizers(rounds: int = 7, steps: int = 20) -> dict:
    """ms per optimizer step of each (optimizer, kernel) on the ViT's parameters, alternated, median of rounds."""
    torch.manual_seed(0)
    params = list(build_image_classifier("vit", "tiny", CLASS_NAMES, image_size=64, patch_size=8,
                                         config_overrides=VIT_OVERRIDES).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    kernels = {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    makers = {"adamw": lambda kw: torch.optim.AdamW(params, lr=1e-6, **kw),
              "adam": lambda kw: torch.optim.Adam(params, lr=1e-6, **kw),
              "sgd": lambda kw: torch.optim.SGD(params, lr=1e-6, momentum=0.9, **kw)}
    times: dict[str, dict[str, list[float]]] = {o: {k: [] for k in kernels} for o in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            for kernel, kw in kernels.items():
                opt = make(kw)
                opt.step()
                t = time.perf_counter()
                for _ in range(steps):
                    opt.step()
                times[name][kernel].append(1000 * (time.perf_counter() - t) / steps)
    ms = {o: {k: round(statistics.median(v), 3) for k, v in d.items()} for o, d in times.items()}
    return {"bench": "optimizers", "parameters": sum(p.numel() for p in params), "tensors": len(params),
            "ms_per_step": ms, "fastest": {o: min(d, key=d.get) for o, d in ms.items()}}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=("vit", "clip", "optimizers", "all"))
    p.add_argument("--data_dir", type=Path, default=REAL, help="the real fixture (official layout)")
    p.add_argument("--max_train_samples", type=int, default=None, help="a seeded subsample of the training split")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each")
    p.add_argument("--eval_strategy", choices=("no", "epoch"), default="no", help="vit: per-epoch validation")
    a = p.parse_args(argv)
    out = []
    for name, fn in (("optimizers", lambda: bench_optimizers()), ("vit", lambda: bench_vit(a)),
                     ("clip", lambda: bench_clip(a))):
        if a.which in (name, "all"):
            out.append(fn())
            print(json.dumps(out[-1], indent=1), flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
