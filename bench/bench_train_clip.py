"""CLIP training step time: train_clip's path (sdx.train.loop.run_training + ClipTrainModule + class-aware loss)
against a bare PyTorch loop on the same CLIP, the same pre-processed batches and the same optimizer.

    python bench/bench_train_clip.py [--model_size tiny] [--batch_size 32] [--steps 60] [--repeat 3]
    python bench/bench_train_clip.py --model_size base --batch_size 128 --steps 40   # on a GPU: bf16, images/s, MFU

Both loops iterate a DataLoader over the same pre-processed tensors (pixel values + padded token ids + labels),
in the same seeded order, with AdamW (the same torch kernel) at a constant learning rate. The bare loop calls get_image_features /
get_text_features and sdx.train.losses.contrastive_loss, backward, step, zero_grad: nothing else. The shared loop
adds accelerate (prepare, accumulate, scheduler, progress bar, loss bookkeeping). Step time = median interval
between consecutive optimizer steps (the first 5 steps of each run are warm-up and left out); the two loops are
run alternately `--repeat` times; the median over repeats is reported with the ratio (goal <= 1.10x), and the
ratio of the fastest runs and the ratio of CPU time per step (process_time; both less sensitive to other
processes on a shared machine).
Set OMP_NUM_THREADS to fix the thread count (the figure depends on the machine's load).

On a GPU both loops run there in bf16 autocast (``--mixed_precision``), and the script also prints images/s and
the model FLOPs utilisation: FLOPs of one step (forward + backward, counted once with torch's FlopCounterMode)
divided by the median step time and by the accelerator's dense bf16 peak (``--peak_tflops``, by default 989 for
an H100/H200). The goal is an MFU of at least 40 % for CLIP ViT-B/16 (``--model_size base``). The random
``base`` preset has CLIP ViT-B/16's shapes (text 512x12, vision 768x12, 224 px, patch 16), so its FLOPs match
the pretrained model's.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdx.train import clip as CT  # noqa: E402
from sdx.train.losses import contrastive_loss  # noqa: E402
from sdx.models.clip import build_clip_from_scratch, get_logit_scale, image_features, text_features  # noqa: E402

WARMUP = 5
MAX_UNIQUE = 480
# dense bf16 peak of the accelerator, TFLOP/s, for the MFU figure (H100/H200 SXM: 989)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


class TensorBatches(torch.utils.data.Dataset):
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.t = tensors

    def __len__(self):
        return len(self.t["labels"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.t.items()}


def make_data(model_size: str, n: int, seed: int = 0):
    """n pre-processed examples (synthetic images, T2 captions) and a fresh CLIP of the preset."""
    from sdx.data.synthetic import generate
    from sdx.data.levels import render_t3

    with tempfile.TemporaryDirectory() as tmp:
        unique = min(n, MAX_UNIQUE)
        per_class = max(1, unique // 12 + 1)
        generate(tmp, train_per_class=per_class, val_per_class=1, size=64, seed=seed, progress=False)
        recs = json.loads((Path(tmp) / "train-text.json").read_text())[:unique]
        from PIL import Image
        images = [Image.open(Path(tmp) / "train" / r["image_name"]).convert("RGB") for r in recs]
    texts = [r["natural_language_description"] for r in recs]
    all_texts = texts + [r["template_sentence"] for r in recs] + [render_t3(r["structured_attributes"])
                                                                   for r in recs]
    classes = sorted({r["class_name"] for r in recs})
    model, processor = build_clip_from_scratch(model_size, all_texts, vocab_size=1000, seed=seed)
    enc = processor.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt", max_length=64)
    data = {"pixel_values": processor.image_processor(images=images, return_tensors="pt")["pixel_values"],
            "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.tensor([classes.index(r["class_name"]) for r in recs])}
    tile = torch.arange(n) % len(recs)                         # n examples, the unique ones repeated
    return model, {k: v[tile] for k, v in data.items()}


def loader(data, batch_size: int, seed: int):
    ds = TensorBatches(data)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=CT.EpochShuffleSampler(ds, seed),
                                       drop_last=True)


def _now() -> tuple[float, float]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def median_step(stamps: list[tuple[float, float]]) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) between consecutive steps after warm-up."""
    pairs = list(zip(stamps[WARMUP:], stamps[WARMUP + 1:]))
    return (statistics.median(b[0] - a[0] for a, b in pairs), statistics.median(b[1] - a[1] for a, b in pairs))


def bare_step_loss(model, batch, device: str, precision: str):
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        img = image_features(model, batch["pixel_values"])
        txt = text_features(model, batch["input_ids"], batch["attention_mask"])
    return contrastive_loss(img, txt, get_logit_scale(model), labels=batch["labels"])


def bare_loop(model0, data, batch_size: int, steps: int, lr: float, seed: int, device: str = "cpu",
              precision: str = "no") -> tuple[float, float]:
    model = copy.deepcopy(model0).to(device)
    model.train()
    from sdx.train.loop import optimizer_kernel

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, **optimizer_kernel("auto"))
    stamps = [_now()]
    done = 0
    while done < steps:
        for batch in loader(data, batch_size, seed):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = bare_step_loss(model, batch, device, precision)
            loss.backward()
            opt.step()
            opt.zero_grad()
            done += 1
            stamps.append(_now())
            if done >= steps:
                break
    return median_step(stamps)


def shared_loop(model0, data, batch_size: int, steps: int, lr: float, seed: int, device: str = "cpu",
                precision: str = "no") -> tuple[float, float]:
    """accelerate places the model on its device (the GPU when one is visible, else the CPU)."""
    from sdx.train.loop import create_optimizer, make_accelerator, run_training

    with tempfile.TemporaryDirectory() as out:
        args = CT.parse_clip_args(["--output_dir", out, "--max_train_steps", str(steps), "--learning_rate", str(lr),
                                   "--lr_scheduler_type", "constant", "--seed", str(seed),
                                   "--per_device_train_batch_size", str(batch_size),
                                   "--mixed_precision", precision]).training
        accelerator = make_accelerator(args)
        module = CT.ClipTrainModule(copy.deepcopy(model0), "full", "class_aware")
        optimizer = create_optimizer(args, module)
        stamps = [_now()]
        run_training(args, accelerator, module, optimizer, loader(data, batch_size, seed),
                     compute_loss=lambda m, b: m(**b), evaluate=None, select_metric=None,
                     step_callback=lambda s: stamps.append(_now()))
    return median_step(stamps)


def flops_per_step(model0, data, batch_size: int, device: str, precision: str) -> float:
    """Floating-point operations of one training step (forward + backward), counted by torch's FlopCounterMode
    (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model0).to(device)
    batch = {k: v[:batch_size].to(device) for k, v in data.items()}
    with FlopCounterMode(display=False) as counter:
        bare_step_loss(model, batch, device, precision).backward()
    return float(counter.get_total_flops())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_size", default="tiny", choices=("tiny", "small", "base"))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run (one epoch)")
    p.add_argument("--repeat", type=int, default=3, help="alternating runs of each loop")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed_precision", choices=("no", "bf16"), default=None,
                   help="default: bf16 on a GPU, no on the CPU")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="accelerator peak (dense bf16) for MFU; default from the GPU name (H100/H200 989)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = args.mixed_precision or ("bf16" if device == "cuda" else "no")
    torch.manual_seed(args.seed)
    model, data = make_data(args.model_size, args.batch_size * args.steps, args.seed)
    flops = flops_per_step(model, data, args.batch_size, device, precision)
    bare, ours = [], []
    for _ in range(args.repeat):
        bare.append(bare_loop(model, data, args.batch_size, args.steps, args.lr, args.seed, device, precision))
        ours.append(shared_loop(model, data, args.batch_size, args.steps, args.lr, args.seed, device, precision))
    b, o = statistics.median(x[0] for x in bare), statistics.median(x[0] for x in ours)
    bmin, omin = min(x[0] for x in bare), min(x[0] for x in ours)
    bc, oc = statistics.median(x[1] for x in bare), statistics.median(x[1] for x in ours)
    res = {"model_size": args.model_size, "batch_size": args.batch_size, "steps": args.steps,
           "threads": torch.get_num_threads(), "bare_step_ms": 1000 * b, "train_clip_step_ms": 1000 * o,
           "ratio": o / b, "ratio_of_minima": omin / bmin, "bare_cpu_ms": 1000 * bc, "train_clip_cpu_ms": 1000 * oc,
           "cpu_ratio": oc / bc, "bare_runs_ms": [round(1000 * x[0], 3) for x in bare],
           "train_clip_runs_ms": [round(1000 * x[0], 3) for x in ours]}
    print(f"CLIP {args.model_size}, batch {args.batch_size}, {torch.get_num_threads()} thread(s): bare PyTorch "
          f"{1000 * b:.2f} ms/step, train_clip loop {1000 * o:.2f} ms/step, ratio {o / b:.3f}x (goal <= 1.10x); "
          f"fastest runs {1000 * bmin:.2f} vs {1000 * omin:.2f} ms ({omin / bmin:.3f}x); CPU time per step "
          f"{1000 * bc:.2f} vs {1000 * oc:.2f} ms ({oc / bc:.3f}x)")
    peak = args.peak_tflops
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    if peak is None and device == "cuda":
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    res.update({"device": name, "precision": precision, "gflops_per_step": flops / 1e9,
                "train_clip_images_per_s": args.batch_size / o, "bare_images_per_s": args.batch_size / b,
                "train_clip_tflops": flops / o / 1e12,
                "mfu": (flops / o / 1e12 / peak) if peak else None})
    print(f"{name}, {precision}: {flops / 1e9:.2f} GFLOP/step, train_clip {args.batch_size / o:.1f} images/s, "
          f"{flops / o / 1e12:.3f} TFLOP/s" + (f", MFU {100 * res['mfu']:.1f}% of {peak:g} TFLOP/s" if peak else
                                              " (no peak given: no MFU)"))
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
