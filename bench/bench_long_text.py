"""The cost of long text, measured in one run: a CLIP training step with a 248-position text tower against the
same model at 77 positions, and the evaluator's text-encoding throughput at both budgets.

    OMP_NUM_THREADS=2 python bench/bench_long_text.py [--model_size small] [--batch_size 32] [--rounds 5]

One random CLIP of the size preset is built at 77 text positions; the 248-position model is the same model
stretched by Long-CLIP's rule (sdx.models.clip.stretch_text_positions), so every other weight is shared. Two
text sets: the real fixture's rendered T3 captions (../shared/data/steeldefectx-real-subset, NEU records; cut at
77 tokens on the 77-position model, whole on the 248-position one; tokenised with a BPE trained locally on them,
so counts differ a little from OpenAI's BPE) and texts of exactly 248 tokens (the worst case: every position
used). Training step = ClipTrainModule (full fine-tuning, class-aware loss) forward + backward + AdamW step on
pre-processed batches; median over ``--rounds`` rounds of ``--steps`` steps, the two models alternating within
each round. Text encoding = sdx.models.clip.encode_text_list over the whole text set (batch 128), the
evaluator's path, texts/s, alternating likewise; the truncation count (TruncationCounter.add, the evaluator's
extra tokenisation) is timed beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdx.data import levels as T  # noqa: E402
from sdx.models.clip import (TruncationCounter, build_clip_from_scratch, encode_text_list,  # noqa: E402
                             stretch_text_positions)
from sdx.train.clip import ClipTrainModule  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "steeldefectx-real-subset"


def t3_captions() -> list[str]:
    records = json.loads((REAL / "train-text.json").read_text())
    return [T.render_t3(r["structured_attributes"]) for r in records if r.get("structured_attributes")]


def build(model_size: str, texts: list[str]):
    model, processor = build_clip_from_scratch(model_size, texts, max_text_length=77, seed=0)
    long_model = copy.deepcopy(model)
    stretch_text_positions(long_model, 248)
    return {77: model, 248: long_model}, processor.tokenizer, model.config.vision_config.image_size


def full_length_texts(tokenizer, n: int) -> list[str]:
    """Texts of exactly 248 tokens (start and end included), drawn from the vocabulary's word tokens."""
    g = torch.Generator().manual_seed(0)
    words = [t[:-4] for t in tokenizer.get_vocab() if t.endswith("</w>") and t[:-4].isalpha() and len(t) > 6]
    texts = []
    for _ in range(n):
        picks = [words[int(i)] for i in torch.randint(len(words), (246,), generator=g)]
        texts.append(" ".join(picks))
    lengths = [len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]
    return [t for t, k in zip(texts, lengths) if k == 248] or texts


def batches(tokenizer, texts, positions, batch_size, image_size, steps):
    g = torch.Generator().manual_seed(1)
    out = []
    for s in range(steps):
        chunk = [texts[(s * batch_size + i) % len(texts)] for i in range(batch_size)]
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=positions, return_tensors="pt")
        out.append({"pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=g),
                    "labels": torch.randint(6, (batch_size,), generator=g), "input_ids": enc["input_ids"],
                    "attention_mask": enc["attention_mask"]})
    return out


def step_time(module, opt, data) -> tuple[float, float]:
    """Median (wall, CPU) seconds per training step over `data` (the first step is warm-up)."""
    wall, cpu = [], []
    for batch in data:
        start, start_cpu = time.perf_counter(), time.process_time()
        module(**batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall[1:]), statistics.median(cpu[1:])


def encode_rate(model, tokenizer, texts, max_length) -> tuple[float, float]:
    """(texts per wall second, texts per CPU second) of the evaluator's encoder over `texts`."""
    start, start_cpu = time.perf_counter(), time.process_time()
    encode_text_list(model, tokenizer, texts, batch_size=128, max_length=max_length)
    return len(texts) / (time.perf_counter() - start), len(texts) / (time.process_time() - start_cpu)


def measure(models, tokenizer, image_size, text_sets, args) -> dict:
    out = {}
    for name, texts in text_sets.items():
        modules = {p: ClipTrainModule(copy.deepcopy(m).train(), "full", "class_aware") for p, m in models.items()}
        opts = {p: torch.optim.AdamW(mod.parameters(), lr=1e-5) for p, mod in modules.items()}
        data = {p: batches(tokenizer, texts, p, args.batch_size, image_size, args.steps) for p in models}
        step = {p: [] for p in models}
        enc = {p: [] for p in models}
        count = []
        for p in models:                                           # warm-up of the encoding path
            encode_rate(models[p].eval(), tokenizer, texts[:128], p)
        for _ in range(args.rounds):
            for p in models:                                       # alternate the two within each round
                step[p].append(step_time(modules[p], opts[p], data[p]))
                enc[p].append(encode_rate(models[p], tokenizer, texts, p))
            start = time.perf_counter()
            TruncationCounter(tokenizer, 77).add("t", texts)
            count.append(len(texts) / (time.perf_counter() - start))
        out[name] = row = summarise(tokenizer, texts, step, enc, count)
        print(f"{name}: {len(texts)} texts, median {row['median_tokens']:.0f} / max {row['max_tokens']} tokens | "
              f"train step 77: {row['step_ms_77']:.1f} ms, 248: {row['step_ms_248']:.1f} ms "
              f"({row['step_ratio_248_vs_77']:.2f}x wall, {row['step_cpu_ratio_248_vs_77']:.2f}x CPU) | text "
              f"encoding 77: {row['encode_texts_per_s_77']:.0f}/s, 248: {row['encode_texts_per_s_248']:.0f}/s "
              f"({row['encode_ratio_77_vs_248']:.2f}x wall, {row['encode_cpu_ratio_77_vs_248']:.2f}x CPU as fast "
              f"at 77) | truncation count {row['count_texts_per_s']:.0f} texts/s", flush=True)
    return out


def summarise(tokenizer, texts, step, enc, count) -> dict:
    lengths = [len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]
    row = {"texts": len(texts), "median_tokens": statistics.median(lengths), "max_tokens": max(lengths)}
    for p in step:
        row[f"step_ms_{p}"] = 1000 * statistics.median(w for w, _ in step[p])
        row[f"step_cpu_ms_{p}"] = 1000 * statistics.median(c for _, c in step[p])
        row[f"encode_texts_per_s_{p}"] = statistics.median(w for w, _ in enc[p])
        row[f"encode_texts_per_cpu_s_{p}"] = statistics.median(c for _, c in enc[p])
    row["step_ratio_248_vs_77"] = row["step_ms_248"] / row["step_ms_77"]
    row["step_cpu_ratio_248_vs_77"] = row["step_cpu_ms_248"] / row["step_cpu_ms_77"]
    row["encode_ratio_77_vs_248"] = row["encode_texts_per_s_77"] / row["encode_texts_per_s_248"]
    row["encode_cpu_ratio_77_vs_248"] = row["encode_texts_per_cpu_s_77"] / row["encode_texts_per_cpu_s_248"]
    row["count_texts_per_s"] = statistics.median(count)
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_size", default="small", choices=("tiny", "small", "base"))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="training steps per round and model (first is warm-up)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max_texts", type=int, default=512, help="texts per set (encoding throughput)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    captions = t3_captions()[: args.max_texts]
    models, tokenizer, image_size = build(args.model_size, captions)
    text_sets = {"real T3 captions": captions,
                 "248-token texts": full_length_texts(tokenizer, min(args.max_texts, 256))}
    res = {"model_size": args.model_size, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
           "results": measure(models, tokenizer, image_size, text_sets, args)}
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
