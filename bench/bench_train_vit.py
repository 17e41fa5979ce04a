#!/usr/bin/env python
"""Benchmarks of train_vit.py / sdx.train.loop, each printing a ratio measured in one run.

``step``    per-step time of sdx.train.loop.run_training against a bare PyTorch loop doing the same forward,
            backward, optimizer and scheduler step on the same model (same initial weights) and the same in-memory
            batches. Rounds alternate bare/ours; the figure is the median over rounds of each round's median
            step time (first steps of a round dropped as warm-up), on the wall clock and on the process's CPU time
            (the latter is less disturbed by other jobs on shared cores). Goal: ratio <= 1.10. A second row runs
            a model so small that compute is negligible and reports the loop's absolute overhead in ms per step.
``loader``  images/s of the real training data loader (real fixture JPEGs, RGB, random resized crop + flips,
            the processor) against images/s of a training step of the same model at the same input size on the
            same (pre-made) batches: the loader must not be the bottleneck (ratio loader/train > 1).
``memory``  peak resident memory (VmHWM of /proc/self/status) of a few training steps of a ViT-B/16-sized
            random model (86M parameters, 224 px) with LoRA (r=8 on q/k/v, head trained) against full
            fine-tuning (AdamW), each in its own subprocess; reported raw and net of the process's resident memory
            after the imports, before the model was built; ``--gradient_checkpointing`` turns it on in both.
            Goal: LoRA / full <= 0.6.

Usage: ``OMP_NUM_THREADS=1 python bench/bench_train_vit.py {step,loader,memory,all} [--real_data DIR]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT.parent / "shared" / "data" / "steeldefectx-real-subset"


def _vit(image_size: int, overrides: str, n_labels: int = 13, seed: int = 0):
    from sdx.models.classifiers import build_image_classifier

    torch.manual_seed(seed)
    return build_image_classifier("vit", "tiny", [f"c{i}" for i in range(n_labels)], image_size=image_size,
                                  config_overrides=overrides)


def _training_args(out: str, steps: int, batch: int):
    from sdx.train.args import TrainingArguments

    return TrainingArguments(output_dir=out, max_train_steps=steps, per_device_train_batch_size=batch,
                             learning_rate=1e-4, lr_scheduler_type="linear")


def _batches(n: int, batch: int, image_size: int, n_labels: int = 13):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n * batch, 3, image_size, image_size, generator=g)
    y = torch.randint(0, n_labels, (n * batch,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def _collate(items):
    return {"pixel_values": torch.stack([i[0] for i in items]), "labels": torch.stack([i[1] for i in items])}


def bare_loop(model, data, batch: int, steps: int) -> list[float]:
    """Step times of a plain PyTorch loop (AdamW with the same kernel + linear schedule, like
    create_optimizer/create_scheduler)."""
    from sdx.train.loop import optimizer_kernel

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, **optimizer_kernel("auto"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, collate_fn=_collate)
    model.train()
    stamps = [_now()]
    for i, b in enumerate(loader):
        loss = model(**b).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        stamps.append(_now())
        if i + 1 >= steps:
            break
    return _deltas(stamps)


def _now() -> tuple[float, float]:
    """(wall clock, CPU time of this process): CPU time is what other agents' load on the shared cores disturbs
    least."""
    return time.perf_counter(), time.process_time()


def _deltas(stamps):
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]


def ours(model, data, batch: int, steps: int) -> list[float]:
    """Step times of sdx.train.loop.run_training (accelerate prepare/accumulate/backward, tqdm, scheduler)."""
    from sdx.train.loop import create_optimizer, make_accelerator, run_training

    with tempfile.TemporaryDirectory() as tmp:
        args = _training_args(tmp, steps, batch)
        acc = make_accelerator(args, cpu=True)
        opt = create_optimizer(args, model.parameters())
        loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, collate_fn=_collate)
        stamps = [_now()]
        run_training(args, acc, model, opt, loader, compute_loss=lambda m, b: m(**b).loss, evaluate=None,
                     select_metric=None, step_callback=lambda s: stamps.append(_now()))
    return _deltas(stamps)


def bench_step(rounds: int = 3, steps: int = 25, warmup: int = 5, batch: int = 16, image_size: int = 64,
               overrides: str = "hidden_size=192,num_hidden_layers=6,num_attention_heads=3,intermediate_size=768"
               ) -> dict:
    base = _vit(image_size, overrides)
    data = _batches(steps, batch, image_size)
    rows = {"bare": ([], []), "ours": ([], [])}
    for _ in range(rounds):
        for name, fn in (("bare", bare_loop), ("ours", ours)):
            d = fn(copy.deepcopy(base), data, batch, steps)[warmup:]
            rows[name][0].append(statistics.median(w for w, _ in d))
            rows[name][1].append(statistics.median(c for _, c in d))
    out = {"bench": "step", "model": f"ViT {overrides} @{image_size}px patch16", "batch": batch,
           "steps_per_round": steps, "rounds": rounds, "goal": "<= 1.10"}
    for i, clock in enumerate(("wall", "cpu")):
        b, o = statistics.median(rows["bare"][i]), statistics.median(rows["ours"][i])
        out.update({f"bare_step_s_{clock}": b, f"ours_step_s_{clock}": o, f"ratio_{clock}": o / b,
                    f"bare_rounds_s_{clock}": rows["bare"][i], f"ours_rounds_s_{clock}": rows["ours"][i]})
    return out


def bench_loader(real_data: Path, batches: int = 6, batch: int = 32, image_size: int = 64,
                 workers: tuple[int, ...] = (0, 2)) -> dict:
    from sdx.data.builder import load_steeldefectx
    from sdx.models.classifiers import load_or_build_image_processor
    from sdx.train.vit import ImageTransform, collate

    ds = load_steeldefectx(str(real_data), with_masks=False)["train"].select_columns(["image", "label"])
    processor, _ = load_or_build_image_processor(None, image_size)
    tf = ImageTransform(processor, True, random_crop=True, crop_scale=(0.5, 1.0), hflip=True, vflip=True)
    out = {"bench": "loader", "image_size": image_size, "batch": batch}
    for w in workers:
        loader = torch.utils.data.DataLoader(ds.with_transform(tf), batch_size=batch, shuffle=True,
                                             collate_fn=collate, num_workers=w)
        it = iter(loader)
        next(it)  # start-up (workers spawn) not counted
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        out[f"loader_images_per_s_workers{w}"] = batches * batch / (time.perf_counter() - t)
        del it
    # training throughput of the real-data baseline model at the same size, on pre-made batches
    overrides = "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256"
    from sdx.models.classifiers import build_image_classifier

    torch.manual_seed(0)
    model = build_image_classifier("vit", "tiny", [f"c{i}" for i in range(25)], image_size=image_size,
                                   patch_size=8, config_overrides=overrides)
    data = _batches(batches + 2, batch, image_size, 25)
    times = bare_loop(model, data, batch, batches + 2)[2:]
    out["train_images_per_s"] = batch / statistics.median(w for w, _ in times)
    out["model"] = f"ViT {overrides} @{image_size}px patch8 (the baseline's)"
    for w in workers:
        out[f"ratio_loader_over_train_workers{w}"] = out[f"loader_images_per_s_workers{w}"] / out["train_images_per_s"]
    return out


MEM_CHILD = r"""
import json, sys, time, torch
def _status(key):  # kB from /proc/self/status: VmRSS now, VmHWM = peak of this process image (reset at exec,
    # unlike ru_maxrss, which a child inherits from the parent that forked it)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
sys.path.insert(0, {root!r})
from sdx.models.classifiers import build_image_classifier, apply_lora, count_parameters
import transformers, peft  # imported before the baseline reading: "net" is the model and its training only
from transformers import ViTForImageClassification
rss0 = _status("VmRSS")
torch.manual_seed(0)
model = build_image_classifier("vit", "base", [f"c{{i}}" for i in range(25)], image_size=224)
if {gc}:
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={{"use_reentrant": False}})
if {lora}:
    model = apply_lora(model, r=8, alpha=16)
built_peak, built_rss = _status("VmHWM"), _status("VmRSS")
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
x = torch.randn({batch}, 3, 224, 224); y = torch.randint(0, 25, ({batch},))
model.train()
t = time.perf_counter()
for _ in range({steps}):
    loss = model(pixel_values=x, labels=y).loss
    loss.backward(); opt.step(); opt.zero_grad()
dt = (time.perf_counter() - t) / {steps}
rss = _status("VmHWM")
tr, tot = count_parameters(model)
print(json.dumps({{"peak_rss_mb": rss / 1024, "rss_before_model_mb": rss0 / 1024, "step_s": dt,
                  "peak_after_build_mb": built_peak / 1024, "rss_after_build_mb": built_rss / 1024,
                  "trainable": tr, "total": tot}}))
"""


def bench_memory(batch: int = 4, steps: int = 2, gradient_checkpointing: bool = False) -> dict:
    out = {"bench": "memory", "model": "ViT-B/16 sized random (768x12x12, 224px), AdamW", "batch": batch,
           "steps": steps, "gradient_checkpointing": gradient_checkpointing}
    for name, lora in (("full", False), ("lora", True)):
        code = MEM_CHILD.format(root=str(ROOT), lora=lora, batch=batch, steps=steps, gc=gradient_checkpointing)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        out[name] = r
        out[f"{name}_net_mb"] = r["peak_rss_mb"] - r["rss_before_model_mb"]
    out["ratio_peak_rss"] = out["lora"]["peak_rss_mb"] / out["full"]["peak_rss_mb"]
    out["ratio_net"] = out["lora_net_mb"] / out["full_net_mb"]
    out["goal"] = "<= 0.6"
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=("step", "loader", "memory", "all"))
    p.add_argument("--real_data", type=Path, default=REAL, help="the real fixture (loader benchmark)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--memory_batch", type=int, default=4)
    p.add_argument("--gradient_checkpointing", action="store_true", help="memory: both runs with checkpointing")
    a = p.parse_args(argv)
    results = []
    if a.which in ("step", "all"):
        results.append(bench_step(rounds=a.rounds))
        print(json.dumps(results[-1], indent=1), flush=True)
        # the loop's absolute per-step overhead: a model so small that compute is negligible
        tiny = bench_step(rounds=a.rounds, steps=60, warmup=10, batch=4, image_size=32,
                          overrides="hidden_size=16,num_hidden_layers=1,num_attention_heads=1,intermediate_size=16")
        tiny["bench"] = "step-overhead"
        for clock in ("wall", "cpu"):
            tiny[f"overhead_ms_per_step_{clock}"] = 1000 * (tiny[f"ours_step_s_{clock}"] - tiny[f"bare_step_s_{clock}"])
        results.append(tiny)
        print(json.dumps(tiny, indent=1), flush=True)
    if a.which in ("loader", "all"):
        results.append(bench_loader(a.real_data))
        print(json.dumps(results[-1], indent=1), flush=True)
    if a.which in ("memory", "all"):
        results.append(bench_memory(batch=a.memory_batch, gradient_checkpointing=a.gradient_checkpointing))
        print(json.dumps(results[-1], indent=1), flush=True)
    return results


if __name__ == "__main__":
    main()
