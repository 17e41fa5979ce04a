"""GPU check of the distributed engines: FSDP and DeepSpeed ZeRO-2 smoke trainings through the shipped accelerate
config files (configs/fsdp.yaml, configs/deepspeed_zero2.yaml), bf16, one process each on a one-GPU machine; each
run's saved model is reloaded with transformers and evaluated (eval_benchmark task 2 for CLIP, task 1 for ViT).

    python bench/gpu_engines.py                                   # on a GPU: fsdp and deepspeed_zero2
    python bench/gpu_engines.py --engines multi_cpu --mixed_precision no   # CPU check of the script itself

Models: tiny random-init CLIP (a BPE tokenizer trained on the synthetic captions) and tiny ViT, built from configs
and saved first, so the real --model_name_or_path loading path runs; data: the embedded synthetic set (demo data,
not SteelDefectX: the numbers only show that the engines train, save and reload). Each step's command, return code,
seconds and the tail of its log go to ``$OUT/gpu_engines.json`` (or ``--output``); an engine whose package is
missing (deepspeed is not a dependency) is recorded as skipped, never as passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NEEDS = {"deepspeed_zero2": "deepspeed"}
TRAIN = ["--data_dir", "synthetic", "--max_train_steps", "6", "--checkpointing_steps", "3",
         "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32", "--max_eval_samples", "48",
         "--learning_rate", "1e-3"]


def build_models(work: Path) -> dict[str, Path]:
    """A tiny CLIP and a tiny ViT saved under `work` (random weights, synthetic class names)."""
    import torch

    from sdx.data.builder import class_names, load_steeldefectx
    from sdx.models.classifiers import build_image_classifier, load_or_build_image_processor
    from sdx.models.clip import build_clip_from_scratch

    ds = load_steeldefectx("synthetic")
    texts = [t for split in ds.values() for lv in ("t0", "t1", "t2", "t4") for t in split[lv] if t]
    clip, processor = build_clip_from_scratch("tiny", texts, vocab_size=800, seed=0)
    clip.save_pretrained(work / "clip")
    processor.save_pretrained(work / "clip")
    torch.manual_seed(0)
    vit = build_image_classifier("vit", "tiny", class_names(ds), image_size=32, patch_size=16,
                                 config_overrides="hidden_size=64,num_hidden_layers=2,num_attention_heads=2,"
                                                  "intermediate_size=128")
    vit.save_pretrained(work / "vit")
    load_or_build_image_processor(None, 32)[0].save_pretrained(work / "vit")
    return {"clip": work / "clip", "vit": work / "vit"}


def run(cmd: list[str], log: list[dict], timeout: int) -> bool:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    log.append({"cmd": " ".join(cmd), "rc": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
                "tail": (proc.stdout + proc.stderr)[-1500:]})
    print(f"[rc {proc.returncode}, {log[-1]['seconds']} s] {log[-1]['cmd']}", flush=True)
    return proc.returncode == 0


def check_engine(engine: str, models: dict[str, Path], out: Path, args) -> dict:
    """Train CLIP and ViT through configs/<engine>.yaml, reload each saved model, evaluate it."""
    if engine in NEEDS and importlib.util.find_spec(NEEDS[engine]) is None:
        return {"status": f"skipped: {NEEDS[engine]} is not installed"}
    steps: list[dict] = []
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" /
              f"{engine}.yaml"), "--num_processes", str(args.num_processes), "--mixed_precision", args.mixed_precision]
    ok = True
    for kind, script, extra in (("clip", "train_clip.py", ["--caption_level", "t1"]), ("vit", "train_vit.py", [])):
        run_dir = out / f"{engine}-{kind}"
        ok &= run(launch + [str(ROOT / script), "--model_name_or_path", str(models[kind]), "--output_dir",
                            str(run_dir), *TRAIN, *extra], steps, args.timeout)
        reload = ("from transformers import AutoModel, AutoModelForImageClassification as C; import sys; "
                  f"m = ({'AutoModel' if kind == 'clip' else 'C'}).from_pretrained(sys.argv[1]); "
                  "print(type(m).__name__, sum(p.numel() for p in m.parameters()))")
        ok &= run([sys.executable, "-c", reload, str(run_dir)], steps, args.timeout)
    flag = ["--model_name_or_path", f"t1={out / f'{engine}-clip'}", "--vision_model_name_or_path",
            str(out / f"{engine}-vit"), "--tasks", "task1,task2"]
    ok &= run([sys.executable, str(ROOT / "eval_benchmark.py"), "--data_dir", "synthetic", *flag,
               "--max_eval_samples", "48", "--no_progress", "--output_dir", str(out / f"{engine}-bench")],
              steps, args.timeout)
    results = out / f"{engine}-bench" / "results.json"
    summary = json.loads(results.read_text()) if results.is_file() else {}
    return {"status": "passed" if ok else "failed", "steps": steps,
            "task1_n": (summary.get("task1") or {}).get("n"), "data": "synthetic (demo data, not SteelDefectX)"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="fsdp,deepspeed_zero2", help="config files of configs/, comma separated")
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--mixed_precision", default="bf16")
    p.add_argument("--timeout", type=int, default=240, help="seconds per step")
    p.add_argument("--output", default=None, help="folder of the runs and gpu_engines.json (default: $OUT or ./)")
    args = p.parse_args(argv)
    out = Path(args.output or os.environ.get("OUT", ".")) / "gpu_engines"
    out.mkdir(parents=True, exist_ok=True)
    import torch

    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "engines": {}}
    models = build_models(out / "models")
    for engine in args.engines.split(","):
        report["engines"][engine] = check_engine(engine, models, out, args)
        print(engine, report["engines"][engine]["status"], flush=True)
    (out.parent / "gpu_engines.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
