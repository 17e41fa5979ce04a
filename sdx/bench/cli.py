"""eval_benchmark.py's command line: typed arguments (HfArgumentParser), data loading, the run and the report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from sdx.bench.fewshot import DEFAULT_SEEDS, DEFAULT_SHOTS
from sdx.bench.models import ModelSpec, parse_model_arg
from sdx.bench.tasks import TASKS, Benchmark
from sdx.data import naming
from sdx.data.builder import build_report
from sdx.data.levels import LEVELS, parse_levels
from sdx.data.naming import DatasetArguments, choose_data
from sdx.data.source import level_presence_line, load_rows, text_level_report
from sdx.models.clip import TRUNCATION_WARNING_SHARE
from sdx.redact import redact_argv
from sdx.report.markdown import write_report
from sdx.train.args import check_ranges
from sdx.train.outputs import output_lock, refuse_foreign_folder

EVAL_ARGS = "eval_args.json"
EVAL_MARKERS = (EVAL_ARGS, "results.json")  # written at the start / the end of an evaluation

CLI_DESCRIPTION = """SteelDefectX benchmark: the paper's four tasks plus retrieval and text-guided localization, in one
report.

Example (paths are local checkpoint folders written by train_clip.py / train_vit.py, or Hub ids)::

    python eval_benchmark.py --data_dir synthetic \\
        --model_name_or_path t1=outputs/clip_t1 --model_name_or_path t3=outputs/clip_t3 \\
        --vision_model_name_or_path outputs/vit --tasks all --output_dir outputs/bench

writes outputs/bench/results.json, outputs/bench/report.md and PNG plots. Every image is encoded once per model
and cached under --embedding_cache_dir (default OUTPUT_DIR/cache); a re-run with the same models and data encodes
nothing. The arguments may also come from one JSON or YAML file (python eval_benchmark.py args.yaml). The
protocols, every rule and every grid are documented in docs/benchmark.md.
"""


def int_list(flag: str, text: str) -> list[int]:
    """Comma-separated integers >= 1 of `flag`; ValueError naming the flag otherwise."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ValueError(f"{flag}: values must be >= 1, got {text!r}")
    return values


def _join(values: Sequence) -> str:
    return ",".join(str(v) for v in values)


@dataclass
class BenchmarkArguments(DatasetArguments):
    """The evaluator's arguments (python eval_benchmark.py --help); --dataset_name and its column / split flags
    come from sdx.data.naming.DatasetArguments."""

    output_dir: str = field(metadata={"help": "where results.json, report.md and the plots go"})
    model_name_or_path: list[str] = field(default_factory=list, metadata={
        "action": "extend", "metavar": "[tX[:NAME]=]PATH",
        "help": "CLIP-family checkpoint (local dir or Hub id) for tasks 2-4, retrieval and localization. Repeat it "
                "for the Tx-Ty matrix; prefix a level tag (t0..t4 or an alias, e.g. 't3=outputs/clip_t3', "
                "optionally 't3:name=PATH') to state the caption level the model was trained with; without a tag "
                "the level is read from the checkpoint's run metadata (sdx_run.json)."})
    adapter_base_model: list[str] = field(default_factory=list, metadata={
        "action": "extend", "metavar": "PATH",
        "help": "frozen CLIP (local dir or Hub id) for Task 2's CLIP-Adapter rows, repeatable: one adapter per level "
                "of --adapter_levels is trained on its cached training-image features (the paper's Tx-Ty setting); "
                "its own zero-shot row is shown beside them"})
    adapter_levels: str = field(default=_join(LEVELS), metadata={
        "help": "training levels of the Task 2 adapter rows (with --adapter_base_model)"})
    vision_model_name_or_path: str | None = field(default=None, metadata={
        "metavar": "PATH",
        "help": "image-classification checkpoint for Task 1 (config.id2label must name the dataset classes)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "SteelDefectX folder in the official layout, 'synthetic' for the embedded demo data, or 'hub' for "
                "the Hub release (needs network); default: synthetic, unless --dataset_name is given"})
    dataset_config_name: str = field(default="default", metadata={
        "help": "builder config (default, t0, coarse, fine, attributes, structured), or with --dataset_name the "
                "dataset's config (caption column only; all levels are read from their own columns)"})
    cache_dir: str | None = field(default=None, metadata={"help": "cache folder of the datasets builder"})
    validation_fraction: float | None = field(default=None, metadata={
        "help": "carve-out of official train used for every selection (builder default 0.1)"})
    tasks: str = field(default="all", metadata={
        "help": f"'all' or a comma list of: {', '.join(TASKS)} (task1 = vision-only, task2 = Tx-Ty, task3 = "
                "zero/few-shot, task4 = transfer)"})
    levels: str = field(default=_join(LEVELS), metadata={"help": "prompt levels evaluated"})
    shots: str = field(default=_join(DEFAULT_SHOTS), metadata={"help": "few-shot k values"})
    seeds: str = field(default=_join(DEFAULT_SEEDS), metadata={"help": "few-shot seeds"})
    fewshot_validation: int | None = field(default=None, metadata={
        "metavar": "N",
        "help": "strict few-shot protocol: select every hyper-parameter on N validation images per class (the "
                "builder's N-shot draw from the validation split, per seed); default: the whole validation split"})
    external_data: list[str] = field(default_factory=list, metadata={
        "action": "extend", "metavar": "DIR[=DESCRIPTIONS.json]",
        "help": "Task 4a external set: DIR holds one sub-folder of images per class; the JSON {class: description} "
                "defaults to DIR/class_descriptions.json. Where the set has masks (masks/<class>/<image stem>.png "
                "inside DIR or beside it), localization scores it too. Repeatable."})
    unseen_classes: str | None = field(default=None, metadata={
        "help": "Task 4b: comma list of classes held out in training; when unset, the checkpoint's run metadata, "
                "else a flagged fallback"})
    embedding_cache_dir: str | None = field(default=None, metadata={
        "help": "embedding cache of the evaluator; when unset, OUTPUT_DIR/cache"})
    batch_size: int = field(default=32, metadata={"help": "encoder batch size"})
    max_seq_length: int | None = field(default=None, metadata={
        "help": "token budget of every text encoded (prompts, captions); default: each model's text positions "
                "(text_config.max_position_embeddings). Truncated texts are counted per level in the report"})
    truncation_warning_share: float = field(default=TRUNCATION_WARNING_SHARE, metadata={
        "help": "warn (not an error) when more than this share of a text level's texts is truncated"})
    max_eval_samples: int | None = field(default=None, metadata={
        "help": "seeded subsample of validation and test (for quick runs; flagged in the report)"})
    device: str | None = field(default=None, metadata={
        "help": "torch device; when unset, cuda when available, else cpu"})
    no_progress: bool = field(default=False, metadata={"help": "hide progress bars"})

    def __post_init__(self):
        """Check the arguments now, at parse time, before anything is written (each check raises a ValueError
        naming its flag)."""
        check_ranges(self, {"batch_size": ">= 1", "max_eval_samples": ">= 1", "validation_fraction": "in [0, 1)"})
        super().__post_init__()
        self.data_dir = choose_data(self.data_dir, self.dataset_name)
        tasks = self.task_list
        _ = self.level_list, self.shot_list, self.seed_list, self.adapter_level_list
        if not self.model_name_or_path and [t for t in tasks if t not in ("task1", "task2")
                                            or (t == "task2" and not self.adapter_base_model)]:
            raise ValueError(f"--model_name_or_path is required for tasks other than task1 (asked: {', '.join(tasks)})")
        if self.fewshot_validation is not None and self.fewshot_validation < 1:
            raise ValueError(f"--fewshot_validation: expected an integer >= 1, got {self.fewshot_validation}")
        if "task1" in tasks and not self.vision_model_name_or_path and self.tasks.strip() != "all":
            raise ValueError("task1 needs --vision_model_name_or_path (an image-classification checkpoint)")
        if self.max_seq_length is not None and self.max_seq_length < 3:
            raise ValueError("--max_seq_length must be >= 3 (start token, one token, end token)")
        if not 0.0 <= self.truncation_warning_share <= 1.0:
            raise ValueError("--truncation_warning_share must lie in [0, 1]")

    @property
    def task_list(self) -> list[str]:
        if self.tasks.strip() == "all":
            return list(TASKS)
        tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"--tasks: unknown task(s) {unknown}; use 'all' or a comma list of {', '.join(TASKS)}")
        return tasks

    @property
    def level_list(self) -> list[str]:
        return parse_levels(self.levels, "--levels")

    @property
    def adapter_level_list(self) -> list[str]:
        return parse_levels(self.adapter_levels, "--adapter_levels")

    @property
    def shot_list(self) -> list[int]:
        return int_list("--shots", self.shots)

    @property
    def seed_list(self) -> list[int]:
        return int_list("--seeds", self.seeds)

    @property
    def model_specs(self) -> list[ModelSpec]:
        return [parse_model_arg(m) for m in self.model_name_or_path]

    @property
    def external_sets(self) -> list[tuple[str, str | None]]:
        return [(folder, desc or None) for folder, _, desc in (item.partition("=") for item in self.external_data)]

    @property
    def unseen_list(self) -> list[str] | None:
        return [c.strip() for c in self.unseen_classes.split(",")] if self.unseen_classes else None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (HfArgumentParser's choice) and the description's example kept as written."""


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(BenchmarkArguments, prog="eval_benchmark.py", description=CLI_DESCRIPTION,
                            formatter_class=_HelpFormatter)


def parse_benchmark_args(argv: Sequence[str] | None = None) -> BenchmarkArguments:
    """The arguments from the command line, or from one JSON / YAML file given as the only argument."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            return parser.parse_json_file(argv[0])[0]
        if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
            return parser.parse_yaml_file(argv[0])[0]
        return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)[0]
    except ValueError as err:  # a check of BenchmarkArguments, or arguments the parser does not know
        raise SystemExit(f"eval_benchmark.py: error: {err}") from None


def describe_data(args: BenchmarkArguments, ds) -> dict:
    """What the data is, for the report: synthetic sets are flagged; text levels missing from the data counted."""
    data = naming.describe_data(args.data_dir, args.dataset_name)
    info = {"data_dir": args.dataset_name or args.data_dir}
    if data["synthetic"]:
        desc = "synthetic images from sdx.data.synthetic (NOT SteelDefectX)"
    elif data["kind"] == "hub release":
        desc = "the SteelDefectX release from the Hub"
    elif data["kind"] == "raw folder":
        desc = (f"images in the SteelDefectX layout from {Path(args.data_dir).name} (no SYNTHETIC.md marker: not "
                "generated data)")
    else:
        desc = f"the {data['kind']} {data['label']} (read with datasets.load_dataset, mapped onto the rows)"
    build = build_report(ds)
    if build.get("splits"):
        desc += "; splits " + ", ".join(f"{k} {v}" for k, v in build["splits"].items())
    if build.get("source", {}).get("validation_carved_from_train"):
        desc += "; validation carved from train (the builder's stratified rule)"
    fallbacks = build.get("fallbacks") or {}
    if any(fallbacks.values()):
        desc += "; caption fallbacks " + json.dumps(fallbacks)
    levels = text_level_report(ds, None)
    lines = [level_presence_line(levels, split) for split in levels["splits"]]
    if levels["source_caption_level"] == naming.UNKNOWN_LEVEL:
        lines.append("- the dataset's caption column states no level: the level-keyed tasks do not use it")
    info.update(synthetic=data["synthetic"], description=desc,
                classes_with_images=sorted(set(ds["train"]["class_name"])), text_levels=levels,
                text_levels_text="\n".join(lines))
    return info


def prepare_output_dir(out: Path, argv: list[str]) -> None:
    """Record the (redacted) command in ``eval_args.json``, the mark of an evaluator folder, and remove the plots
    the previous evaluation in this folder listed, so none of them outlives its task."""
    try:
        previous = json.loads((out / "results.json").read_text()).get("meta", {}).get("plots", [])
    except (OSError, ValueError, AttributeError):
        previous = []
    for name in previous:
        if isinstance(name, str) and Path(name).name == name and name.endswith(".png"):
            (out / name).unlink(missing_ok=True)
    (out / EVAL_ARGS).write_text(json.dumps({"argv": argv}, indent=1) + "\n")


def run_benchmark(args: BenchmarkArguments, argv: Sequence[str] | None = None) -> dict:
    """Everything eval_benchmark.py does after parsing: data, models, tasks, report; returns the results.

    The output folder must be new, empty or an earlier evaluator folder (a user's folder is refused, nothing of it
    overwritten); one evaluation at a time writes into it (a lock)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.output_dir)
    refuse_foreign_folder(out, EVAL_MARKERS, tool="evaluation", overwrite_flag=None)
    with output_lock(out):
        return _run(args, out, redact_argv(list(sys.argv[1:] if argv is None else argv)))


def _run(args: BenchmarkArguments, out: Path, argv: list[str]) -> dict:
    prepare_output_dir(out, argv)
    overrides = {} if args.validation_fraction is None else {"validation_fraction": args.validation_fraction}
    ds = load_rows(args.data_dir, args, args.dataset_config_name, cache_dir=args.cache_dir, **overrides)
    bench = Benchmark(
        ds, clip_models=args.model_specs, vision_model=args.vision_model_name_or_path,
        cache_dir=args.embedding_cache_dir or out / "cache", batch_size=args.batch_size, shots=args.shot_list,
        seeds=args.seed_list, levels=args.level_list, external=args.external_sets, unseen_classes=args.unseen_list,
        max_eval_samples=args.max_eval_samples, progress=not args.no_progress, device=args.device,
        max_seq_length=args.max_seq_length, truncation_warning_share=args.truncation_warning_share,
        fewshot_validation=args.fewshot_validation, adapter_bases=args.adapter_base_model,
        adapter_levels=args.adapter_level_list)
    results = bench.run(args.task_list)
    results["meta"] = {"data": describe_data(args, ds), "tasks": args.task_list, "levels": args.level_list,
                       "shots": args.shot_list, "seeds": args.seed_list, "max_eval_samples": args.max_eval_samples,
                       "fewshot_validation": args.fewshot_validation,
                       "splits": results.pop("splits"), "dataset_config": args.dataset_config_name,
                       "argv": argv}
    results["meta"]["data"]["config"] = args.dataset_config_name
    paths = write_report(results, out, bench.artifacts)
    results["meta"]["outputs"] = paths
    print(f"wrote {paths['report']} and {paths['results']} ({len(paths['plots'])} plots)")
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    """eval_benchmark.py: parse the arguments and run the benchmark."""
    return run_benchmark(parse_benchmark_args(argv), argv)
