"""The SteelDefectX `datasets` builder: raw files in the official layout -> a checked, cached DatasetDict.

Raw files are located and checked by sdx.data.layout; here they become the splits (train, a stratified
validation carve-out, test = the official val split), the text levels with their counted fallbacks
(sdx.data.levels) and a cached Arrow dataset, written row by row from the scan's spill so memory stays flat as
the data grows. Exports and Hub pushes: sdx.data.export. Splits, fallbacks and the cache: docs/dataset.md.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets
import numpy as np

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
# the code that shapes the rows: a change to any of it rebuilds the cache
_CODE_FILES = ("data/builder.py", "data/layout.py", "data/levels.py", "data/streaming.py", "annotate/images.py")
_CODE_HASH = hashlib.sha1(b"".join(
    (Path(__file__).parents[1] / name).read_bytes() for name in _CODE_FILES)).hexdigest()[:12]


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

def _per_class(labels: Sequence[int], names: Sequence[str]) -> dict[int, list[int]]:
    """Row indices per label, each group in name order (the order the seeded draws below permute)."""
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for i in sorted(range(len(labels)), key=lambda i: (names[i], i)):
        groups[int(labels[i])].append(i)
    return groups


def carve_indices(labels: Sequence[int], names: Sequence[str], fraction: float, seed: int
                  ) -> tuple[list[int], list[int]]:
    """(kept, held out): a stratified, seeded carve-out of rows given by label and name; per class
    round(fraction * n) rows (at least one, never all). The one rule of the builder and of --dataset_name data."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    keep, held = [], []
    for label, group in _per_class(labels, names).items():
        n = len(group)
        n_val = int(round(fraction * n))
        if fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        order = np.random.default_rng([seed, label]).permutation(n)
        held += [group[i] for i in order[:n_val]]
        keep += [group[i] for i in order[n_val:]]
    return keep, held


def shot_indices(labels: Sequence[int], names: Sequence[str], shots: int, seed: int) -> tuple[list[int], int]:
    """(rows, classes with fewer than `shots` rows): k rows per class (CoOp style); for one seed a smaller k is a
    prefix, so a subset, of a larger one."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    out, short = [], 0
    for label, group in _per_class(labels, names).items():
        order = np.random.default_rng([seed, label, 7919]).permutation(len(group))
        out += [group[i] for i in order[:shots]]
        short += len(group) < shots
    return out, short


def carve_validation(train: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """`carve_indices` over scanned items."""
    keep, held = carve_indices([it.label for it in train], [it.image_name for it in train], fraction, seed)
    return [train[i] for i in keep], [train[i] for i in held]


def draw_shots(train: list[Item], shots: int, seed: int, report: ScanReport | None = None) -> list[Item]:
    """`shot_indices` over scanned items; classes with fewer images are counted in the report."""
    rows, short = shot_indices([it.label for it in train], [it.image_name for it in train], shots, seed)
    if report is not None and short:
        report.notes["train"][f"classes with fewer than {shots} images (all taken)"] += short
    return [train[i] for i in rows]


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


def _annotate(image_path: Path, mask_path: Path, class_name: str) -> dict:
    from sdx.annotate.engine import annotate  # optional (annotate_missing), and it pulls in scipy

    t3, _ = annotate(image_path, mask_path, class_name)
    return t3


def resolve_levels(rec: dict, image_path: Path, mask_path: Path | None, class_desc: str, level: str, *,
                   strict: bool, annotate_missing: bool, report: ScanReport, split: str, source: Path) -> dict:
    """All text levels of one row (``rec``: its record; its files, for ``annotate_missing``) plus its caption,
    applying (and counting) the documented fallbacks."""
    attrs = rec.get("structured_attributes")
    t2 = rec.get("natural_language_description")
    need_fine = level in ("t3", "t4") or (level == "t2" and T.is_missing_text(t2))
    if attrs is None and annotate_missing and mask_path is not None and need_fine:
        attrs = _annotate(image_path, mask_path, rec["class_name"])
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
    verify_images: bool = False         # cache key from image and mask content, not name + size + mtime
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
        kwargs.setdefault("fingerprint", fingerprint_layout(resolved, verify_images=kwargs.get("verify_images", False)))
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
        spill_dir = Path(self.cache_dir).parent  # beside the Arrow files being written, not in memory
        self._scan = scan_layout(Path(cfg.data_dir), on_error=cfg.on_error, with_masks=cfg.with_masks,
                                 progress=True, spill_dir=spill_dir)
        keep = select_classes(list(self._scan.classes), cfg.classes, cfg.exclude_classes)
        items = [it for it in self._scan.items if it.class_name in keep]
        train, validation = carve_validation([it for it in items if it.split == "train"],
                                             cfg.validation_fraction, cfg.split_seed)
        if cfg.shots:
            train = draw_shots(train, cfg.shots, cfg.seed, self._scan.report)
        splits = {"train": train, "validation": validation, "test": [it for it in items if it.split == "val"]}
        groups = {split: sorted(group, key=lambda it: it.image_name) for split, group in splits.items() if group}
        self._summary = {
            "splits": {split: len(group) for split, group in groups.items()},
            # `datasets` cannot store an empty split: it is left out, and the report says so
            "empty_splits_left_out": [split for split in splits if split not in groups],
            "config": {"name": cfg.name, "caption_level": cfg.caption_level, "data_dir": cfg.data_dir,
                       "validation_fraction": cfg.validation_fraction, "shots": cfg.shots, "seed": cfg.seed,
                       "classes": list(cfg.classes or []), "exclude_classes": list(cfg.exclude_classes or [])},
        }
        self._unwritten = set(groups)
        self._write_report()
        return [datasets.SplitGenerator(name=split, gen_kwargs={"items": group, "split": split})
                for split, group in groups.items()]

    def _write_report(self) -> None:
        """The build report goes into the dataset's description (saved with it after the last split is written);
        fallbacks are counted while rows are written, so it is rewritten after each split."""
        summary = {**self._scan.report.as_dict(), **self._summary}
        self.info.description = REPORT_PREFIX + json.dumps(summary)
        if not self._unwritten:
            logger.info("%s", format_report(summary))
            self._scan.close()

    def _generate_examples(self, items, split):
        cfg, scan = self.config, self._scan
        source = Path(cfg.data_dir) / SPLITS["val" if split == "test" else "train"][2]
        for it in items:
            entry = scan.entry(it)
            levels = resolve_levels(entry.record, it.image_path, scan.mask_path(it, entry),
                                    scan.classes[it.class_name], cfg.caption_level, strict=cfg.strict,
                                    annotate_missing=cfg.annotate_missing, report=scan.report, split=split,
                                    source=source)
            mask = scan.mask_bytes(it, entry)
            yield it.image_name, {
                "image": {"path": it.image_name, "bytes": scan.image_bytes(it, entry)},
                "mask": None if mask is None else {"path": entry.mask_name, "bytes": mask},
                "label": it.label,
                "class_name": it.class_name,
                "image_name": it.image_name,
                **levels,
            }
        self._unwritten.discard(split)
        self._write_report()


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
    try:
        builder.download_and_prepare()
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, DataError):  # `datasets` wraps what rows raise; the user wants the cause
            raise error.__cause__ from None
        raise
    return builder.as_dataset()


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


def caption_texts(ds: datasets.Dataset, level: str) -> list[str]:
    """Per-row caption at ``level`` without fallback ("" when missing; T3 rendered, T4 rendered from T3): the
    texts the benchmark and training-time validation build class embeddings and retrieval queries from."""
    level = T.normalize_level(level)
    if level in ("t0", "t1"):
        return _column(ds, level)
    rows = ds.select_columns([c for c in ("class_name", "t1", "t2", "t3", "t4") if c in ds.column_names])
    return [T.row_level_texts(row)[level] for row in rows]


def class_descriptions(ds: datasets.DatasetDict) -> dict[int, str]:
    """{class id: its T1 sentence} for the classes with images (the first non-empty ``t1`` over the splits)."""
    out: dict[int, str] = {}
    for split in ds.values():
        for label, text in zip(_column(split, "label"), _column(split, "t1")):
            if text and int(label) not in out:
                out[int(label)] = text
    return out


# --------------------------------------------------------------------------------------------------------
# CLI (registered by sdx.cli)

def _cmd_stats(args) -> dict:
    stats = dataset_stats(args.data_dir, with_masks=not args.no_masks)
    print(format_stats(stats))
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2))
    return stats


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("stats", help="per class and split: images, masks, records lacking each level",
                              description="Check the raw files and count, per class and split, images, masks and "
                                          "records lacking T2/T3/T4, and every problem found (counted, not fatal).")
    p.add_argument("--data_dir", default="synthetic",
                   help="folder in the official layout, 'synthetic' for the embedded demo data (default), or 'hub' "
                        "for the Hub release (needs network)")
    p.add_argument("--no_masks", action="store_true", help="do not open masks")
    p.add_argument("--json", default=None, help="also write the stats to this JSON file")
    p.set_defaults(func=_cmd_stats)
