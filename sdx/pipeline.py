"""The main job: one offline command from data to report.

    python -m sdx.pipeline                                   # embedded synthetic data, tiny random models
    python -m sdx.pipeline --data_dir ../shared/data/steeldefectx-real-subset --output_dir outputs/real
    python -m sdx.pipeline --data_dir /data/SteelDefectX \\
        --vit_model_name_or_path google/vit-base-patch16-224 --clip_model_name_or_path openai/clip-vit-base-patch16

Steps (each one a call of the same function the matching CLI calls, so nothing here is a second code path):

1. data     build the dataset with the builder (``steeldefectx.py``); print its build report; draw a gallery of
            images with their masks and every text level (``OUT/gallery.png``)
2. vit      train the vision-only classifier (``train_vit.py``): a random tiny ViT unless a checkpoint is given
3. clip     train one CLIP per caption level in ``--clip_levels`` (``train_clip.py``), for the Tx-Ty matrix,
            and one more on the seen classes only (every 4th class with images, from the 2nd, held out), for
            the cross-class zero-shot transfer of task 4
4. bench    run every benchmark task on them (``eval_benchmark.py``): ``OUT/bench/report.md`` and its plots

Every number in the report names its data (synthetic data is flagged as such, never passed off as real) and
each model's origin (random initialisation or the pretrained checkpoint it started from).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from sdx.data import levels as T

logger = logging.getLogger(__name__)

VIT_COMPACT = "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256"
PRESETS = {
    # quick: the README's first command (about 3 minutes on 2 CPU cores). Random-init models learn slowly:
    # at these settings a tiny CLIP reaches about 2x chance on the 12 synthetic classes; the tiny ViT is unstable
    # (from chance to about 2x chance depending on the seed), a small CNN (--vit_model_type resnet) about 4x.
    "demo": {"vit_epochs": 30, "clip_epochs": 60, "image_size": 64, "batch_size": 32, "vit_lr": 2e-3,
             "clip_lr": 2e-3, "vit_config": VIT_COMPACT, "shots": "1,2,4", "seeds": "1,2",
             "max_train_samples": None, "max_eval_samples": None, "synthetic_size": (30, 10)},
    # smallest: tests (checks the plumbing, learns nothing)
    "smoke": {"vit_epochs": 1, "clip_epochs": 1, "image_size": 32, "batch_size": 8, "vit_lr": 1e-3,
              "clip_lr": 1e-3, "vit_config": VIT_COMPACT, "shots": "1,2", "seeds": "1",
              "max_train_samples": 48, "max_eval_samples": 24, "synthetic_size": (12, 6)},
    # the full protocol of the benchmark (k up to 16, three seeds), for a GPU or pretrained checkpoints
    "full": {"vit_epochs": 30, "clip_epochs": 20, "image_size": 224, "batch_size": 32, "vit_lr": 1e-3,
             "clip_lr": 1e-4, "vit_config": None, "shots": "1,2,4,8,16", "seeds": "1,2,3",
             "max_train_samples": None, "max_eval_samples": None, "synthetic_size": (100, 40)},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdx.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="synthetic",
                   help="'synthetic' (default: the embedded generator, no download), a folder in the official "
                        "layout (e.g. ../shared/data/steeldefectx-real-subset), or 'hub' for the Hub release")
    p.add_argument("--output_dir", default="outputs/demo", help="where models, gallery and report go")
    p.add_argument("--synthetic_size", type=int, nargs=2, metavar=("TRAIN", "VAL"), default=None,
                   help="images per class of the synthetic data (default: the preset's)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="sizes and epochs: demo (minutes on a CPU), smoke (tests), full (the whole protocol)")
    p.add_argument("--vit_model_name_or_path", default=None,
                   help="image classifier to fine-tune (Hub id or local dir); default: a random tiny ViT")
    p.add_argument("--vit_model_type", choices=("vit", "resnet", "convnext"), default="vit",
                   help="architecture of the random vision model (a tiny ViT by default; a small CNN learns the "
                        "synthetic demo data faster)")
    p.add_argument("--clip_model_name_or_path", default=None,
                   help="CLIP to fine-tune (Hub id or local dir); default: a random tiny CLIP with a local tokenizer")
    p.add_argument("--clip_levels", default="t0,t1,t4",
                   help="caption levels to train one CLIP each with (rows of the Tx-Ty matrix)")
    p.add_argument("--clip_method", choices=("full", "lora", "adapter"), default="full")
    p.add_argument("--transfer_level", default="t1",
                   help="caption level of the extra CLIP trained on seen classes only (task 4 cross-class); "
                        "'none' skips it")
    p.add_argument("--tasks", default="all", help="benchmark tasks (see eval_benchmark.py --help)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--overwrite_output_dir", action="store_true", help="replace an earlier run in --output_dir")
    for key in ("vit_epochs", "clip_epochs", "image_size", "batch_size", "max_train_samples", "max_eval_samples"):
        p.add_argument(f"--{key}", type=int, default=None, help=f"override the preset's {key}")
    p.add_argument("--shots", default=None, help="override the preset's few-shot k list, e.g. 1,2,4,8,16")
    p.add_argument("--seeds", default=None, help="override the preset's few-shot seeds, e.g. 1,2,3")
    return p


def _settings(args) -> dict:
    settings = dict(PRESETS[args.preset])
    for key in settings:
        value = getattr(args, key, None)
        if key == "synthetic_size" and value is not None:
            value = tuple(value)
        if value is not None:
            settings[key] = value
    return settings


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def _optional(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def run_pipeline(args) -> dict:
    from sdx.train.clip import parse_clip_args, run_clip_training
    from sdx.data.builder import build_report, format_report, load_steeldefectx
    from sdx.report.gallery import data_gallery
    from sdx.bench.cli import parse_benchmark_args, run_benchmark
    from sdx.data.layout import data_source
    from sdx.data.synthetic import default_dataset_dir
    from sdx.train.vit import parse_vit_args, run_vit_training

    s = _settings(args)
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite_output_dir:
        raise SystemExit(f"{out} already holds a run: pass --overwrite_output_dir or choose another --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir
    if data_source(data_dir) == "synthetic":  # generated once per size, then cached; every step reads that folder
        n_train, n_val = s["synthetic_size"]
        data_dir = str(default_dataset_dir(train_per_class=n_train, val_per_class=n_val, progress=True))
    data_arg = ["--data_dir", str(data_dir)]
    overwrite = ["--overwrite_output_dir"] if args.overwrite_output_dir else []
    levels = [T.normalize_level(lv) for lv in args.clip_levels.split(",") if lv.strip()]
    timings: dict[str, float] = {}

    t = _step("1/4 data")
    ds = load_steeldefectx(data_dir, "default")
    print(format_report(build_report(ds)))
    gallery = data_gallery(ds, out / "gallery.png")
    print(f"gallery: {gallery}")
    timings["data_s"] = time.perf_counter() - t

    t = _step("2/4 vision-only classifier (train_vit.py)")
    vit_dir = out / "vit"
    vit_argv = [*data_arg, "--output_dir", str(vit_dir), "--seed", str(args.seed), *overwrite,
                "--num_train_epochs", str(s["vit_epochs"]), "--per_device_train_batch_size", str(s["batch_size"]),
                "--hflip", "--vflip", "--learning_rate", str(s["vit_lr"]), "--lr_scheduler_type", "cosine",
                "--warmup_steps", "30", "--weight_decay", "0.05",
                *_optional("--max_train_samples", s["max_train_samples"]),
                *_optional("--max_eval_samples", s["max_eval_samples"])]
    if args.vit_model_name_or_path:
        vit_argv += ["--model_name_or_path", args.vit_model_name_or_path, "--ignore_mismatched_sizes"]
    else:
        vit_argv += ["--model_type", args.vit_model_type, "--model_size", "tiny", "--image_size", str(s["image_size"])]
        if args.vit_model_type == "vit":
            vit_argv += ["--patch_size", "8" if s["image_size"] <= 64 else "16",
                         *_optional("--config_overrides", s["vit_config"])]
    vit = run_vit_training(parse_vit_args(vit_argv))
    timings["vit_s"] = time.perf_counter() - t

    with_images = sorted(set(ds["train"]["class_name"]))
    unseen = with_images[1::4]
    runs = [(f"clip_{level}", level, []) for level in levels]
    if args.transfer_level != "none" and unseen:
        level = T.normalize_level(args.transfer_level)
        runs.append((f"clip_{level}_seen", level, ["--exclude_classes", *unseen]))
    t = _step(f"3/4 CLIP per caption level {', '.join(lv.upper() for lv in levels)}"
              + (f", and {runs[-1][0]} without {unseen}" if runs[-1][2] else "") + " (train_clip.py)")
    clip_dirs, clips = {}, {}
    for name, level, extra in runs:
        clip_dir = out / name
        clip_argv = [*data_arg, "--output_dir", str(clip_dir), "--seed", str(args.seed), *overwrite, *extra,
                     "--caption_level", level, "--method", args.clip_method,
                     "--num_train_epochs", str(s["clip_epochs"]), "--learning_rate", str(s["clip_lr"]),
                     "--warmup_steps", "30", "--per_device_train_batch_size", str(s["batch_size"]),
                     *_optional("--max_train_samples", s["max_train_samples"]),
                     *_optional("--max_eval_samples", s["max_eval_samples"])]
        if args.clip_model_name_or_path:
            clip_argv += ["--model_name_or_path", args.clip_model_name_or_path]
        else:
            clip_argv += ["--model_size", "tiny", "--image_size", str(s["image_size"])]
        clips[name] = run_clip_training(parse_clip_args(clip_argv))
        clip_dirs[name] = (level, clip_dir)
    timings["clip_s"] = time.perf_counter() - t

    t = _step("4/4 benchmark (eval_benchmark.py)")
    bench_dir = out / "bench"
    bench_argv = [*data_arg,
                  "--output_dir", str(bench_dir), "--tasks", args.tasks,
                  "--vision_model_name_or_path", str(vit_dir),
                  "--shots", str(s["shots"] if args.shots is None else args.shots),
                  "--seeds", str(s["seeds"] if args.seeds is None else args.seeds),
                  *_optional("--max_eval_samples", s["max_eval_samples"])]
    for name, (level, path) in clip_dirs.items():
        bench_argv += ["--model_name_or_path", f"{level}:{name}={path}"]
    results = run_benchmark(parse_benchmark_args(bench_argv), bench_argv)
    timings["bench_s"] = time.perf_counter() - t

    summary = {"output_dir": str(out), "gallery": str(gallery), "report": results["meta"]["outputs"]["report"],
               "vit": vit, "clip": clips, "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "settings": s, "data_dir": args.data_dir}
    (out / "pipeline.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nDone in {sum(timings.values()):.0f} s. Report: {summary['report']}")
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_pipeline(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
