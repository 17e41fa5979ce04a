"""Export and push: a built SteelDefectX as a folder that stock `datasets.load_dataset` reads, each image stored once.

An export is an imagefolder with one metadata file per config: the images and binarised masks once per split, and
for every config a small metadata parquet (file names, label, every text level, and `caption` at the config's
level), all listed in the card's `configs:` block. The card is written from what was exported. Also the card of a
raw folder (`steeldefectx card`). Layout and rules: docs/dataset.md ("Export and push").
"""

from __future__ import annotations

import argparse
import collections
import csv
import importlib.resources
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import datasets
import pyarrow.compute as pc
from huggingface_hub import DatasetCard, HfApi, get_token

from sdx.data import levels as T
from sdx.data.builder import build_report, load_steeldefectx
from sdx.data.layout import HUB_REPO, data_source, format_report, is_synthetic_dir, resolve_data_dir
from sdx.data.naming import LICENCE_NOTE

DEFAULT_EXPORT_DIR = "steeldefectx"   # so load_dataset("steeldefectx", cfg) works from the folder holding it
EXPORT_MARKER = "<!-- written by steeldefectx export -->"
CONTENTS_MARKER = "<!-- sdx:export-contents -->"
RAW_CARD_MARKER = "<!-- steeldefectx raw layout card -->"
SYNTHETIC_CARD_NOTE = ("\n> **SYNTHETIC demo data, not SteelDefectX.** These files were drawn by the project's "
                       "synthetic generator; nothing measured on them is a result about steel.\n")
SYNTHETIC_MARKER = "SYNTHETIC.md"   # the generator's marker file (sdx.data.layout.is_synthetic_dir)
SYNTHETIC_LICENCE_NOTE = "Code and these generated files: MIT (no source set: the project's generator drew them)."
IMAGE_COLUMNS = ("image", "mask")


def metadata_name(position: int, config: str) -> str:
    """The first config gets imagefolder's standard name (so `datasets` infers imagefolder from its files); the
    others a name of their own, given to imagefolder by the config's ``metadata_filenames``."""
    return "metadata.parquet" if position == 0 else f"metadata-{config}.parquet"


def _mask_file(mask_path: str) -> str:
    return os.path.splitext(mask_path)[0] + ".png"  # the stored mask is always a PNG


# --------------------------------------------------------------------------------------------------------
# Writing the folder

def _prepare_out_dir(out: Path) -> Path:
    """An absent or empty folder, or a previous export (replaced); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"export folder {out} is a file")
    readme = out / "README.md"
    if readme.is_file() and EXPORT_MARKER in readme.read_text(encoding="utf-8", errors="replace"):
        shutil.rmtree(out / "data", ignore_errors=True)
        readme.unlink()
        (out / SYNTHETIC_MARKER).unlink(missing_ok=True)
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"export folder {out} is not empty and holds no previous export: choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_files(out: Path, ds: datasets.DatasetDict) -> dict[str, dict]:
    """Every image and mask once, as the builder stored them: {split: {"masks": n, "bytes": n}}."""
    written = {}
    for split, d in ds.items():
        folder = out / "data" / split
        (folder / "images").mkdir(parents=True)
        raw = d.select_columns(["image", "mask", "image_name"])
        for column in IMAGE_COLUMNS:
            raw = raw.cast_column(column, datasets.Image(decode=False))
        n_masks = n_bytes = 0
        for row in raw:
            (folder / "images" / row["image_name"]).write_bytes(row["image"]["bytes"])
            n_bytes += len(row["image"]["bytes"])
            if row["mask"] is not None:
                (folder / "masks").mkdir(exist_ok=True)
                (folder / "masks" / _mask_file(row["mask"]["path"])).write_bytes(row["mask"]["bytes"])
                n_masks, n_bytes = n_masks + 1, n_bytes + len(row["mask"]["bytes"])
        written[split] = {"masks": n_masks, "bytes": n_bytes}
    return written


def _write_metadata(path: Path, d: datasets.Dataset) -> None:
    """imagefolder metadata: ``file_name`` and ``mask_file_name`` become the image and mask columns on loading;
    the features (ClassLabel names included) travel in the parquet schema."""
    texts = [c for c in d.column_names if c not in IMAGE_COLUMNS]
    features = datasets.Features({"file_name": datasets.Value("string"), "mask_file_name": datasets.Value("string"),
                                  **{c: d.features[c] for c in texts}})

    def names(batch):
        return {"file_name": [f"images/{n}" for n in batch["image_name"]],
                "mask_file_name": [None if m is None else f"masks/{_mask_file(m['path'])}" for m in batch["mask"]]}

    raw = d.select_columns(texts + ["mask"]).cast_column("mask", datasets.Image(decode=False))
    meta = raw.map(names, batched=True, features=features, remove_columns=["mask"], desc=f"metadata {path.name}")
    meta.select_columns(list(features)).to_parquet(str(path))


def _check_same_rows(first: datasets.DatasetDict, ds: datasets.DatasetDict, config: str) -> None:
    for split in set(first) | set(ds):
        if split not in first or split not in ds or first[split]["image_name"] != ds[split]["image_name"]:
            raise RuntimeError(f"config {config!r} does not hold the same rows as the first config in split "
                               f"{split!r}: export every config with the same overrides")


def export_dataset(out_dir: str | os.PathLike = DEFAULT_EXPORT_DIR, data_dir: str | os.PathLike | None = None, *,
                   configs: Sequence[str] = tuple(T.CONFIG_LEVELS), card_template: str | os.PathLike | None = None,
                   cache_dir: str | None = None, **overrides) -> dict:
    """Build each config and write the export (images once, one metadata parquet per config and split, the card),
    so stock ``datasets.load_dataset(out_dir, config)`` works without this project."""
    if not configs:
        raise ValueError("configs: name at least one config")
    out = _prepare_out_dir(Path(out_dir))
    built = {cfg: load_steeldefectx(data_dir, cfg, cache_dir=cache_dir, **overrides) for cfg in configs}
    first = built[configs[0]]
    written = _write_files(out, first)
    yaml_configs = []
    for position, (cfg, ds) in enumerate(built.items()):
        _check_same_rows(first, ds, cfg)
        name = metadata_name(position, cfg)
        for split, d in ds.items():
            _write_metadata(out / "data" / split / name, d)
        yaml_configs.append(_yaml_config(position, cfg, name, written, default=cfg == "default" or (
            position == 0 and "default" not in built)))
    card = _export_card(card_template, built, written, data_dir, yaml_configs)
    card.save(str(out / "README.md"))
    if is_synthetic_dir(data_dir):  # the marker sdx.data.naming.describe_data looks for, here or on the Hub
        (out / SYNTHETIC_MARKER).write_text(SYNTHETIC_CARD_NOTE.strip() + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"out_dir": str(out), "rows": {f"{cfg}/{split}": len(d) for cfg, ds in built.items() for split, d in ds.items()},
            "image_bytes": sum(w["bytes"] for w in written.values()), "export_bytes": size}


def _yaml_config(position: int, config: str, name: str, written: dict, *, default: bool) -> dict:
    files = []
    for split, w in written.items():
        paths = [f"data/{split}/{name}", f"data/{split}/images/*"] + ([f"data/{split}/masks/*"] if w["masks"] else [])
        files.append({"split": split, "path": paths})
    entry: dict = {"config_name": config, "data_files": files}
    if position:
        entry["metadata_filenames"] = [name]
    if default:
        entry["default"] = True
    return entry


# --------------------------------------------------------------------------------------------------------
# The card, written from what was exported

def read_card_template(path: str | os.PathLike | None = None) -> str:
    """The dataset card template: ``path``, or the card shipped in the package (sdx/data/data_card.md)."""
    if path is None:
        return importlib.resources.files("sdx.data").joinpath("data_card.md").read_text(encoding="utf-8")
    if not Path(path).is_file():
        raise FileNotFoundError(f"dataset card template not found: {path}")
    return Path(path).read_text(encoding="utf-8")


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    return next((label for bound, label in bounds if n < bound), "1M<n<10M")


def _table(header: Sequence[str], rows: list[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def _counts_section(ds: datasets.DatasetDict) -> str:
    names = ds[next(iter(ds))].features["label"].names
    per_split = {split: collections.Counter(d["label"]) for split, d in ds.items()}
    rows = [[names[label]] + [per_split[s].get(label, 0) for s in ds] for label in range(len(names))
            if any(per_split[s].get(label, 0) for s in ds)]
    rows.append(["**total**"] + [len(d) for d in ds.values()])
    absent = [names[i] for i in range(len(names)) if not any(per_split[s].get(i, 0) for s in ds)]
    note = f"\n\nDeclared in `class_descriptions.json` but with no image here ({len(absent)}): {', '.join(absent)}." \
        if absent else ""
    return _table(["class", *ds], rows) + note


def _levels_section(ds: datasets.DatasetDict, built: dict) -> str:
    present = []
    for split, d in ds.items():
        t = d.select_columns(["t2", "t3", "t4"]).with_format("arrow")[:]  # Arrow columns: no Python object per row
        filled = [pc.sum(pc.not_equal(t[c], "")).as_py() or 0 for c in ("t2", "t4")]
        present.append([split, len(d), filled[0], len(t) - t["t3"].null_count, filled[1]])
    fallbacks = []
    for cfg, b in built.items():
        report = build_report(b)
        level = report.get("config", {}).get("caption_level", "?")
        used = collections.Counter()
        for counts in report.get("fallbacks", {}).values():
            used.update(counts)
        fallbacks.append([cfg, level.upper(), ", ".join(f"{k}: {n}" for k, n in sorted(used.items())) or "none"])
    return (_table(["split", "rows", "with T2", "with T3", "with T4"], present)
            + "\n\nT0 and T1 are present in every row. Each config's `caption` is its level, or the first level "
              "of the fallback chain that a row has (T2 -> T4 -> T1, T3 -> T1, T4 -> T1); fallbacks used here:\n\n"
            + _table(["config", "caption level", "fallbacks (rows)"], fallbacks))


def _sources_section(data_dir: str | os.PathLike | None, report: dict) -> str:
    kind = data_source(data_dir)
    if kind == "synthetic" or is_synthetic_dir(data_dir):
        origin = "the project's synthetic generator (demo data, not steel)"
    elif kind == "hub":
        origin = f"the Hub release [{HUB_REPO}](https://huggingface.co/datasets/{HUB_REPO})"
    else:
        origin = f"a local folder in the official layout (`{Path(data_dir).name}`)"
    lines = [f"Built from {origin} by `steeldefectx export`."]
    sources = resolve_data_dir(data_dir) / "sources.csv" if kind != "hub" else None
    if sources is not None and sources.is_file():
        with open(sources, newline="", encoding="utf-8") as f:
            by_source = collections.Counter(row.get("source_dataset", "?") for row in csv.DictReader(f))
        lines.append("Source sets (from the folder's `sources.csv`): "
                     + ", ".join(f"{name} {n}" for name, n in sorted(by_source.items())) + ".")
    lines.append("\nBuild report:\n\n```\n" + format_report({**report, "splits": report.get("splits", {})}) + "\n```")
    return "\n".join(lines)


def _export_card(template: str | os.PathLike | None, built: dict, written: dict, data_dir, yaml_configs) -> DatasetCard:
    card = DatasetCard(read_card_template(template))
    first = built[next(iter(built))]
    report = build_report(first)
    contents = "\n\n".join([
        "## What this export holds", _sources_section(data_dir, report),
        "### Rows per split and class", _counts_section(first),
        "### Text levels present, and the fallbacks of each config", _levels_section(first, built),
        "### Licence", SYNTHETIC_LICENCE_NOTE if is_synthetic_dir(data_dir) else LICENCE_NOTE,
    ])
    text = card.text.replace(CONTENTS_MARKER, contents) if CONTENTS_MARKER in card.text else card.text + contents
    card.text = (SYNTHETIC_CARD_NOTE if is_synthetic_dir(data_dir) else "") + text + "\n" + EXPORT_MARKER + "\n"
    card.data["configs"] = yaml_configs
    card.data["size_categories"] = [_size_category(sum(len(d) for d in first.values()))]
    return card


# --------------------------------------------------------------------------------------------------------
# Push, and the card of a raw folder

def push_dataset(repo_id: str, data_dir: str | os.PathLike | None, *, token: str | None = None,
                 private: bool = False, **export_kwargs) -> dict:
    """Export to a temporary folder and upload it as a Hub dataset repo (needs a write token); afterwards
    ``datasets.load_dataset(repo_id, config)`` reads it."""
    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise PermissionError("push needs a Hugging Face write token: pass --token, set HF_TOKEN or run "
                              "`hf auth login`")
    tmp = Path(tempfile.mkdtemp(prefix="steeldefectx-push-"))
    try:
        summary = export_dataset(tmp / DEFAULT_EXPORT_DIR, data_dir, **export_kwargs)
        api = HfApi(token=token)
        api.create_repo(repo_id=repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=summary["out_dir"], repo_id=repo_id, repo_type="dataset",
                                   commit_message="Upload SteelDefectX (imagefolder configs) with steeldefectx push")
        return {**summary, "repo_id": repo_id, "commit": str(commit)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


RAW_CARD_TEXT = f"""
{RAW_CARD_MARKER}
## Loading this folder

This is the raw SteelDefectX layout (images, `*_mask/` folders, `*-text.json` records). Stock
`datasets.load_dataset` cannot read its records: without the `configs:` block above it would return an
imagefolder whose labels are the folder names `train`, `train_mask`, `val`, `val_mask`, with every mask counted
as an image. With the block, `load_dataset(this_folder)` returns only the images: split `train` from `train/`,
split `test` from `val/` (the official val split, on which the paper reports), no labels, masks or text.

For full rows (image, binarised mask, label, T0-T4, caption), build them with the SteelDefectX workbench:
`steeldefectx export --data_dir this_folder`, then `datasets.load_dataset("steeldefectx", "fine")` from the
folder holding the export; or in Python `steeldefectx.load_steeldefectx("this_folder", "fine")`.
"""


def write_raw_card(data_dir: str | os.PathLike) -> Path:
    """Add to a raw folder's README.md (created if absent) a `configs:` block that makes ``load_dataset(folder)``
    return the images of train/ and val/ only, and a section saying how to get full rows."""
    if data_source(data_dir) != "local":
        raise ValueError(f"card: --data_dir must be a local folder, not {data_dir!r}")
    root = resolve_data_dir(data_dir)
    readme = root / "README.md"
    card = DatasetCard.load(readme) if readme.is_file() else DatasetCard("---\npretty_name: SteelDefectX (raw)\n---\n")
    files = [{"split": "train" if split == "train" else "test", "path": f"{split}/*"}
             for split in ("train", "val") if (root / split).is_dir() and any((root / split).iterdir())]
    if not files:
        raise ValueError(f"card: {root} has no images in train/ or val/")
    card.data["configs"] = [{"config_name": "images", "default": True, "drop_labels": True, "data_files": files}]
    if RAW_CARD_MARKER not in card.text:
        card.text = card.text.rstrip("\n") + "\n" + RAW_CARD_TEXT
    card.save(str(readme))
    return readme


# --------------------------------------------------------------------------------------------------------
# CLI (registered by sdx.cli)

def _add_build_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--data_dir", default=None if required else "synthetic", required=required,
                   help="folder in the official layout, 'synthetic' for the embedded demo data, or 'hub' for the "
                        "Hub release (needs network)" + ("" if required else " (default: synthetic)"))
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


def _cmd_export(args) -> dict:
    result = export_dataset(args.out_dir, args.data_dir, **_build_kwargs(args))
    print(f"exported to {result['out_dir']}: " + ", ".join(f"{k}={v}" for k, v in result["rows"].items()))
    print(f"{result['export_bytes'] / 1e6:.1f} MB written ({result['image_bytes'] / 1e6:.1f} MB of images and masks)")
    print(f"load it with: datasets.load_dataset({result['out_dir']!r}, 'fine')")
    return result


def _cmd_push(args) -> dict:
    result = push_dataset(args.repo_id, args.data_dir, token=args.token, private=args.private,
                          **_build_kwargs(args))
    print(f"pushed to https://huggingface.co/datasets/{args.repo_id}: "
          f"datasets.load_dataset({args.repo_id!r}, 'fine')")
    return result


def _cmd_card(args) -> Path:
    path = write_raw_card(args.data_dir)
    print(f"wrote {path}: datasets.load_dataset({str(path.parent)!r}) now gives the images of train/ and val/ only")
    return path


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a folder stock load_dataset reads (images once, every config)",
                              description="Build each config and write OUT/data/<split>/images, masks and one "
                                          "metadata parquet per config, and OUT/README.md with the `configs:` YAML, "
                                          "so stock datasets.load_dataset(OUT, 'fine') works without this project.")
    p.add_argument("out_dir", nargs="?", default=DEFAULT_EXPORT_DIR,
                   help=f"export folder (default: {DEFAULT_EXPORT_DIR}, so load_dataset('{DEFAULT_EXPORT_DIR}', "
                        f"'fine') works from here)")
    _add_build_args(p)
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser("push", help="export and upload to a Hub dataset repo (needs a token)",
                              description="Export like `export` into a temporary folder and upload it to the Hub; "
                                          "then datasets.load_dataset(REPO_ID, 'fine') reads it.")
    p.add_argument("repo_id", help="e.g. <you>/steeldefectx")
    _add_build_args(p, required=True)  # never push the demo data by default
    p.add_argument("--token", default=None, help="Hugging Face write token (default: HF_TOKEN or saved login)")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_cmd_push)

    p = subparsers.add_parser("card", help="add a README card to a raw folder so load_dataset(folder) is not wrong",
                              description="Write (or update) DATA_DIR/README.md with a `configs:` block: "
                                          "load_dataset(DATA_DIR) then returns the images of train/ and val/ only, "
                                          "instead of an imagefolder that counts masks as images.")
    p.add_argument("--data_dir", required=True, help="a local folder in the official layout")
    p.set_defaults(func=_cmd_card)
