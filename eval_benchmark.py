#!/usr/bin/env python
"""SteelDefectX benchmark: the paper's four tasks plus retrieval and text-guided localization, in one report.

Example (paths are local checkpoint folders written by train_clip.py / train_vit.py, or Hub ids)::

    python eval_benchmark.py --data_dir synthetic \\
        --model_name_or_path t1=outputs/clip_t1 --model_name_or_path t3=outputs/clip_t3 \\
        --vision_model_name_or_path outputs/vit --tasks all --output_dir outputs/bench

writes outputs/bench/results.json, outputs/bench/report.md and PNG plots. Every image is encoded once per model
and cached under --cache_dir (default OUTPUT_DIR/cache); a re-run with the same models and data encodes
nothing. The protocols, every rule and every grid are documented in sdx/tasks.py; the report in sdx/report.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sdx.tasks import DEFAULT_SEEDS, DEFAULT_SHOTS, TASKS, Benchmark, parse_model_arg
from sdx.text import LEVELS, normalize_level


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval_benchmark.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", action="append", default=[], metavar="[tX[:NAME]=]PATH",
                   help="CLIP-family checkpoint (local dir or Hub id) for tasks 2-4, retrieval and localization. "
                        "Repeat it for the Tx-Ty matrix; prefix a level tag (t0..t4 or an alias, e.g. "
                        "'t3=outputs/clip_t3', optionally 't3:name=PATH') to state the caption level the model was "
                        "trained with; without a tag the level is read from the checkpoint (sdx_caption_level).")
    p.add_argument("--vision_model_name_or_path", default=None, metavar="PATH",
                   help="image-classification checkpoint for Task 1 (config.id2label must name the dataset classes)")
    p.add_argument("--data_dir", default="synthetic",
                   help="SteelDefectX folder in the official layout, 'synthetic' for the embedded demo data "
                        "(default), or 'hub' for the Hub release (needs network)")
    p.add_argument("--dataset_config", default="default",
                   help="builder config: default, t0, coarse, fine, attributes, structured (caption column only; "
                        "all levels are read from their own columns)")
    p.add_argument("--dataset_cache_dir", default=None, help="cache folder of the datasets builder")
    p.add_argument("--validation_fraction", type=float, default=None,
                   help="carve-out of official train used for every selection (builder default 0.1)")
    p.add_argument("--tasks", default="all",
                   help=f"'all' or a comma list of: {', '.join(TASKS)} (task1 = vision-only, task2 = Tx-Ty, "
                        "task3 = zero/few-shot, task4 = transfer)")
    p.add_argument("--levels", default=",".join(LEVELS), help="prompt levels evaluated (default t0..t4)")
    p.add_argument("--shots", type=_int_list, default=list(DEFAULT_SHOTS), help="few-shot k values (default 1,2,4,8,16)")
    p.add_argument("--seeds", type=_int_list, default=list(DEFAULT_SEEDS), help="few-shot seeds (default 1,2,3)")
    p.add_argument("--external_data", action="append", default=[], metavar="DIR[=DESCRIPTIONS.json]",
                   help="Task 4a external set: DIR holds one sub-folder of images per class; the JSON "
                        "{class: description} defaults to DIR/class_descriptions.json. Repeatable.")
    p.add_argument("--unseen_classes", default=None,
                   help="Task 4b: comma list of classes held out in training (default: the checkpoint's "
                        "sdx_exclude_classes / sdx_train_classes, else a flagged fallback)")
    p.add_argument("--output_dir", required=True, help="where results.json, report.md and the plots go")
    p.add_argument("--cache_dir", default=None, help="embedding cache (default OUTPUT_DIR/cache)")
    p.add_argument("--batch_size", type=int, default=32, help="encoder batch size")
    p.add_argument("--max_eval_samples", type=int, default=None,
                   help="seeded subsample of validation and test (for quick runs; flagged in the report)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return p


def _parse_tasks(text: str) -> list[str]:
    if text.strip() == "all":
        return list(TASKS)
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"--tasks: unknown task(s) {unknown}; use 'all' or a comma list of {', '.join(TASKS)}")
    return tasks


def describe_data(data_dir: str, ds) -> dict:
    """What the data is, for the report: synthetic sets are flagged."""
    from sdx.dataset import build_report

    info = {"data_dir": data_dir}
    synthetic = data_dir == "synthetic"
    path = Path(data_dir)
    if not synthetic and path.is_dir() and (path / "SYNTHETIC.md").exists():
        synthetic = True
    if synthetic:
        desc = "synthetic images from sdx.synthetic (NOT SteelDefectX)"
    elif data_dir in ("hub", "None"):
        desc = "the SteelDefectX release from the Hub"
    else:
        desc = f"images in the SteelDefectX layout from {path.name} (no SYNTHETIC.md marker: not generated data)"
    build = build_report(ds)
    if build.get("splits"):
        desc += "; builder splits " + ", ".join(f"{k} {v}" for k, v in build["splits"].items())
    fallbacks = build.get("fallbacks") or {}
    if any(fallbacks.values()):
        desc += "; caption fallbacks " + json.dumps(fallbacks)
    info.update(synthetic=synthetic, description=desc, classes_with_images=sorted(set(ds["train"]["class_name"])))
    return info


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tasks = _parse_tasks(args.tasks)
    levels = [normalize_level(lv) for lv in args.levels.split(",") if lv.strip()]
    if not args.model_name_or_path and [t for t in tasks if t != "task1"]:
        raise SystemExit("--model_name_or_path is required for tasks other than task1 "
                         f"(asked: {', '.join(tasks)})")
    if "task1" in tasks and not args.vision_model_name_or_path and args.tasks != "all":
        raise SystemExit("task1 needs --vision_model_name_or_path (an image-classification checkpoint)")

    from sdx.dataset import load_steeldefectx
    from sdx.report import write_report

    overrides = {}
    if args.validation_fraction is not None:
        overrides["validation_fraction"] = args.validation_fraction
    data_dir = None if args.data_dir == "hub" else args.data_dir
    ds = load_steeldefectx(data_dir, args.dataset_config, cache_dir=args.dataset_cache_dir, **overrides)

    out = Path(args.output_dir)
    external = []
    for item in args.external_data:
        folder, _, desc = item.partition("=")
        external.append((folder, desc or None))
    bench = Benchmark(
        ds, clip_models=[parse_model_arg(m) for m in args.model_name_or_path],
        vision_model=args.vision_model_name_or_path, cache_dir=args.cache_dir or out / "cache",
        batch_size=args.batch_size, shots=args.shots, seeds=args.seeds, levels=levels, external=external,
        unseen_classes=[c.strip() for c in args.unseen_classes.split(",")] if args.unseen_classes else None,
        max_eval_samples=args.max_eval_samples, progress=not args.no_progress, device=args.device)
    results = bench.run(tasks)
    results["meta"] = {"data": describe_data(args.data_dir, ds), "tasks": tasks, "levels": levels,
                       "shots": args.shots, "seeds": args.seeds, "max_eval_samples": args.max_eval_samples,
                       "splits": results.pop("splits"), "dataset_config": args.dataset_config,
                       "argv": list(sys.argv[1:] if argv is None else argv)}
    results["meta"]["data"]["config"] = args.dataset_config
    paths = write_report(results, out, bench.artifacts)
    results["meta"]["outputs"] = paths
    print(f"wrote {paths['report']} and {paths['results']} ({len(paths['plots'])} plots)")
    return results


if __name__ == "__main__":
    main()
