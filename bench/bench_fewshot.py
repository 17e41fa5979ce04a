#!/usr/bin/env python
"""Benchmark of the few-shot grid (task 3): 5 methods x k in --shots x --seeds on cached embeddings, against one
encoder pass over the images the grid needs.

In ONE process, with a random-init CLIP of a size preset saved to disk (no pretrained weights exist offline),
tagged as trained with T0 so the class texts are the 25-or-fewer T0 prompts:

1. warm-up: load the data and the model, encode one batch;
2. reference: one plain encoder pass (decode + preprocess + forward, no cache) over exactly the images the grid
   needs: test, validation and the union of all support sets; taken before AND after step 3 (the machine is
   shared: the figure uses their mean, and CPU time beside wall time);
3. cold: ``Benchmark.run(["task3"])`` (zero-shot at T0, then zero-shot, linear probe, Tip-Adapter, Tip-Adapter-F
   and CLIP-Adapter for every k and seed) into an empty embedding cache: every image encoded once, in one stream
   of batches in the reference's order, then the grid.
   The data and the model are loaded before the clock starts, as they are for the reference;
4. warm: the same again from the cache (no encoder call): the grid's own cost;
5. the two speed choices of sdx.bench.adapters on this grid's CLIP-Adapter part: the seeds of a k trained as one
   bank vs one seed at a time, and one intra-op thread vs torch's default pool.

Figure: cold / reference (goal <= 1.2). A Markdown row is printed. The grid works on cached features, so its
cost barely depends on the encoder while the reference grows with it: the goal is judged at ``--clip_size base``
(CLIP ViT-B/16 shapes at 224 px, the paper's encoder; about 35 minutes on 2 CPU cores, three encoder passes).
``small`` (64 px, 4 layers; the default) is a quick run whose encoder pass costs about 4 ms an image, so there the
grid's few seconds show as 1.4-1.7x (docs/performance.md has both). Examples::

    OMP_NUM_THREADS=2 python bench/bench_fewshot.py --clip_size base
    OMP_NUM_THREADS=2 python bench/bench_fewshot.py --clip_size small
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's sdx, not an installed one


def _clip_adapter_part(bench, enc, supports, shots, seeds, per_seed: bool) -> float:
    """Seconds to train the grid's CLIP-Adapters (all k): the seeds of a k as one bank, or one at a time."""
    from sdx.bench import adapters as A
    from sdx.bench import fewshot

    ctx = fewshot.context(bench, enc)
    train = bench.split("train")
    start = time.perf_counter()
    for k in shots:
        groups = [A.Group(x=bench.cache.images(enc, train, supports[(k, s)]),
                          y=ctx.positions(train.labels[supports[(k, s)]]), x_val=ctx.x_val,
                          y_val=ctx.positions(ctx.y_val), seed=s) for s in seeds]
        for batch in ([[g] for g in groups] if per_seed else [groups]):
            A.fit_clip_adapters(batch, ctx.text, logit_scale=ctx.logit_scale)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = ROOT.parent / "shared" / "data" / "steeldefectx-real-subset"
    p.add_argument("--data_dir", default=str(default_data) if default_data.is_dir() else "synthetic")
    p.add_argument("--clip_size", default="small",
                   help="sdx.models CLIP_PRESETS size: tiny, small (default, quick), base (the goal's setting)")
    p.add_argument("--shots", default="1,2,4,8,16")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--work_dir", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)

    import torch

    from sdx.bench import fewshot
    from sdx.bench.models import BenchClip
    from sdx.bench.tasks import Benchmark
    from sdx.data.builder import load_steeldefectx
    from sdx.data.levels import t0_prompt
    from sdx.models.clip import build_clip_from_scratch
    from sdx.train.runmeta import RunMetadata

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_fewshot_"))
    shots, seeds = [int(k) for k in args.shots.split(",")], [int(s) for s in args.seeds.split(",")]
    ds = load_steeldefectx(args.data_dir)
    names = ds["train"].features["label"].names
    clip_dir = work / "clip"
    model, processor = build_clip_from_scratch(args.clip_size, [t0_prompt(c) for c in names] + list(ds["train"]["t1"]),
                                               seed=0)
    model.save_pretrained(clip_dir)
    processor.save_pretrained(clip_dir)
    RunMetadata(kind="clip", origin="random-init", method="bench", seed=0, data=args.data_dir,
                caption_level="t0").write(clip_dir)

    def benchmark(cache_dir):
        return Benchmark(ds, clip_models=[str(clip_dir)], shots=shots, seeds=seeds, levels=["t0"], progress=False,
                         batch_size=args.batch_size, cache_dir=cache_dir)

    probe_bench = benchmark(None)
    test, val, train = (probe_bench.split(s) for s in ("test", "validation", "train"))
    supports = fewshot.support_sets(ds["train"], shots, seeds)
    rows = fewshot.support_union(supports)
    images = [(test, i) for i in range(len(test.keys))] + [(val, i) for i in range(len(val.keys))] + \
             [(train, r) for r in rows]
    enc = BenchClip(str(clip_dir), batch_size=args.batch_size)
    enc.encode_images([test.pil(0)])  # warm-up

    def encoder_pass() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(images), args.batch_size):
            enc.encode_images([s.pil(i) for s, i in images[start:start + args.batch_size]])
        return time.perf_counter() - wall, time.process_time() - cpu

    def loaded(cache_dir):
        bench = benchmark(cache_dir)
        bench.encoders(), [bench.split(s) for s in ("train", "validation", "test")]
        return bench

    before = encoder_pass()
    cold_bench = loaded(work / "cache")
    wall, cpu = time.perf_counter(), time.process_time()
    res = cold_bench.run(["task3"])
    cold, cold_cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = encoder_pass()
    reference, reference_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    warm_bench = loaded(work / "cache")
    t0 = time.perf_counter()
    warm_bench.run(["task3"])
    warm = time.perf_counter() - t0
    assert all(c["encoded"] == 0 for c in warm_bench.cache.counts().values()), warm_bench.cache.counts()

    enc_w = warm_bench.encoders()[0]
    bank = _clip_adapter_part(warm_bench, enc_w, supports, shots, seeds, per_seed=False)
    alone = _clip_adapter_part(warm_bench, enc_w, supports, shots, seeds, per_seed=True)
    from sdx.bench import adapters as A

    pool_threads = torch.get_num_threads()
    single = A.single_thread
    A.single_thread = contextlib.nullcontext  # the default pool, for this one figure
    try:
        pooled = _clip_adapter_part(warm_bench, enc_w, supports, shots, seeds, per_seed=False)
    finally:
        A.single_thread = single

    fs = res["task3"][enc.label]["few_shot"]
    out = {"data": args.data_dir, "clip_size": args.clip_size, "images": len(images), "shots": shots, "seeds": seeds,
           "reference_s": [before[0], after[0]], "reference_cpu_s": [before[1], after[1]], "cold_s": cold,
           "cold_cpu_s": cold_cpu, "warm_rerun_s": warm, "ratio_cold": cold / reference,
           "ratio_cold_cpu": cold_cpu / reference_cpu,
           "clip_adapter_bank_s": bank, "clip_adapter_one_seed_at_a_time_s": alone,
           "clip_adapter_default_pool_s": pooled, "torch_threads": pool_threads,
           "acc_mean": {m: {k: round(v["acc_mean"], 2) for k, v in per.items()} for m, per in fs.items()},
           "load": os.getloadavg(), "machine": f"{platform.machine()} {os.cpu_count()} cores (shared)"}
    print(json.dumps(out, indent=1, default=float))
    print(f"| few-shot grid (5 methods x k {args.shots} x seeds {args.seeds}), CLIP {args.clip_size} random init, "
          f"{Path(args.data_dir).name} ({len(images)} images), cold cache vs one encoder pass | "
          f"`OMP_NUM_THREADS=2 python bench/bench_fewshot.py --clip_size {args.clip_size}` | cold {cold:.1f} s vs "
          f"{before[0]:.1f} / {after[0]:.1f} s (CPU {cold_cpu:.1f} vs {reference_cpu:.1f} s); grid alone (warm cache) "
          f"{warm:.1f} s | **{cold / reference:.2f}x** wall, {cold_cpu / reference_cpu:.2f}x "
          f"CPU | <= 1.2x |")
    print(f"| CLIP-Adapter part of that grid: seeds as one bank vs one seed at a time; one thread vs the default "
          f"pool ({pool_threads} threads) | same run | {bank:.2f} s vs {alone:.2f} s; {bank:.2f} s vs {pooled:.2f} s | "
          f"{alone / bank:.1f}x; {pooled / bank:.1f}x | - |")
    return out


if __name__ == "__main__":
    main()
