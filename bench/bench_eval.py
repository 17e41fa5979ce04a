#!/usr/bin/env python
"""Benchmark of eval_benchmark.py: the whole benchmark against one encoder pass over the same images.

In ONE process, with random-init models of a size preset (no pretrained weights exist offline):

1. warm-up: load the data and the models, encode one batch (imports, thread pools, first-call costs);
2. reference: one plain encoder pass (decode + preprocess + forward, same batch size, no cache) over exactly the
   images the benchmark needs: test, validation and the union of all few-shot support sets for the CLIP model,
   test for the image classifier (Task 1);
   plus, separately, one text-encoder pass over every distinct prompt / caption the tasks need (the sample-level
   class prompts are means over ALL training captions, so the text encoder has real work of its own);
3. cold: eval_benchmark.main with every task, every prompt level, k in --shots x --seeds, into an empty cache;
4. warm: the same command again (everything from the cache).

Figure: cold / reference (goal <= 1.5), warm / reference, and cold / (reference + text pass). A Markdown row is
printed (and appended to --row_file). Example::

    OMP_NUM_THREADS=2 python bench/bench_eval.py --data_dir ../shared/data/steeldefectx-real-subset --clip_size small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = ROOT.parent / "shared" / "data" / "steeldefectx-real-subset"
    p.add_argument("--data_dir", default=str(default_data) if default_data.is_dir() else "synthetic")
    p.add_argument("--clip_size", default="small", help="sdx.models CLIP_PRESETS size: tiny, small, base")
    p.add_argument("--vit_size", default="tiny", help="sdx.models IMAGE_MODEL_PRESETS['vit'] size for Task 1")
    p.add_argument("--image_size", type=int, default=None, help="model input size (default: the preset's)")
    p.add_argument("--shots", default="1,2,4,8,16")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_eval_samples", type=int, default=None)
    p.add_argument("--work_dir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--row_file", default=None, help="append the Markdown row here")
    args = p.parse_args(argv)

    import torch

    from sdx.bench import cli, fewshot
    from sdx.bench.data import column
    from sdx.bench.localize import NORMAL_PROMPT
    from sdx.bench.models import TEXT_BATCH, BenchClip, VisionClassifier
    from sdx.bench.tasks import Benchmark
    from sdx.data.builder import caption_texts, load_steeldefectx
    from sdx.data.levels import t0_prompt
    from sdx.models.classifiers import build_image_classifier, load_or_build_image_processor
    from sdx.models.clip import build_clip_from_scratch
    from sdx.train.runmeta import RunMetadata

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_eval_"))
    work.mkdir(parents=True, exist_ok=True)
    shots = [int(k) for k in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    # 1. data and models (random init, saved and loaded from disk like a user's checkpoints)
    ds = load_steeldefectx(args.data_dir)
    texts = [NORMAL_PROMPT] + [t0_prompt(c) for c in ds["train"].features["label"].names]
    for lv in ("t1", "t2", "t3", "t4"):
        texts += sorted(set(caption_texts(ds["train"], lv)))
    clip_dir, vit_dir = work / "clip", work / "vit"
    model, processor = build_clip_from_scratch(args.clip_size, texts, image_size=args.image_size, seed=0)
    model.save_pretrained(clip_dir)
    processor.save_pretrained(clip_dir)
    RunMetadata(kind="clip", origin="random-init", method="bench", seed=0, data="synthetic",
                caption_level="t2").write(clip_dir)
    names = ds["train"].features["label"].names
    vit_size = args.image_size or 64
    vit = build_image_classifier("vit", args.vit_size, names, image_size=vit_size, patch_size=8)
    vit.save_pretrained(vit_dir)
    load_or_build_image_processor(None, vit_size)[0].save_pretrained(vit_dir)
    RunMetadata(kind="image-classifier", origin="random-init", method="bench", seed=0,
                data="synthetic").write(vit_dir)

    # the images the benchmark encodes: same subsample rule, same support draw
    bench = Benchmark(ds, clip_models=[f"t2={clip_dir}"], shots=shots, seeds=seeds, progress=False,
                        max_eval_samples=args.max_eval_samples, batch_size=args.batch_size)
    test, val, train = bench.split("test"), bench.split("validation"), bench.split("train")
    support_rows = fewshot.support_union(fewshot.support_sets(ds["train"], shots, seeds))
    clip_images = [(test, i) for i in range(len(test.keys))] + [(val, i) for i in range(len(val.keys))] + \
                  [(train, r) for r in support_rows]
    enc = BenchClip(str(clip_dir), batch_size=args.batch_size)
    clf = VisionClassifier(str(vit_dir), batch_size=args.batch_size)
    enc.encode_images([test.pil(0)])  # warm-up
    clf.logits([test.pil(0)])

    # 2. reference: one encoder pass over the same images
    t0 = time.perf_counter()
    for start in range(0, len(clip_images), args.batch_size):
        batch = clip_images[start:start + args.batch_size]
        enc.encode_images([s.pil(i) for s, i in batch])
    t_clip = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, len(test.keys), args.batch_size):
        clf.logits([test.pil(i) for i in range(start, min(len(test.keys), start + args.batch_size))])
    t_vit = time.perf_counter() - t0
    reference = t_clip + t_vit
    # the text encoder's share of the work the protocol needs: every distinct prompt / caption the tasks encode
    texts_needed = {NORMAL_PROMPT} | {t0_prompt(c) for c in names} | set(column(ds["train"], "t1"))
    for lv in ("t2", "t3", "t4"):
        texts_needed |= set(caption_texts(ds["train"], lv)) | set(caption_texts(test.dataset, lv))
    texts_needed = sorted(t for t in texts_needed if t and t.strip())
    t0 = time.perf_counter()
    bs_text = max(args.batch_size, TEXT_BATCH)
    for start in range(0, len(texts_needed), bs_text):
        enc.encode_texts(texts_needed[start:start + bs_text])
    t_text = time.perf_counter() - t0

    # 3. cold and 4. warm full benchmark
    argv_run = ["--data_dir", args.data_dir, "--model_name_or_path", f"t2={clip_dir}",
                "--vision_model_name_or_path", str(vit_dir), "--tasks", "all", "--shots", args.shots,
                "--seeds", args.seeds, "--batch_size", str(args.batch_size), "--output_dir", str(work / "report"),
                "--embedding_cache_dir", str(work / "cache"), "--no_progress"]
    if args.max_eval_samples:
        argv_run += ["--max_eval_samples", str(args.max_eval_samples)]
    t0 = time.perf_counter()
    res = cli.main(argv_run)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    res_warm = cli.main(argv_run)
    warm = time.perf_counter() - t0
    assert all(c["encoded"] == 0 for c in res_warm["cache"].values()), res_warm["cache"]

    n_clip = len(clip_images)
    out = {"data": args.data_dir, "clip_size": args.clip_size, "vit_size": args.vit_size,
           "images_clip": n_clip, "images_vit": len(test.keys), "shots": shots, "seeds": seeds,
           "reference_s": reference, "reference_clip_s": t_clip, "reference_vit_s": t_vit,
           "texts": len(texts_needed), "text_pass_s": t_text,
           "ratio_cold_vs_image_and_text_pass": cold / (reference + t_text),
           "cold_s": cold, "warm_s": warm, "ratio_cold": cold / reference, "ratio_warm": warm / reference,
           "task_timings_cold": res["timings_s"], "cache_cold": res["cache"],
           "threads": torch.get_num_threads(), "machine": f"{platform.machine()} {os.cpu_count()} cores (shared)"}
    row = (f"| eval_benchmark.py --tasks all (levels t0-t4, k {args.shots} x seeds {args.seeds}), "
           f"CLIP {args.clip_size} + ViT {args.vit_size} random init, {Path(args.data_dir).name} "
           f"({n_clip} CLIP images, {len(test.keys)} Task-1 images) | cold {cold:.1f} s vs one encoder pass "
           f"{reference:.1f} s | {cold / reference:.2f}x (goal <= 1.5x); warm cache {warm:.1f} s = "
           f"{warm / reference:.2f}x; vs image + text encoder passes ({len(texts_needed)} distinct texts, "
           f"{t_text:.1f} s): {cold / (reference + t_text):.2f}x | {out['machine']}, torch threads {out['threads']} |")
    print(json.dumps(out, indent=1, default=float))
    print(row)
    if args.row_file:
        with open(args.row_file, "a") as fh:
            fh.write(row + "\n")
    return out


if __name__ == "__main__":
    main()
