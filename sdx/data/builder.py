"""The SteelDefectX `datasets` builder: raw files in the official layout -> a checked, cached DatasetDict.

Raw files are located and checked by sdx.data.layout; here they become the splits (train, a stratified
validation carve-out, test = the official val split), the text levels with their counted fallbacks
(sdx.data.levels), a cached Arrow dataset, and parquet exports / Hub pushes. Splits, fallbacks and the cache:
docs/dataset.md.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import datasets
import numpy as np
from huggingface_hub import DatasetCard, HfApi, get_token

from sdx.data import levels as T
from sdx.data.layout import (  # noqa: F401  (DataError & co. are part of this module's API too)
    HUB_REPO,
    SPLITS,
    DataError,
    DataSourceError,
    Item,
    ScanReport,
    class_texts,
    dataset_stats,
    fingerprint_layout,
    format_report,
    format_stats,
    is_synthetic_dir,
    read_class_descriptions,
    resolve_data_dir,
    scan_layout,
)

logger = logging.getLogger(__name__)

REPORT_PREFIX = "SteelDefectX build report: "
_CODE_HASH = hashlib.sha1(b"".join(
    (Path(__file__).parent / name).read_bytes() for name in ("builder.py", "layout.py", "levels.py"))).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------------
# Features (declared once)

T3_FEATURE = {
    name: (datasets.List({"cell": datasets.Value("string"), "share": datasets.Value("float64")})
           if name == "Position" else datasets.Value("string"))
    for name in T.T3_FIELDS
}


def make_features(class_names: Sequence[str]) -> datasets.Features:
    return datasets.Features({
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "label": datasets.ClassLabel(names=list(class_names)),
        "class_name": datasets.Value("string"),
        "image_name": datasets.Value("string"),
        "t0": datasets.Value("string"),
        "t1": datasets.Value("string"),
        "t2": datasets.Value("string"),
        "t3": T3_FEATURE,
        "t4": datasets.Value("string"),
        "caption": datasets.Value("string"),
    })


# --------------------------------------------------------------------------------------------------------
# Splits: stratified carve-out, k-shot subsets, class subsets

def _per_class(items: Iterable[Item]) -> dict[int, list[Item]]:
    groups: dict[int, list[Item]] = collections.defaultdict(list)
    for it in sorted(items, key=lambda it: it.record["image_name"]):
        groups[it.label].append(it)
    return groups


def carve_validation(train: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Stratified, seeded carve-out: per class round(fraction * n) images (at least one, never all)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    keep, held = [], []
    for label, group in _per_class(train).items():
        n = len(group)
        n_val = int(round(fraction * n))
        if fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        order = np.random.default_rng([seed, label]).permutation(n)
        held += [group[i] for i in order[:n_val]]
        keep += [group[i] for i in order[n_val:]]
    return keep, held


def draw_shots(train: list[Item], shots: int, seed: int, report: ScanReport | None = None) -> list[Item]:
    """k images per class (CoOp style); for one seed a smaller k is a prefix, so a subset, of a larger one."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    out = []
    for label, group in _per_class(train).items():
        order = np.random.default_rng([seed, label, 7919]).permutation(len(group))
        out += [group[i] for i in order[:shots]]
        if report is not None and len(group) < shots:
            report.notes["train"][f"classes with fewer than {shots} images (all taken)"] += 1
    return out


def select_classes(all_classes: Sequence[str], classes: Sequence[str] | None,
                   exclude: Sequence[str] | None) -> set[str]:
    for given in (classes or []), (exclude or []):
        unknown = [c for c in given if c not in all_classes]
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown}; known: {list(all_classes)}")
    chosen = set(classes) if classes else set(all_classes)
    return chosen - set(exclude or [])


# --------------------------------------------------------------------------------------------------------
# Text levels and fallbacks

def _t3_feature(attrs: dict | None) -> dict | None:
    if attrs is None:
        return None
    out = {name: (None if attrs.get(name) is None else str(attrs[name])) for name in T.T3_FIELDS if name != "Position"}
    out["Position"] = T.position_to_records(attrs.get("Position"))
    return {name: out[name] for name in T.T3_FIELDS}


def _annotate(item: Item) -> dict:
    from sdx.annotate.engine import annotate  # optional (annotate_missing), and it pulls in scipy

    t3, _ = annotate(item.image_path, item.mask_path, item.record["class_name"])
    return t3


def resolve_levels(item: Item, class_desc: str, level: str, *, strict: bool, annotate_missing: bool,
                   report: ScanReport, split: str, source: Path) -> dict:
    """All text levels of one row plus its caption, applying (and counting) the documented fallbacks."""
    rec = item.record
    attrs = rec.get("structured_attributes")
    t2 = rec.get("natural_language_description")
    need_fine = level in ("t3", "t4") or (level == "t2" and T.is_missing_text(t2))
    if attrs is None and annotate_missing and item.mask_path is not None and need_fine:
        attrs = _annotate(item)
        report.notes[split]["T3/T4 computed from the mask"] += 1
    elif attrs is not None and T.is_missing_text(rec.get("template_sentence")):
        report.notes[split]["T4 rendered from T3"] += 1
    texts = T.level_texts(rec["class_name"], class_desc, t2, attrs, rec.get("template_sentence"))
    caption, used = T.resolve_caption(texts, level)
    if used != level:
        if strict:
            raise DataError(source, f"{rec['image_name']}.{T.LEVEL_FIELDS.get(level, level)}",
                            f"level {level.upper()} is missing and strict=True")
        report.fallbacks[split][f"{level}->{used}"] += 1
    return {"t0": texts["t0"], "t1": texts["t1"], "t2": texts["t2"], "t3": _t3_feature(attrs), "t4": texts["t4"],
            "caption": caption}


# --------------------------------------------------------------------------------------------------------
# The builder

@dataclass
class SteelDefectXConfig(datasets.BuilderConfig):
    """One SteelDefectX configuration. Every field below may be overridden in load_steeldefectx(**overrides)."""

    caption_level: str = "t1"           # t0..t4 or an alias; the `caption` column
    validation_fraction: float = 0.1    # stratified carve-out of the official train split
    split_seed: int = 0                 # seed of the carve-out (kept fixed across few-shot seeds)
    shots: int | None = None            # k images per class in `train` (drawn after the carve-out)
    seed: int = 1                       # seed of the k-shot draw
    classes: tuple | None = None        # keep only these classes (labels keep their full-list ids)
    exclude_classes: tuple | None = None
    with_masks: bool = True
    on_error: str = "raise"             # or "skip": count and skip bad items
    strict: bool = False                # raise instead of falling back when the caption level is missing
    annotate_missing: bool = False      # fill missing T3/T4 from masks with sdx.annotate.engine
    hub_repo: str = HUB_REPO
    fingerprint: str = ""               # of the raw files; set automatically, part of the cache key

    def __post_init__(self):
        super().__post_init__()
        self.caption_level = T.normalize_level(self.caption_level)
        for name in ("classes", "exclude_classes"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [value]
            setattr(self, name, tuple(value) if value else None)


def _drop_default_overrides(builder_cls, kwargs: dict) -> None:
    """Remove overrides equal to the named config's own values: `datasets` hashes the passed kwargs into the
    cache key, so `validation_fraction=0.1` given explicitly would otherwise rebuild what the default built."""
    name = kwargs.get("config_name") or builder_cls.DEFAULT_CONFIG_NAME
    base = next((c for c in builder_cls.BUILDER_CONFIGS if c.name == name), None)
    if base is None:
        return
    if not kwargs.get("shots") and base.shots is None:
        kwargs.pop("seed", None)  # the k-shot seed changes nothing without shots
    for key in [k for k in kwargs if k in SteelDefectXConfig.__dataclass_fields__ and k not in ("name", "data_dir")]:
        value = kwargs[key]
        if key == "caption_level":
            value = T.normalize_level(value)
        elif key in ("classes", "exclude_classes") and value:
            value = tuple([value] if isinstance(value, str) else value)
        if value == getattr(base, key) or (key in ("classes", "exclude_classes") and not value and
                                           getattr(base, key) is None):
            del kwargs[key]


class SteelDefectX(datasets.GeneratorBasedBuilder):
    """Builds SteelDefectX from a local folder in the official layout (or the Hub release)."""

    BUILDER_CONFIG_CLASS = SteelDefectXConfig
    BUILDER_CONFIGS = [
        SteelDefectXConfig(name=name, caption_level=level, description=f"caption = {level.upper()}")
        for name, level in T.CONFIG_LEVELS.items()
    ]
    DEFAULT_CONFIG_NAME = "default"
    DEFAULT_WRITER_BATCH_SIZE = 256

    def __init__(self, *args, data_dir: str | os.PathLike | None = None, **kwargs):
        resolved = resolve_data_dir(data_dir, kwargs.get("hub_repo", HUB_REPO))
        config_name = kwargs.get("config_name")
        if config_name in T.LEVEL_CONFIGS:  # "t1" etc. accepted as config names
            kwargs["config_name"] = T.LEVEL_CONFIGS[config_name]
        _drop_default_overrides(self, kwargs)
        kwargs.setdefault("fingerprint", fingerprint_layout(resolved))
        kwargs.setdefault("dataset_name", "steeldefectx")
        kwargs.setdefault("hash", _CODE_HASH)
        super().__init__(*args, data_dir=str(resolved), **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        classes = read_class_descriptions(Path(self.config.data_dir))
        return datasets.DatasetInfo(
            description="SteelDefectX steel-surface defects with coarse-to-fine text (T0-T4).",
            features=make_features(list(classes)),
            homepage="https://huggingface.co/datasets/Zhaosxian/SteelDefectX",
            citation=CITATION,
        )

    def _split_generators(self, dl_manager):
        cfg: SteelDefectXConfig = self.config
        data_dir = Path(cfg.data_dir)
        classes, items, report = scan_layout(data_dir, on_error=cfg.on_error, with_masks=cfg.with_masks,
                                             progress=True)
        keep = select_classes(list(classes), cfg.classes, cfg.exclude_classes)
        items = [it for it in items if it.record["class_name"] in keep]
        train, validation = carve_validation([it for it in items if it.split == "train"],
                                             cfg.validation_fraction, cfg.split_seed)
        if cfg.shots:
            train = draw_shots(train, cfg.shots, cfg.seed, report)
        test = [it for it in items if it.split == "val"]
        splits = {"train": train, "validation": validation, "test": test}
        rows = {}
        for split, group in splits.items():
            source = data_dir / SPLITS["val" if split == "test" else "train"][2]
            rows[split] = [
                (it, resolve_levels(it, classes[it.record["class_name"]], cfg.caption_level, strict=cfg.strict,
                                    annotate_missing=cfg.annotate_missing, report=report, split=split,
                                    source=source))
                for it in sorted(group, key=lambda it: it.record["image_name"])
            ]
        empty = [split for split, r in rows.items() if not r]
        for split in empty:  # `datasets` cannot store an empty split: it is left out, and the report says so
            del rows[split]
        summary = report.as_dict()
        summary["splits"] = {split: len(r) for split, r in rows.items()}
        summary["empty_splits_left_out"] = empty
        summary["config"] = {"name": cfg.name, "caption_level": cfg.caption_level, "data_dir": str(data_dir),
                             "validation_fraction": cfg.validation_fraction, "shots": cfg.shots, "seed": cfg.seed,
                             "classes": list(cfg.classes or []), "exclude_classes": list(cfg.exclude_classes or [])}
        self.info.description = REPORT_PREFIX + json.dumps(summary)
        logger.info("%s", format_report(summary))
        return [datasets.SplitGenerator(name=split, gen_kwargs={"rows": r}) for split, r in rows.items()]

    def _generate_examples(self, rows):
        for it, levels in rows:
            rec = it.record
            mask = None if it.mask_png is None else {"path": it.mask_path.name, "bytes": it.mask_png}
            yield rec["image_name"], {
                "image": {"path": rec["image_name"], "bytes": it.image_path.read_bytes()},
                "mask": mask,
                "label": it.label,
                "class_name": rec["class_name"],
                "image_name": rec["image_name"],
                **levels,
            }


CITATION = """@inproceedings{steeldefectx2026,
  title     = {SteelDefectX: A Coarse-to-Fine Vision-Language Benchmark for Steel Surface Defects},
  booktitle = {CVPR},
  year      = {2026},
  note      = {arXiv:2603.21824}
}"""


# --------------------------------------------------------------------------------------------------------
# Public API

def load_steeldefectx(data_dir: str | os.PathLike | None = None, config: str = "default", *,
                      cache_dir: str | None = None, **overrides) -> datasets.DatasetDict:
    """Build (or load from cache) SteelDefectX and return its DatasetDict (train / validation / test).

    ``data_dir``: a folder in the official layout, "synthetic" for the embedded demo data, or None for the Hub
    release (needs network). ``config``: default, t0, coarse, fine, attributes, structured (or t0..t4).
    ``overrides``: any SteelDefectXConfig field (caption_level, validation_fraction, shots, seed, classes, ...).
    """
    builder = SteelDefectX(config_name=config, data_dir=data_dir, cache_dir=cache_dir, **overrides)
    builder.download_and_prepare()
    ds = builder.as_dataset()
    return ds


def build_report(ds: datasets.DatasetDict | datasets.Dataset) -> dict:
    """The build report (counts in/out, skips, fallbacks) stored with a built dataset."""
    first = ds[next(iter(ds))] if isinstance(ds, datasets.DatasetDict) else ds
    desc = first.info.description or ""
    if not desc.startswith(REPORT_PREFIX):
        return {}
    return json.loads(desc[len(REPORT_PREFIX):])


def class_names(ds: datasets.DatasetDict | datasets.Dataset) -> list[str]:
    first = ds[next(iter(ds))] if isinstance(ds, datasets.DatasetDict) else ds
    return list(first.features["label"].names)


def _column(ds: datasets.Dataset, name: str) -> list:
    return ds.select_columns([name])[:][name]


def candidate_classes(ds: datasets.DatasetDict) -> list[int]:
    """The classes a classifier of ``ds`` chooses among, one rule for training-time validation and the benchmark:
    every class with at least one image in any split (a class declared without images is never a candidate)."""
    ids = sorted({int(label) for split in ds.values() for label in _column(split, "label")})
    if not ids:
        raise ValueError("the dataset has no images: no class to classify")
    return ids


def class_descriptions(ds: datasets.DatasetDict) -> dict[int, str]:
    """{class id: its T1 sentence} for the classes with images (the first non-empty ``t1`` over the splits)."""
    out: dict[int, str] = {}
    for split in ds.values():
        for label, text in zip(_column(split, "label"), _column(split, "t1")):
            if text and int(label) not in out:
                out[int(label)] = text
    return out


# --------------------------------------------------------------------------------------------------------
# Export (parquet + card) and push

def export_dataset(out_dir: str | os.PathLike, data_dir: str | os.PathLike | None, *,
                   configs: Sequence[str] = tuple(T.CONFIG_LEVELS), card_template: str | os.PathLike | None = None,
                   cache_dir: str | None = None, **overrides) -> dict:
    """Write parquet per config and split, and a README.md dataset card with the `configs:` YAML block, so
    plain ``datasets.load_dataset(out_dir, config)`` works without this project installed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yaml_configs, counts, infos = [], {}, datasets.info.DatasetInfosDict()
    for cfg in configs:
        ds = load_steeldefectx(data_dir, cfg, cache_dir=cache_dir, **overrides)
        infos[cfg] = next(iter(ds.values())).info.copy()  # features + split sizes, written as dataset_info
        files = []
        for split, d in ds.items():
            counts[f"{cfg}/{split}"] = len(d)
            if len(d) == 0:
                continue
            rel = f"{cfg}/{split}-00000-of-00001.parquet"
            (out / cfg).mkdir(parents=True, exist_ok=True)
            d.to_parquet(str(out / rel))
            files.append({"split": split, "path": rel})
        entry = {"config_name": cfg, "data_files": files}
        if cfg == "default":
            entry["default"] = True
        yaml_configs.append(entry)
    card = DatasetCard(read_card_template(card_template))
    if is_synthetic_dir(data_dir):
        card.text = SYNTHETIC_CARD_NOTE + card.text
    card.data["configs"] = yaml_configs
    infos.to_dataset_card_data(card.data)
    card.save(str(out / "README.md"))
    return {"out_dir": str(out), "rows": counts}


SYNTHETIC_CARD_NOTE = ("\n> **SYNTHETIC demo data, not SteelDefectX.** These files were drawn by the project's "
                       "synthetic generator; nothing measured on them is a result about steel.\n")


def read_card_template(path: str | os.PathLike | None = None) -> str:
    """The dataset card template: ``path``, or the card shipped in the package (sdx/data/data_card.md)."""
    if path is None:
        return importlib.resources.files("sdx.data").joinpath("data_card.md").read_text(encoding="utf-8")
    if not Path(path).is_file():
        raise FileNotFoundError(f"dataset card template not found: {path}")
    return Path(path).read_text(encoding="utf-8")


def push_dataset(repo_id: str, data_dir: str | os.PathLike | None, *, token: str | None = None,
                 private: bool = False, **export_kwargs) -> dict:
    """Export to a temporary folder and upload it as a Hub dataset repo (needs a write token)."""
    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise PermissionError("push needs a Hugging Face write token: pass --token, set HF_TOKEN or run "
                              "`hf auth login`")
    tmp = Path(tempfile.mkdtemp(prefix="steeldefectx-push-"))
    try:
        summary = export_dataset(tmp, data_dir, **export_kwargs)
        api = HfApi(token=token)
        api.create_repo(repo_id=repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(tmp), repo_id=repo_id, repo_type="dataset",
                                   commit_message="Upload SteelDefectX (parquet configs) with steeldefectx.py push")
        return {**summary, "repo_id": repo_id, "commit": str(commit)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# CLI (registered by steeldefectx.py)

def _add_data_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--data_dir", default=None if required else "synthetic", required=required,
                   help="folder in the official layout, 'synthetic' for the embedded demo data, or 'hub' for the "
                        "Hub release (needs network)" + ("" if required else " (default: synthetic)"))


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="+", default=list(T.CONFIG_LEVELS), choices=list(T.CONFIG_LEVELS),
                   help="configs to write (default: all)")
    p.add_argument("--validation_fraction", type=float, default=0.1)
    p.add_argument("--on_error", choices=("raise", "skip"), default="raise")
    p.add_argument("--annotate_missing", action="store_true",
                   help="fill missing T3/T4 from masks with the annotation engine")
    p.add_argument("--cache_dir", default=None, help="datasets cache folder")


def _build_kwargs(args) -> dict:
    return {"configs": args.configs, "validation_fraction": args.validation_fraction, "on_error": args.on_error,
            "annotate_missing": args.annotate_missing, "cache_dir": args.cache_dir}


def _cmd_stats(args) -> dict:
    stats = dataset_stats(args.data_dir, with_masks=not args.no_masks)
    print(format_stats(stats))
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2))
    return stats


def _cmd_export(args) -> dict:
    result = export_dataset(args.out_dir, args.data_dir, **_build_kwargs(args))
    print(f"exported to {result['out_dir']}: " + ", ".join(f"{k}={v}" for k, v in result["rows"].items()))
    print(f"load it with: datasets.load_dataset({result['out_dir']!r}, 'fine')")
    return result


def _cmd_push(args) -> dict:
    result = push_dataset(args.repo_id, args.data_dir, token=args.token, private=args.private,
                          **_build_kwargs(args))
    print(f"pushed to https://huggingface.co/datasets/{args.repo_id}")
    return result


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("stats", help="per class and split: images, masks, records lacking each level",
                              description="Check the raw files and count, per class and split, images, masks and "
                                          "records lacking T2/T3/T4, and every problem found (counted, not fatal).")
    _add_data_args(p)
    p.add_argument("--no_masks", action="store_true", help="do not open masks")
    p.add_argument("--json", default=None, help="also write the stats to this JSON file")
    p.set_defaults(func=_cmd_stats)

    p = subparsers.add_parser("export", help="write parquet per config + a dataset card (load_dataset-ready)",
                              description="Build each config and write OUT/<config>/<split>-*.parquet and "
                                          "OUT/README.md with the `configs:` YAML, so stock "
                                          "datasets.load_dataset(OUT, 'fine') works without this project.")
    p.add_argument("out_dir")
    _add_data_args(p)
    _add_build_args(p)
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser("push", help="export and upload to a Hub dataset repo (needs a token)",
                              description="Export like `export` into a temporary folder and upload it to the Hub.")
    p.add_argument("repo_id")
    _add_data_args(p, required=True)  # never push the demo data by default
    _add_build_args(p)
    p.add_argument("--token", default=None, help="Hugging Face write token (default: HF_TOKEN or saved login)")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_cmd_push)
