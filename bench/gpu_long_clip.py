"""GPU check of long text: bf16 training of a CLIP ViT-B/16-sized random model at 77 and at 248 text positions,
images/s and model FLOPs utilisation (goal: MFU >= 40 % at 77 positions on an H100/H200).

    python bench/gpu_long_clip.py                          # on a GPU: B/16 shapes, batch 256, eager and compiled
    python bench/gpu_long_clip.py --size tiny --device cpu --batch_size 4 --steps 3 --modes eager   # CPU check

Model: transformers CLIPModel with CLIP ViT-B/16's shapes (vision 768 x 12 layers, 224 px, patch 16; text
512 x 12 layers, vocabulary 49,408; projection 512), transformers' default attention (SDPA), random weights. Each step: bf16 autocast
forward of both towers, sdx.train.losses.contrastive_loss (class-aware, the trainer's loss), backward, fused
AdamW. Text: random token ids filling every position (77 or 248: the full cost of the budget). FLOPs of one step
are counted once with torch's FlopCounterMode (matmuls, convolutions and attention, forward and backward);
MFU = FLOPs per step / median step time / the accelerator's dense bf16 peak (``--peak_tflops``; 989 TFLOP/s for
H100/H200 SXM by default). Writes ``$OUT/gpu_long_clip.json`` (or ``--output``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdx.models.clip import get_logit_scale, image_features, text_features  # noqa: E402
from sdx.train.losses import contrastive_loss  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}   # dense bf16, TFLOP/s
SIZES = {  # (text width, layers, heads, mlp), (vision width, layers, heads, mlp), image, patch, projection, vocab
    "base": ((512, 12, 8, 2048), (768, 12, 12, 3072), 224, 16, 512, 49408),
    "tiny": ((64, 2, 2, 128), (64, 2, 2, 128), 32, 16, 32, 1000),
}


def build_model(size: str, positions: int):
    from transformers import CLIPConfig, CLIPModel

    (tw, tl, th, tm), (vw, vl, vh, vm), image, patch, proj, vocab = SIZES[size]
    cfg = CLIPConfig(text_config=dict(hidden_size=tw, num_hidden_layers=tl, num_attention_heads=th,
                                      intermediate_size=tm, vocab_size=vocab, max_position_embeddings=positions,
                                      bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1),
                     vision_config=dict(hidden_size=vw, num_hidden_layers=vl, num_attention_heads=vh,
                                        intermediate_size=vm, image_size=image, patch_size=patch),
                     projection_dim=proj)
    torch.manual_seed(0)
    return CLIPModel(cfg), image, vocab


def make_batch(batch: int, positions: int, image: int, vocab: int, device) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab - 1, (batch, positions), generator=g)
    ids[:, -1] = vocab - 1                                         # end-of-text at the last position
    return {"pixel_values": torch.randn(batch, 3, image, image, generator=g).to(device),
            "input_ids": ids.to(device), "labels": torch.randint(25, (batch,), generator=g).to(device)}


def train_step(model, opt, batch, dtype) -> None:
    with torch.autocast(batch["input_ids"].device.type, dtype=dtype):
        img = image_features(model, batch["pixel_values"])
        txt = text_features(model, batch["input_ids"])
        loss = contrastive_loss(img, txt, get_logit_scale(model), labels=batch["labels"])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def count_flops(model, batch, dtype) -> float:
    """FLOPs of one forward + backward (no optimizer step), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(batch["input_ids"].device.type, dtype=dtype):
            img = image_features(model, batch["pixel_values"])
            txt = text_features(model, batch["input_ids"])
            loss = contrastive_loss(img, txt, get_logit_scale(model), labels=batch["labels"])
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(args, positions: int, mode: str, device, dtype, peak) -> dict:
    model, image, vocab = build_model(args.size, positions)
    model.to(device).train()
    batch = make_batch(args.batch_size, positions, image, vocab, device)
    flops = count_flops(model, batch, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    step_model = torch.compile(model) if mode == "compile" else model
    for _ in range(args.warmup):
        train_step(step_model, opt, batch, dtype)
    times = []
    for _ in range(args.steps):
        sync(device)
        start = time.perf_counter()
        train_step(step_model, opt, batch, dtype)
        sync(device)
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    row = {"positions": positions, "mode": mode, "batch_size": args.batch_size, "step_ms": 1000 * step,
           "images_per_s": args.batch_size / step, "gflop_per_step": flops / 1e9, "tflops": flops / step / 1e12,
           "mfu": flops / step / 1e12 / peak if peak else None,
           "max_memory_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None}
    del step_model, model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="base", choices=tuple(SIZES))
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--positions", default="77,248")
    p.add_argument("--modes", default="eager,compile", help="eager and/or compile (torch.compile)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--peak_tflops", type=float, default=None)
    p.add_argument("--output", default=None, help="JSON file (default: $OUT/gpu_long_clip.json when $OUT is set)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    dtype = torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for mode in args.modes.split(","):
        for positions in (int(v) for v in args.positions.split(",")):
            rows.append(run_one(args, positions, mode, device, dtype, peak))
            r = rows[-1]
            print(f"{name} {args.size} {mode:7s} text {positions:3d}: {r['step_ms']:8.1f} ms/step, "
                  f"{r['images_per_s']:8.1f} images/s, {r['gflop_per_step']:9.1f} GFLOP/step, "
                  f"{r['tflops']:7.2f} TFLOP/s" + (f", MFU {100 * r['mfu']:.1f} %" if r["mfu"] else ""), flush=True)
    res = {"device": name, "peak_tflops": peak, "precision": "bf16 autocast", "torch": torch.__version__,
           "rows": rows}
    out = args.output or (str(Path(os.environ["OUT"]) / "gpu_long_clip.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
