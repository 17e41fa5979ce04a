"""Any Hugging Face dataset as SteelDefectX rows (``--dataset_name``).

A Hub id, the project's own export or push, an imagefolder or parquet folder: whatever `datasets.load_dataset`
reads becomes the builder's row schema (image, mask, label ClassLabel, class_name, image_name, t0..t4, caption),
so both trainers and the evaluator take it like a built SteelDefectX. A missing validation split is carved from
train by the builder's stratified rule; captions follow sdx.data.levels. Text levels a dataset lacks are counted
(`text_level_report`, also stored as the build report), never invented. Rules: docs/dataset.md ("Any dataset").
"""

from __future__ import annotations

import collections
import json
import logging
import os
from typing import Any, Mapping, Optional, Sequence

import datasets

from sdx.data import levels as T
from sdx.data.builder import REPORT_PREFIX, build_report, carve_indices, make_features, select_classes, shot_indices
from sdx.data.naming import UNKNOWN_LEVEL, DatasetArguments

logger = logging.getLogger(__name__)

LEVEL_COLUMNS = ("t0", "t1", "t2", "t3", "t4")


# --------------------------------------------------------------------------------------------------------
# Loading and mapping onto the row schema

BUILDER_ONLY = ("on_error", "annotate_missing", "strict", "verify_images")   # options of raw folders only


def load_rows(data_dir: Optional[str], dataset: Optional[DatasetArguments] = None, config: Optional[str] = None, *,
              cache_dir: Optional[str] = None, caption_level: Optional[str] = None, require_captions: bool = False,
              **overrides: Any) -> datasets.DatasetDict:
    """The rows a trainer or the evaluator reads: the builder's (`load_steeldefectx`) for ``--data_dir``, or
    `load_dataset_rows` for ``--dataset_name``. `caption_level` ("mixed" included) overrides the config's level;
    `overrides` are builder options (classes, shots, validation_fraction, ...)."""
    if dataset is None or not dataset.dataset_name:
        from sdx.data.builder import load_steeldefectx

        if caption_level:
            overrides["caption_level"] = "t2" if caption_level == "mixed" else caption_level
        return load_steeldefectx(data_dir, config or "default", cache_dir=cache_dir, **overrides)
    given = [k for k in BUILDER_ONLY if overrides.pop(k, None) not in (None, False, "raise")]
    if given:
        raise ValueError(f"--{given[0]} reads raw folders (--data_dir) only, not --dataset_name {dataset.dataset_name}")
    overrides.pop("with_masks", None)   # masks are read only where a consumer asks for them
    level = caption_level or T.CONFIG_LEVELS.get(config or "default", "t1")
    return load_dataset_rows(dataset, config, caption_level=level, cache_dir=cache_dir,
                             require_captions=require_captions, **overrides)


def load_dataset_rows(args: DatasetArguments, config: Optional[str] = None, *, caption_level: str = "t1",
                      validation_fraction: float = 0.1, split_seed: int = 0, shots: Optional[int] = None,
                      seed: int = 1, classes: Optional[Sequence[str]] = None,
                      exclude_classes: Optional[Sequence[str]] = None, cache_dir: Optional[str] = None,
                      require_captions: bool = False) -> datasets.DatasetDict:
    """`args.dataset_name` loaded with `datasets.load_dataset` and mapped onto the builder's rows: splits train /
    validation (carved from train when absent) / test (when present), `caption` at `caption_level` (or "mixed":
    the default T1) with the fallback chain; classes, shots as in `load_steeldefectx`. The counts of
    `text_level_report` travel as the build report. `require_captions` raises where a row has no caption."""
    name = args.dataset_name
    raw = datasets.load_dataset(name, None if config in (None, "default") else config, cache_dir=cache_dir)
    if args.train_split_name not in raw:
        raise ValueError(f"--dataset_name {name}: no split {args.train_split_name!r} (--train_split_name); "
                         f"splits: {list(raw)}")
    picked = {"train": raw[args.train_split_name]}
    for ours, theirs in (("validation", args.validation_split_name), ("test", args.test_split_name)):
        if theirs in raw:
            picked[ours] = raw[theirs]
    project = _is_project_schema(picked["train"])
    names = _label_names(picked, args.label_column, name)
    columns = _columns(args, picked["train"], project, name)
    level = caption_level if caption_level != "mixed" else "t1"
    rows = {split: _to_rows(d, columns, names, project, level, f"{name} split {split}")
            for split, d in picked.items()}
    keep = select_classes(names, classes, exclude_classes)
    rows = {split: _filter_classes(d, keep, names) for split, d in rows.items()}
    carved = "validation" not in rows
    if carved:
        labels, image_names = rows["train"]["label"], rows["train"]["image_name"]
        kept, held = carve_indices(labels, image_names, validation_fraction, split_seed)
        rows["validation"] = rows["train"].select(sorted(held))
        rows["train"] = rows["train"].select(sorted(kept))
    if shots:
        chosen, _ = shot_indices(rows["train"]["label"], rows["train"]["image_name"], shots, seed)
        rows["train"] = rows["train"].select(sorted(chosen))
    ds = datasets.DatasetDict({s: rows[s] for s in ("train", "validation", "test") if s in rows and len(rows[s])})
    report = text_level_report(ds, caption_level, source_caption_level=columns["caption_level"])
    summary = {"source": {"dataset_name": name, "config": config, "columns": columns,
                          "split_names": {s: getattr(args, f"{s}_split_name") for s in picked},
                          "validation_carved_from_train": carved, "caption_column_level": columns["caption_level"]},
               "splits": {s: len(d) for s, d in ds.items()}, "config": {"caption_level": caption_level},
               "fallbacks": {s: r["fallbacks"] for s, r in report["splits"].items()}, "text_levels": report}
    for d in ds.values():
        d.info.description = REPORT_PREFIX + json.dumps(summary)
    if require_captions:
        _check_captions(report, name)
    return ds


def _is_project_schema(d: datasets.Dataset) -> bool:
    """Rows written by the builder or an export (every level column, class names, ClassLabel labels)."""
    return set(LEVEL_COLUMNS + ("class_name", "image_name")) <= set(d.column_names) and isinstance(
        d.features.get("label"), datasets.ClassLabel)


def _label_names(splits: Mapping[str, datasets.Dataset], column: str, name: str) -> list[str]:
    """The class names of the label column: a ClassLabel's names, the sorted distinct strings, or "0".."n-1"."""
    first = splits["train"]
    if column not in first.column_names:
        raise ValueError(f"--label_column {column!r}: not a column of {name} split train; columns: "
                         f"{first.column_names}")
    feature = first.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    dtype = getattr(feature, "dtype", None)
    values = {v for d in splits.values() for v in d.unique(column) if v is not None}
    if dtype == "string":
        return sorted(values)
    if dtype is not None and dtype.startswith(("int", "uint")):
        logger.warning("%s: label column %r holds integers without class names; classes are named by number",
                       name, column)
        return [str(i) for i in range(max(values) + 1)] if values else []
    raise ValueError(f"--label_column {column!r} of {name}: {feature} is neither a ClassLabel, strings nor integers")


def _columns(args: DatasetArguments, d: datasets.Dataset, project: bool, name: str) -> dict[str, Optional[str]]:
    """The columns read (image, label, caption, mask) and the level the caption column holds (a level,
    UNKNOWN_LEVEL, or None when no caption column is read)."""
    mask = args.mask_column or ("mask" if "mask" in d.column_names else None)
    out = {"image": args.image_column, "label": args.label_column, "mask": mask, "caption": None,
           "caption_level": None}
    if project:
        if args.caption_column or args.caption_column_level:
            raise ValueError(f"{name} has the level columns t0..t4: the caption is chosen by level "
                             "(train_clip.py --caption_level, --dataset_config_name), not by --caption_column")
        return out
    column = args.caption_column or ("caption" if "caption" in d.column_names else None)
    if column is None:
        if args.caption_column_level:
            raise ValueError(f"--caption_column_level {args.caption_column_level}: {name} has no `caption` column; "
                             "name it with --caption_column")
        return out
    if column not in d.column_names:
        raise ValueError(f"--caption_column {column!r}: not a column of {name} split train; columns: "
                         f"{d.column_names}")
    return {**out, "caption": column, "caption_level": args.caption_column_level or UNKNOWN_LEVEL}


def _undecoded(d: datasets.Dataset, column: Optional[str], flag: str, where: str) -> datasets.Dataset:
    """`column` cast to an undecoded Image (a file path column included), so mapping never decodes pixels."""
    if column is None:
        return d
    if column not in d.column_names:
        raise ValueError(f"--{flag} {column!r}: not a column of {where}; columns: {d.column_names}")
    feature = d.features[column]
    if not isinstance(feature, datasets.Image) and getattr(feature, "dtype", None) != "string":
        raise ValueError(f"--{flag} {column!r} of {where}: {feature} is neither an image nor a file path")
    return d.cast_column(column, datasets.Image(decode=False))


def _to_rows(d: datasets.Dataset, columns: Mapping[str, Optional[str]], names: list[str], project: bool,
             level: str, where: str) -> datasets.Dataset:
    """One split in the row schema (features of sdx.data.builder.make_features), `caption` at `level`."""
    d = _undecoded(_undecoded(d, columns["image"], "image_column", where), columns["mask"], "mask_column", where)
    labels = _label_mapper(names, columns["label"], where)

    def convert(batch, indices):
        n = len(indices)
        out = _texts(batch, n, names, labels(batch[columns["label"]]), project, columns)
        out["caption"] = [_caption(out, i, level, columns, batch) for i in range(n)]
        out["image"] = batch[columns["image"]]
        out["mask"] = batch[columns["mask"]] if columns["mask"] else [None] * n
        out["image_name"] = (batch["image_name"] if project else
                             [_image_name(im, i) for im, i in zip(out["image"], indices)])
        return out

    return d.map(convert, batched=True, with_indices=True, features=make_features(names),
                 remove_columns=d.column_names, desc=f"rows of {where}")


def _label_mapper(names: list[str], column: str, where: str):
    index = {n: i for i, n in enumerate(names)}

    def ids(values: list) -> list[int]:
        out = []
        for v in values:
            i = index.get(v) if isinstance(v, str) else (int(v) if v is not None else -1)
            if i is None or not 0 <= i < len(names):
                raise ValueError(f"{where}: column {column!r}: a row has no class ({v!r}); give every row a label")
            out.append(i)
        return out

    return ids


def _texts(batch, n: int, names: list[str], labels: list[int], project: bool,
           columns: Mapping[str, Optional[str]]) -> dict[str, list]:
    """label, class_name and t0..t4: the project's columns as they are; for another dataset T0 built from the
    class name (its definition), the caption column at its stated level, every other level empty."""
    class_names = [names[i] for i in labels]
    if project:
        return {"label": labels, "class_name": class_names, **{c: batch[c] for c in LEVEL_COLUMNS}}
    out = {"label": labels, "class_name": class_names, "t0": [T.t0_prompt(c) for c in class_names],
           "t1": [""] * n, "t2": [""] * n, "t3": [None] * n, "t4": [""] * n}
    if columns["caption"] and columns["caption_level"] != UNKNOWN_LEVEL:
        out[columns["caption_level"]] = ["" if T.is_missing_text(c) else str(c) for c in batch[columns["caption"]]]
    return out


def _caption(out: dict[str, list], i: int, level: str, columns: Mapping[str, Optional[str]], batch) -> str:
    if columns["caption_level"] == UNKNOWN_LEVEL:
        text = batch[columns["caption"]][i]
        return "" if T.is_missing_text(text) else str(text)
    row = {k: out[k][i] for k in ("class_name",) + LEVEL_COLUMNS}
    return T.resolve_caption(T.row_level_texts(row), level)[0]


def _image_name(image: Optional[dict], index: int) -> str:
    path = (image or {}).get("path")
    return os.path.basename(path) if path else f"{index:08d}"


def _filter_classes(d: datasets.Dataset, keep: set[str], names: list[str]) -> datasets.Dataset:
    if len(keep) == len(names):
        return d
    ids = {i for i, n in enumerate(names) if n in keep}
    return d.filter(lambda labels: [x in ids for x in labels], input_columns="label", batched=True,
                    desc="classes")


def _check_captions(report: Mapping[str, Any], name: str) -> None:
    for split, r in report["splits"].items():
        empty = sum(n for key, n in r["caption_from"].items() if key.endswith("->none"))
        if empty:
            raise ValueError(
                f"{name} split {split}: {empty} of {r['rows']} rows have no text at level "
                f"{report['caption_level'].upper()} nor at its fallbacks; name a caption column (--caption_column, "
                "--caption_column_level) or train on T0 (--caption_level t0)")


# --------------------------------------------------------------------------------------------------------
# Counting the text levels

def text_level_report(ds: Mapping[str, datasets.Dataset], caption_level: Optional[str],
                      source_caption_level: Optional[str] = None) -> dict[str, Any]:
    """Per split: rows, rows holding each level, and where the captions at `caption_level` came from
    ({"t2->t2": n, "t2->t1": m, ...}; for "mixed", every level; "->none" where the chain is empty; nothing when
    `caption_level` is None, captions unused) with the share that fell back. A caption column of unknown level
    (`source_caption_level`, else read from the build report) is counted as such."""
    if source_caption_level is None and len(ds):
        source_caption_level = build_report(next(iter(ds.values()))).get("source", {}).get("caption_column_level")
    requested = [] if caption_level is None else list(T.LEVELS) if caption_level == "mixed" else [caption_level]
    splits = {}
    for split, d in ds.items():
        present = collections.Counter()
        came_from = collections.Counter()
        cols = [c for c in ("class_name",) + LEVEL_COLUMNS if c in d.column_names]
        for row in d.select_columns(cols):
            texts = T.row_level_texts(row)
            present.update(lv for lv in T.LEVELS if not T.is_missing_text(texts[lv]))
            for lv in requested:
                if source_caption_level == UNKNOWN_LEVEL:
                    came_from[UNKNOWN_LEVEL] += 1
                    continue
                text, used = T.resolve_caption(texts, lv)
                came_from[f"{lv}->{used if text else 'none'}"] += 1
        total = sum(came_from.values())
        fallbacks = {k: n for k, n in came_from.items() if k != UNKNOWN_LEVEL and k.split("->")[0] != k.split("->")[1]}
        splits[split] = {"rows": len(d), "present": {lv: present.get(lv, 0) for lv in T.LEVELS},
                         "caption_from": dict(sorted(came_from.items())), "fallbacks": fallbacks,
                         "fallback_share": (sum(fallbacks.values()) / total)
                         if total and source_caption_level != UNKNOWN_LEVEL else None}
    return {"caption_level": caption_level, "source_caption_level": source_caption_level, "splits": splits}


def format_text_levels(report: Mapping[str, Any], split: str = "train") -> str:
    """Markdown lines for a card or a report: the caption level, the share that fell back, missing levels."""
    r = report.get("splits", {}).get(split)
    if not r:
        return ""
    level = str(report.get("caption_level"))
    lines = []
    if report.get("caption_level") is None:
        lines.append("- captions: not used by this model")
    elif report.get("source_caption_level") == UNKNOWN_LEVEL:
        lines.append(f"- captions: the dataset's caption column, of **unknown level** (requested {level.upper()} "
                     "could not be checked)")
    else:
        share = r["fallback_share"]
        lines.append(f"- caption level: **{level.upper()}**; share of {split} captions that fell back: "
                     f"**{share:.1%}**" + (f" ({_fallback_text(r['fallbacks'])})" if r["fallbacks"] else ""))
    lines.append(level_presence_line(report, split))
    return "\n".join(lines)


def level_presence_line(report: Mapping[str, Any], split: str) -> str:
    """"- text levels in the <split> split (n rows): missing entirely: ...; partly present: T2 4/9, ..."."""
    r = report["splits"][split]
    missing = [lv.upper() for lv in T.LEVELS if r["present"].get(lv, 0) == 0]
    partial = [f"{lv.upper()} {r['present'][lv]}/{r['rows']}" for lv in T.LEVELS
               if 0 < r["present"].get(lv, 0) < r["rows"]]
    return (f"- text levels in the {split} split ({r['rows']} rows): "
            + (f"missing entirely: {', '.join(missing)}" if missing else "none missing entirely")
            + (f"; partly present: {', '.join(partial)}" if partial else ""))


def _fallback_text(fallbacks: Mapping[str, int]) -> str:
    return ", ".join(f"{k.replace('->', ' -> ').upper()}: {n}" for k, n in sorted(fallbacks.items()))
