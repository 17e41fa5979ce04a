"""The main job: one offline command from data to report.

    python -m sdx pipeline                                   # embedded synthetic data, small random models
    python -m sdx pipeline --data_dir ../shared/data/steeldefectx-real-subset --output_dir outputs/real \\
        --external_data ../shared/data/transfer-magnetic-tile/magnetic_tile
    python -m sdx pipeline --data_dir /data/SteelDefectX \\
        --vit_model_name_or_path google/vit-base-patch16-224 --clip_model_name_or_path openai/clip-vit-base-patch16
    python -m sdx pipeline run.yaml                          # the same arguments from a YAML or JSON file

Steps (each one calls the `main(argv)` of the matching command line, so nothing here is a second code path):

1. data     build the dataset with the builder (``steeldefectx``); print its build report; draw a gallery of
            images with their masks and every text level (``OUT/gallery.png``)
2. models   train, side by side (``--jobs`` processes; by default one per CPU, one on a GPU machine), the
            vision-only classifier (``train_vit.py``: a random model of the preset's family, a small CNN for demo
            and a tiny ViT otherwise, ``--vit_model_type``, unless a checkpoint is given), one CLIP per caption
            level in ``--clip_levels`` (``train_clip.py``), for the Tx-Ty matrix, and one more on the seen
            classes only (every 4th class with images, from the 2nd, held out), for the cross-class zero-shot
            transfer of task 4; with several processes each one's output goes to ``OUT/logs/<name>.log``
3. bench    run every benchmark task on them (``eval_benchmark.py``), with any ``--external_data`` set as a
            transfer (and localization) target: ``OUT/bench/report.md`` and its plots; Task 2 also gets the
            paper's rows, a CLIP-Adapter per level of ``--adapter_levels`` trained on the cached features of the
            frozen base (``--clip_model_name_or_path``, else a random-init CLIP saved once in ``OUT/clip_base``)

Every number in the report names its data (synthetic data is flagged as such, never passed off as real) and
each model's origin (random initialisation or the pretrained checkpoint it started from).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from transformers import HfArgumentParser

from sdx.bench import cli as bench_cli
from sdx.data import levels as T
from sdx.data.builder import build_report, format_report, load_steeldefectx
from sdx.data.layout import data_source, is_synthetic_dir
from sdx.data.synthetic import default_dataset_dir
from sdx.redact import redact
from sdx.report.gallery import data_gallery
from sdx.train import clip as train_clip
from sdx.train.args import check_ranges
from sdx.train.outputs import output_lock, refuse_foreign_folder
from sdx.train.parallel import TrainingJob, auto_workers, run_trainings
from sdx.train.runmeta import RunMetadata

PIPELINE_FILE = "pipeline.json"

logger = logging.getLogger(__name__)

VIT_COMPACT = "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256"
CNN_COMPACT = "embedding_size=32,hidden_sizes=[32,64,128,256],depths=[1,1,1,1]"  # a 4-stage ResNet, 1.2 M weights
PRESETS = {
    # quick: the README's first command (minutes on 2 CPU cores), on the 25-class synthetic data, 60 train images
    # per class (more images, not more epochs, is what the small models needed). The vision-only model is a small
    # CNN at 96 px: a from-scratch ViT stays near chance in that budget (docs/training.md, "The demo's models");
    # --vit_model_type vit trains the ViT instead. The CLIPs' vision towers are ViTs with 8 px patches (64 tokens).
    "demo": {"vit_model_type": "resnet", "vit_epochs": 16, "vit_image_size": 96, "clip_model_size": "tiny",
             "clip_epochs": 30, "clip_vision_config": "patch_size=8", "image_size": 64, "batch_size": 32,
             "vit_lr": 5e-3, "clip_lr": 2e-3, "vit_config": CNN_COMPACT, "shots": "1,2,4", "seeds": "1,2",
             "max_train_samples": None, "max_eval_samples": None, "synthetic_size": (60, 10)},
    # smallest: tests (checks the plumbing, learns nothing)
    "smoke": {"vit_model_type": "vit", "vit_epochs": 1, "vit_image_size": None, "clip_model_size": "tiny",
              "clip_epochs": 1, "clip_vision_config": None, "image_size": 32, "batch_size": 8, "vit_lr": 1e-3,
              "clip_lr": 1e-3, "vit_config": VIT_COMPACT,
              "shots": "1,2", "seeds": "1", "max_train_samples": 48, "max_eval_samples": 24,
              "synthetic_size": (12, 6)},
    # the full protocol of the benchmark (k up to 16, three seeds), for a GPU or pretrained checkpoints
    "full": {"vit_model_type": "vit", "vit_epochs": 30, "vit_image_size": None, "clip_model_size": "tiny",
             "clip_epochs": 20, "clip_vision_config": None, "image_size": 224, "batch_size": 32, "vit_lr": 1e-3,
             "clip_lr": 1e-4, "vit_config": None,
             "shots": "1,2,4,8,16", "seeds": "1,2,3", "max_train_samples": None, "max_eval_samples": None,
             "synthetic_size": (100, 40)},
}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class PipelineArguments:
    """The main job's arguments; every preset value can be overridden by its own flag."""

    data_dir: str = field(default="synthetic", metadata=_help(
        "'synthetic' (the embedded generator, no download), a folder in the official layout (e.g. "
        "../shared/data/steeldefectx-real-subset), or 'hub' for the Hub release"))
    output_dir: str = field(default="outputs/demo", metadata=_help("where models, gallery and report go"))
    preset: Literal["demo", "smoke", "full"] = field(default="demo", metadata=_help(
        "sizes and epochs: demo (minutes on a CPU), smoke (tests), full (the whole protocol)"))
    synthetic_size: list[int] | None = field(default=None, metadata={
        "help": "images per class of the synthetic data, TRAIN VAL (default: the preset's)",
        "metavar": ("TRAIN", "VAL")})
    vit_model_name_or_path: str | None = field(default=None, metadata=_help(
        "image classifier to fine-tune (Hub id or local dir); default: a random tiny ViT"))
    vit_model_type: Literal["vit", "resnet", "convnext"] | None = field(default=None, metadata=_help(
        "architecture of the random vision model (default: the preset's: a small CNN for demo, a tiny ViT for "
        "smoke and full)"))
    vit_config: str | None = field(default=None, metadata=_help(
        "config overrides of the random vision model, e.g. 'hidden_size=96,num_hidden_layers=4' (default: the "
        "preset's when --vit_model_type is the preset's, else none)"))
    clip_model_size: Literal["tiny", "small", "base"] | None = field(default=None, metadata=_help(
        "size preset of the random CLIPs (default: the preset's, tiny)"))
    clip_vision_config: str | None = field(default=None, metadata=_help(
        "vision-tower overrides of the random CLIPs, e.g. 'patch_size=8,hidden_size=64' (default: the preset's)"))
    clip_model_name_or_path: str | None = field(default=None, metadata=_help(
        "CLIP to fine-tune (Hub id or local dir); default: a random tiny CLIP with a local tokenizer"))
    clip_levels: str = field(default="t0,t1,t4", metadata=_help(
        "caption levels to train one CLIP each with (rows of the Tx-Ty matrix)"))
    clip_method: Literal["full", "lora", "adapter"] = "full"
    adapter_levels: str = field(default="t0,t1,t2,t3,t4", metadata=_help(
        "levels of Task 2's CLIP-Adapter rows, trained by the benchmark on the frozen base's cached features "
        "('none' skips them)"))
    transfer_level: str = field(default="t1", metadata=_help(
        "caption level of the extra CLIP trained on seen classes only (task 4 cross-class); 'none' skips it"))
    tasks: str = field(default="all", metadata=_help("benchmark tasks (see eval_benchmark.py --help)"))
    external_data: list[str] = field(default_factory=list, metadata={
        "action": "extend", "metavar": "DIR[=DESCRIPTIONS.json]",
        "help": "an external image set for zero-shot transfer (task 4) and, where it has masks, localization; "
                "passed to eval_benchmark.py's --external_data (e.g. "
                "../shared/data/transfer-magnetic-tile/magnetic_tile). Repeatable."})
    jobs: int = field(default=0, metadata=_help(
        "models trained at the same time, each in its own process with an equal share of the CPU threads "
        "(0: one per CPU up to the number of models, and 1 when a GPU is present; 1: one after another in this "
        "process, output on the console)"))
    seed: int = 42
    overwrite_output_dir: bool = field(default=False, metadata=_help("replace an earlier run in --output_dir"))
    vit_epochs: int | None = field(default=None, metadata=_help("override the preset's vit_epochs"))
    clip_epochs: int | None = field(default=None, metadata=_help("override the preset's clip_epochs"))
    image_size: int | None = field(default=None, metadata=_help(
        "override the preset's image_size (the CLIPs', and the vision-only model's where the preset names none)"))
    vit_image_size: int | None = field(default=None, metadata=_help(
        "image size of the random vision-only model (default: the preset's: 96 for demo, else --image_size)"))
    batch_size: int | None = field(default=None, metadata=_help("override the preset's batch_size"))
    max_train_samples: int | None = field(default=None, metadata=_help("override the preset's max_train_samples"))
    max_eval_samples: int | None = field(default=None, metadata=_help("override the preset's max_eval_samples"))
    shots: str | None = field(default=None, metadata=_help("override the preset's few-shot k list, e.g. 1,2,4,8,16"))
    seeds: str | None = field(default=None, metadata=_help("override the preset's few-shot seeds, e.g. 1,2,3"))

    def __post_init__(self):
        if self.synthetic_size is not None and len(self.synthetic_size) != 2:
            raise ValueError(f"--synthetic_size takes two numbers, TRAIN VAL; got {self.synthetic_size}")
        for item in self.external_data:  # checked now, not after the training steps
            folder = item.partition("=")[0]
            if not Path(folder).is_dir():
                raise ValueError(f"--external_data: folder {folder} not found")
        positive = ("vit_epochs", "clip_epochs", "image_size", "vit_image_size", "batch_size", "max_train_samples",
                    "max_eval_samples")
        check_ranges(self, {"jobs": ">= 0", **dict.fromkeys(positive, ">= 1")})
        for flag, value in (("--shots", self.shots), ("--seeds", self.seeds)):
            if value is not None:
                bench_cli.int_list(flag, value)

    def settings(self) -> dict[str, Any]:
        """The preset's values with the flags given here (not None) in their place."""
        settings = dict(PRESETS[self.preset])
        if self.vit_model_type not in (None, settings["vit_model_type"]):
            settings["vit_config"] = None   # the preset's overrides belong to its own architecture
        for key in settings:
            value = getattr(self, key, None)
            if value is not None:
                settings[key] = tuple(value) if key == "synthetic_size" else value
        return settings


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(PipelineArguments, prog="python -m sdx pipeline", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_args(argv: Sequence[str] | None = None) -> PipelineArguments:
    """Flags, or one YAML / JSON file of them (the transformers examples' convention)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])[0]
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])[0]
    return parser.parse_args_into_dataclasses(argv)[0]


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def _optional(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _sample_limits(s: dict[str, Any]) -> list[str]:
    return [*_optional("--max_train_samples", s["max_train_samples"]),
            *_optional("--max_eval_samples", s["max_eval_samples"])]


def _vit_argv(args: PipelineArguments, s: dict[str, Any], data_dir: str, vit_dir: Path) -> list[str]:
    argv = ["--data_dir", data_dir, "--output_dir", str(vit_dir), "--seed", str(args.seed),
            *(["--overwrite_output_dir"] if args.overwrite_output_dir else []),
            "--num_train_epochs", str(s["vit_epochs"]), "--per_device_train_batch_size", str(s["batch_size"]),
            "--hflip", "--vflip", "--learning_rate", str(s["vit_lr"]), "--lr_scheduler_type", "cosine",
            "--warmup_steps", "30", "--weight_decay", "0.05", *_sample_limits(s)]
    if args.vit_model_name_or_path:
        return argv + ["--model_name_or_path", args.vit_model_name_or_path, "--ignore_mismatched_sizes"]
    image_size = s["vit_image_size"] or s["image_size"]
    argv += ["--model_type", s["vit_model_type"], "--model_size", "tiny", "--image_size", str(image_size),
             *_optional("--config_overrides", s["vit_config"])]
    if s["vit_model_type"] == "vit":
        argv += ["--patch_size", "8" if image_size <= 64 else "16"]
    return argv


def _clip_argv(args: PipelineArguments, s: dict[str, Any], data_dir: str, clip_dir: Path, level: str,
               extra: list[str]) -> list[str]:
    argv = ["--data_dir", data_dir, "--output_dir", str(clip_dir), "--seed", str(args.seed),
            *(["--overwrite_output_dir"] if args.overwrite_output_dir else []), *extra,
            "--caption_level", level, "--method", args.clip_method,
            *(["--recipe", "paper"] if args.clip_method == "adapter" else []),   # Adam, constant schedule
            "--num_train_epochs", str(s["clip_epochs"]), "--learning_rate", str(s["clip_lr"]),
            "--warmup_steps", "30", "--per_device_train_batch_size", str(s["batch_size"]), *_sample_limits(s)]
    if args.clip_model_name_or_path:
        return argv + ["--model_name_or_path", args.clip_model_name_or_path]
    return argv + ["--model_size", s["clip_model_size"], "--image_size", str(s["image_size"]),
                   *_optional("--vision_config_overrides", s["clip_vision_config"])]


def _bench_argv(args: PipelineArguments, s: dict[str, Any], data_dir: str, bench_dir: Path, vit_dir: Path,
                clip_dirs: dict[str, tuple[str, Path]], adapter_base: str | None = None) -> list[str]:
    argv = ["--data_dir", data_dir, "--output_dir", str(bench_dir), "--tasks", args.tasks,
            "--vision_model_name_or_path", str(vit_dir),
            "--shots", str(s["shots"] if args.shots is None else args.shots),
            "--seeds", str(s["seeds"] if args.seeds is None else args.seeds),
            *_optional("--max_eval_samples", s["max_eval_samples"])]
    for item in args.external_data:
        argv += ["--external_data", item]
    for name, (level, path) in clip_dirs.items():
        argv += ["--model_name_or_path", f"{level}:{name}={path}"]
    if adapter_base:
        argv += ["--adapter_base_model", adapter_base, "--adapter_levels", args.adapter_levels]
    return argv


def _adapter_base(args: PipelineArguments, s: dict[str, Any], ds, out: Path, data_dir: str) -> str | None:
    """The frozen CLIP of Task 2's adapter rows: --clip_model_name_or_path, else a random-init CLIP (the
    trainer's own preset and tokenizer) saved once in OUT/clip_base; None when --adapter_levels is 'none'."""
    if args.adapter_levels.strip().lower() == "none":
        return None
    if args.clip_model_name_or_path:
        return args.clip_model_name_or_path
    m = train_clip.ClipModelArguments(model_size="tiny", image_size=s["image_size"])
    model, processor, origin = train_clip.build_clip(m, args.seed, ds["train"], ds)
    model.save_pretrained(out / "clip_base")
    processor.save_pretrained(out / "clip_base")
    RunMetadata(kind="clip", origin=origin, method="none (frozen base)", seed=args.seed, data=data_dir,
                synthetic=is_synthetic_dir(data_dir)).write(out / "clip_base")
    return str(out / "clip_base")


def _clip_runs(args: PipelineArguments, class_names: list[str]) -> tuple[list[tuple[str, str, list[str]]], list]:
    """([(run name, caption level, extra flags)], unseen classes): one CLIP per level, and one on seen classes."""
    levels = T.parse_levels(args.clip_levels, "--clip_levels")
    unseen = sorted(set(class_names))[1::4]
    runs = [(f"clip_{level}", level, []) for level in levels]
    if args.transfer_level != "none" and unseen:
        level = T.normalize_level(args.transfer_level)
        runs.append((f"clip_{level}_seen", level, ["--exclude_classes", *unseen]))
    return runs, unseen


def _longest_first(runs: list[tuple[str, str, list[str]]]) -> list[tuple[str, str, list[str]]]:
    """The CLIP runs in the order side-by-side training starts them: longer captions first (a T4 epoch costs about
    1.5x a T0 one on the demo), the seen-classes run, on fewer images, last."""
    return sorted(runs, key=lambda r: (bool(r[2]), -T.LEVELS.index(r[1]) if r[1] in T.LEVELS else 0))


def _prepare(args: PipelineArguments, s: dict[str, Any]) -> tuple[Path, str]:
    """(the output folder, emptied or new; the data folder every step reads)."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PIPELINE_FILE).write_text(json.dumps(redact({"finished": False, "settings": s, "data_dir": args.data_dir}),
                                                default=str))  # marks the folder as ours; replaced at the end
    if data_source(args.data_dir) == "synthetic":  # generated once per size, then cached
        n_train, n_val = s["synthetic_size"]
        return out, str(default_dataset_dir(train_per_class=n_train, val_per_class=n_val, progress=True))
    return out, str(args.data_dir)


def run_pipeline(args: PipelineArguments) -> dict:
    """The four steps into --output_dir: new, empty, or an earlier pipeline run with --overwrite_output_dir (a
    user's folder is refused); one pipeline at a time writes into it (a lock)."""
    out = Path(args.output_dir)
    if refuse_foreign_folder(out, (PIPELINE_FILE,), tool="pipeline run") and not args.overwrite_output_dir:
        raise SystemExit(f"{out} already holds a run: pass --overwrite_output_dir or choose another --output_dir")
    with output_lock(out):
        return _run_steps(args)


def _run_steps(args: PipelineArguments) -> dict:
    s = args.settings()
    out, data_dir = _prepare(args, s)
    timings: dict[str, float] = {}

    t = _step("1/3 data")
    ds = load_steeldefectx(data_dir, "default")
    print(format_report(build_report(ds)))
    gallery = data_gallery(ds, out / "gallery.png")
    print(f"gallery: {gallery}")
    timings["data_s"] = time.perf_counter() - t

    runs, unseen = _clip_runs(args, ds["train"]["class_name"])
    jobs = [TrainingJob("vit", "vit", tuple(_vit_argv(args, s, data_dir, out / "vit"))),
            *(TrainingJob(name, "clip", tuple(_clip_argv(args, s, data_dir, out / name, level, extra)))
              for name, level, extra in _longest_first(runs))]
    workers = args.jobs or auto_workers(len(jobs))
    t = _step(f"2/3 vision-only classifier (train_vit.py) and a CLIP per caption level "
              f"{', '.join(r[1].upper() for r in runs if not r[2])}"
              + (f", and {runs[-1][0]} without {unseen}" if runs and runs[-1][2] else "") + " (train_clip.py)")
    trained = run_trainings(jobs, workers, out / "logs")
    vit = trained["vit"][0]
    clips = {name: trained[name][0] for name, _, _ in runs}
    clip_dirs = {name: (level, out / name) for name, level, _ in runs}
    timings["models_s"] = time.perf_counter() - t
    model_times = {name: round(seconds, 1) for name, (_, seconds) in trained.items()}

    t = _step("3/3 benchmark (eval_benchmark.py)")
    base = _adapter_base(args, s, ds, out, data_dir)
    results = bench_cli.main(_bench_argv(args, s, data_dir, out / "bench", out / "vit", clip_dirs, base))
    timings["bench_s"] = time.perf_counter() - t

    summary = {"output_dir": str(out), "gallery": str(gallery), "report": results["meta"]["outputs"]["report"],
               "vit": vit, "clip": clips, "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "model_times_s": model_times, "workers": workers,
               "settings": s, "data_dir": args.data_dir, "external_data": list(args.external_data)}
    (out / PIPELINE_FILE).write_text(json.dumps(redact(summary), indent=2, default=str))
    print(f"\nDone in {sum(timings.values()):.0f} s.\n  report:   {summary['report']} (plots beside it)\n"
          f"  gallery:  {summary['gallery']}\n  summary:  {out / PIPELINE_FILE}")
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_pipeline(parse_args(argv))


if __name__ == "__main__":
    main()
