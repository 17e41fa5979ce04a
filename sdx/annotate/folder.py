"""Folder tools: annotate a folder of images and masks into records, verify a release against its masks.

The ``annotate`` and ``verify`` subcommands of ``steeldefectx`` (registered by ``register_cli``); labels from a
CSV, class sub-folders or file-name prefixes. Behaviour, counts and options: docs/annotation.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sdx.annotate.engine import RULE_FIELDS, analyze_pairs
from sdx.annotate.geometry import FALLBACK_DIRECTION, FALLBACK_DISTRIBUTION, FALLBACK_SHAPE
from sdx.annotate.images import list_files, masks_by_stem
from sdx.annotate.llm import write_json_atomic
from sdx.data.layout import read_json
from sdx.data.levels import CLASS_NAMES, PREFIX_TO_CLASS, render_t4

__all__ = ["annotate_folder", "verify_release", "format_verify", "register_cli", "annotate_main", "verify_main",
           "class_from_prefix", "read_labels_csv", "read_descriptions"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MISSING_MASK_CHOICES = ("keep", "skip", "error")
CHUNK_PAIRS = 64    # pairs read, then analysed together (analyze_pairs); fewer when workers share the images


def _map_chunks(func, jobs: list, workers: int, desc: str, quiet: bool, size: int = CHUNK_PAIRS) -> list:
    """Ordered map of ``func`` (a list of jobs -> a list of results) over chunks of at most ``size`` jobs, with a
    progress bar in jobs; ``workers > 1`` uses a process pool, with at least 8 chunks a worker."""
    if workers and workers > 1:
        size = max(1, min(size, len(jobs) // (workers * 8) or 1))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    parallel = bool(workers and workers > 1 and len(chunks) > 1)
    out: list = []
    with tqdm(total=len(jobs), desc=desc, unit="image", disable=quiet) as bar, \
            (multiprocessing.get_context().Pool(workers) if parallel else contextlib.nullcontext()) as pool:
        for res in (pool.imap(func, chunks) if parallel else map(func, chunks)):
            out.extend(res)
            bar.update(len(res))
    return out


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _canonical_class(name: str) -> str | None:
    """A class name, a file prefix or a case-insensitive class name -> the canonical class name (else None)."""
    if name in CLASS_NAMES:
        return name
    if name in PREFIX_TO_CLASS:
        return PREFIX_TO_CLASS[name]
    lowered = {c.lower(): c for c in CLASS_NAMES}
    return lowered.get(name.strip().lower().replace("_", " "))


def class_from_prefix(file_name: str) -> str | None:
    """Class of an official file name ``<prefix>_<n>.<ext>``: the longest case-sensitive prefix + "_" match."""
    hits = [p for p in PREFIX_TO_CLASS if file_name.startswith(p + "_")]
    return PREFIX_TO_CLASS[max(hits, key=len)] if hits else None


def read_labels_csv(path: str | os.PathLike) -> dict[str, str]:
    """{image_name: class_name} from a CSV with a header containing image_name and class_name."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if "image_name" not in cols or "class_name" not in cols:
                raise ValueError(f"labels file {path}: needs a header with the columns image_name,class_name "
                                 f"(found {', '.join(cols) or 'no header'})")
            labels: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                name, cls = (row.get("image_name") or "").strip(), (row.get("class_name") or "").strip()
                if not name or not cls:
                    raise ValueError(f"labels file {path}, line {line}: empty image_name or class_name")
                if name in labels and labels[name] != cls:
                    raise ValueError(f"labels file {path}, line {line}: {name} labelled twice "
                                     f"({labels[name]!r} and {cls!r})")
                labels[name] = cls
    except UnicodeDecodeError as exc:
        raise ValueError(f"labels file {path} is not UTF-8 text: {exc}") from exc
    return labels


def read_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """{image_name: T2} from a records file in the official schema (a list of records with image_name and
    natural_language_description) or from a plain {image_name: text} object."""
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict):
        bad = [k for k, v in data.items() if not isinstance(v, str)]
        if bad:
            raise ValueError(f"descriptions file {path}: value of {bad[0]!r} is not a string")
        return dict(data)
    if isinstance(data, list):
        out = {}
        for i, rec in enumerate(data):
            if not isinstance(rec, dict) or "image_name" not in rec:
                raise ValueError(f"descriptions file {path}: record {i} has no image_name")
            text = rec.get("natural_language_description") or ""
            if not isinstance(text, str):
                raise ValueError(f"descriptions file {path}: record {i} ({rec['image_name']}) "
                                 f"natural_language_description is not a string")
            out[str(rec["image_name"])] = text
        return out
    raise ValueError(f"descriptions file {path}: expected a list of records or an object, got {type(data).__name__}")


class _MaskFinder:
    """Finds an image's mask by the rule the builder uses (sdx.annotate.images.masks_by_stem: any file with the
    image's stem, a stem two files share refused); each mask folder is listed once."""

    def __init__(self, mask_dir: Path):
        self.mask_dir = mask_dir
        self.folders: dict[Path, tuple[dict[str, str], dict[str, list[str]]]] = {}

    def _index(self, folder: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
        if folder not in self.folders:
            self.folders[folder] = masks_by_stem(list_files(folder)) if folder.is_dir() else ({}, {})
        return self.folders[folder]

    def find(self, image: Path, sub: str | None) -> Path | None:
        """``<mask_dir>/<sub>/<stem>.*`` first in sub-folder mode, then ``<mask_dir>/<stem>.*``; None when absent."""
        for folder in ([self.mask_dir / sub] if sub else []) + [self.mask_dir]:
            masks, ambiguous = self._index(folder)
            if image.stem in ambiguous:
                raise ValueError(f"masks {' and '.join(str(folder / n) for n in ambiguous[image.stem])} share the "
                                 f"stem {image.stem!r} of image {image}: remove all but one (a mask is matched to "
                                 f"its image by stem)")
            if image.stem in masks:
                return folder / masks[image.stem]
        return None


def scan_folder(image_dir: Path, mask_dir: Path | None, labels: dict[str, str] | None) -> tuple[list[dict], str]:
    """[{image, name, class_name, mask}] and the labelling mode used ("csv", "folders" or "prefix");
    ``mask_dir=None`` (images only) gives every item mask None."""
    if not image_dir.is_dir():
        raise ValueError(f"image folder not found: {image_dir}")
    if mask_dir is not None and not mask_dir.is_dir():
        raise ValueError(f"mask folder not found: {mask_dir}")
    top = sorted(p for p in image_dir.iterdir() if _is_image(p))
    subdirs = sorted(p for p in image_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries: list[tuple[Path, str | None]] = [(p, None) for p in top]
    if not top and subdirs:
        entries = [(p, d.name) for d in subdirs for p in sorted(d.iterdir()) if _is_image(p)]
    if not entries:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir} or its class sub-folders")
    mode = "csv" if labels is not None else ("folders" if entries[0][1] is not None else "prefix")
    seen: dict[str, Path] = {}
    items = []
    finder = None if mask_dir is None else _MaskFinder(mask_dir)
    for path, sub in entries:
        if path.name in seen:
            raise ValueError(f"image name {path.name} occurs twice: {seen[path.name]} and {path} "
                             f"(records are keyed by file name)")
        seen[path.name] = path
        if mode == "csv":
            cls = labels.get(path.name)
            if cls is None:
                raise ValueError(f"image {path} has no row in the labels CSV")
        elif mode == "folders":
            cls = _canonical_class(sub) or sub
        else:
            cls = class_from_prefix(path.name)
            if cls is None:
                raise ValueError(f"image {path}: no class -- the file name starts with no known prefix "
                                 f"(<prefix>_<n>, case-sensitive); give --labels CSV or class sub-folders")
        items.append({"image": path, "name": path.name, "class_name": cls,
                      "mask": None if finder is None else finder.find(path, sub)})
    if labels is not None:
        extra = sorted(set(labels) - set(seen))
        if extra:
            log.warning("%d labels CSV rows name no image in %s (first: %s)", len(extra), image_dir, extra[0])
    return items, mode


def _annotate_chunk(jobs: list[tuple]) -> list[dict]:
    """The records of a chunk of (image, mask, class, T2, fallback, resize) jobs (fallback and resize the same in all),
    the pairs with a mask analysed together (``analyze_pairs``)."""
    fallback, resize = jobs[0][4], jobs[0][5]
    kw = {"shape": FALLBACK_SHAPE, "direction": FALLBACK_DIRECTION,
          "distribution": FALLBACK_DISTRIBUTION} if fallback else {}
    with_mask = [(image, mask, cls) for image, mask, cls, *_ in jobs if mask is not None]
    analysed = iter(analyze_pairs(with_mask, resize_mask=resize, geometry=not fallback, **kw))
    return [_annotate_result(job, None if job[1] is None else next(analysed)) for job in jobs]


def _annotate_result(job: tuple, res: dict | ValueError | None) -> dict:
    image, _, cls, t2 = job[:4]
    rec = {"image_name": Path(image).name, "class_name": cls, "natural_language_description": t2,
           "structured_attributes": None, "template_sentence": ""}
    if res is None:
        return {"record": rec, "status": "no_mask"}
    if isinstance(res, ValueError):
        return {"record": rec, "status": "error", "error": str(res)}
    rec["structured_attributes"] = res["attributes"]
    rec["template_sentence"] = res["t4"]
    if res["statistics"]["component_count"] == 0:
        # values only in 1..127 (e.g. a 0/1 label mask): empty under the > 127 rule, but Position is not
        return {"record": rec, "status": "faint_mask" if res["attributes"]["Position"] else "empty_mask"}
    return {"record": rec, "status": "ok"}


def annotate_folder(image_dir: str | os.PathLike, mask_dir: str | os.PathLike, output: str | os.PathLike, *,
                    labels: str | os.PathLike | None = None, descriptions: str | os.PathLike | None = None,
                    workers: int = 1, missing_mask: str = "keep", on_error: str = "raise",
                    fallback_fields: bool = False, resize_mask: bool = False, quiet: bool = False) -> dict:
    """Annotate a folder of images and masks into records in the official schema (docs/annotation.md).

    Labels: ``labels`` CSV (image_name,class_name) if given, else class sub-folders of ``image_dir`` (folder
    name = class name, file prefix or case-insensitive class name), else the file-name prefix (longest
    case-sensitive ``<prefix>_`` match, sdx.data.levels.PREFIX_TO_CLASS). Masks: ``<mask_dir>/<stem>.png`` (or any
    image extension; in sub-folder mode ``<mask_dir>/<class folder>/<stem>.png`` first).

    Images without a mask (``missing_mask``): "keep" writes the record with structured_attributes null and
    template_sentence "" (as the release does for images without fine annotation), "skip" leaves the image
    out, "error" raises. Either way they are counted in the summary. Unreadable pairs: ``on_error="raise"``
    raises ValueError naming the file, "skip" leaves them out and lists them. Empty masks are annotated with
    the authors' values (docs/annotation.md) and counted (``empty_masks``; ``faint_masks`` counts those with
    values only in 1..127, e.g. 0/1 label masks, which are empty under the > 127 rule, with a warning).
    Returns a summary dict; the records are written as a JSON list to ``output``.
    """
    if missing_mask not in MISSING_MASK_CHOICES:
        raise ValueError(f"missing_mask must be one of {MISSING_MASK_CHOICES}, got {missing_mask!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    image_dir, mask_dir, output = Path(image_dir), Path(mask_dir), Path(output)
    label_map = read_labels_csv(labels) if labels else None
    t2_map = read_descriptions(descriptions) if descriptions else {}
    items, mode = scan_folder(image_dir, mask_dir, label_map)
    no_mask = [it for it in items if it["mask"] is None]
    if no_mask and missing_mask == "error":
        raise ValueError(f"{len(no_mask)} image(s) have no mask in {mask_dir}, first: {no_mask[0]['image']} "
                         f"(expected {mask_dir / (no_mask[0]['image'].stem + '.png')}); use --missing_mask "
                         f"keep|skip")
    if missing_mask == "skip":
        items = [it for it in items if it["mask"] is not None]
    jobs = [(str(it["image"]), None if it["mask"] is None else str(it["mask"]), it["class_name"],
             t2_map.get(it["name"], ""), fallback_fields, resize_mask) for it in items]
    results = _map_chunks(_annotate_chunk, jobs, workers, "annotate", quiet)
    records, errors = [], []
    status = collections.Counter()
    for res in results:
        status[res["status"]] += 1
        if res["status"] == "error":
            if on_error == "raise":
                raise ValueError(res["error"])
            errors.append(res["error"])
            continue
        records.append(res["record"])
    write_json_atomic(output, records)
    n_images = len(items) + (len(no_mask) if missing_mask == "skip" else 0)
    return _annotate_summary(output, mode, n_images, records, status, errors, len(no_mask), missing_mask)


def _annotate_summary(output: Path, mode: str, n_images: int, records: list[dict], status: collections.Counter,
                      errors: list[str], n_no_mask: int, missing_mask: str) -> dict:
    """annotate_folder's summary (every image counted), with warnings for unknown classes and faint masks."""
    unknown = sorted({r["class_name"] for r in records} - set(CLASS_NAMES))
    summary = {
        "output": str(output), "labels_from": mode, "images": n_images,
        "records": len(records), "annotated": status["ok"] + status["empty_mask"] + status["faint_mask"],
        "empty_masks": status["empty_mask"] + status["faint_mask"], "faint_masks": status["faint_mask"],
        "no_mask": n_no_mask,
        "no_mask_action": missing_mask, "errors": errors,
        "with_description": sum(1 for r in records if r["natural_language_description"]),
        "classes": dict(collections.Counter(r["class_name"] for r in records)),
        "unknown_classes": unknown,
    }
    if unknown:
        log.warning("class names not among the 25 SteelDefectX classes: %s", ", ".join(unknown))
    if status["faint_mask"]:
        log.warning("%d mask(s) have values only in 1..127 (0/1 label masks?): no pixel passes the > 127 rule, "
                    "so they were annotated as empty masks; save masks as 0/255", status["faint_mask"])
    return summary


def _same_field(field: str, want: Any, got: Any) -> bool:
    if field != "Position":
        return want == got
    try:
        return len(want) == len(got) and all(
            str(a[0]) == b[0] and abs(float(a[1]) - b[1]) <= 1e-6 for a, b in zip(want, got))
    except (TypeError, ValueError, IndexError):
        return False


def _verify_chunk(jobs: list[tuple]) -> list[dict]:
    """The verify results of a chunk of (image, mask, record) jobs, the pairs with attributes and a mask analysed
    together (``analyze_pairs``, rule fields only); a mask given as a ValueError is that record's error."""
    def readable(mask: Any, rec: dict) -> bool:
        return isinstance(rec.get("structured_attributes"), dict) and isinstance(mask, str)

    analysed = iter(analyze_pairs([(image, mask, rec.get("class_name") or "?") for image, mask, rec in jobs
                                   if readable(mask, rec)], geometry=False))
    return [_verify_result(rec, next(analysed) if readable(mask, rec) else mask) for _, mask, rec in jobs]


def _verify_result(rec: dict, res: dict | ValueError | None) -> dict:
    sa = rec.get("structured_attributes")
    out: dict[str, Any] = {"image_name": rec.get("image_name"), "status": "ok", "mismatch": {}}
    if not isinstance(sa, dict):
        out["status"] = "no_attributes"
        return out
    if res is None:
        out["status"] = "no_mask"
        return out
    if isinstance(res, ValueError):
        out["status"] = "unreadable"
        out["error"] = str(res)
        return out
    got = res["attributes"]
    for field in RULE_FIELDS:
        if field not in sa or not _same_field(field, sa[field], got[field]):
            out["mismatch"][field] = {"release": sa.get(field, "<missing>"), "computed": got[field]}
    if sa.get("Defect type") != rec.get("class_name"):
        out["mismatch"]["Defect type"] = {"release": sa.get("Defect type"), "computed": rec.get("class_name")}
    try:
        t4 = render_t4(sa)
    except (KeyError, TypeError, IndexError):
        t4 = None
    if rec.get("template_sentence") != t4:
        out["mismatch"]["template_sentence"] = {"release": rec.get("template_sentence"), "computed": t4}
    return out


VERIFY_COLUMNS = RULE_FIELDS + ("Defect type", "template_sentence")
VERIFY_COUNTS = ("records", "verified", "no_attributes", "no_mask", "unreadable", "records_with_mismatch")


def verify_release(data_dir: str | os.PathLike, *, splits: list[str] | None = None, workers: int = 1,
                   quiet: bool = False, examples: int = 5) -> dict:
    """Recompute the rule-based T3 fields of every ``<split>-text.json`` in ``data_dir`` from its masks.

    For each split file: image ``<split>/<image_name>``, mask ``<split>_mask/<stem>.*`` (the builder's rule,
    ``sdx.annotate.images.masks_by_stem``: any extension; a stem two masks share makes the record unreadable).
    Compared per record: Number of Defects, Position (cells, order, shares to 1e-6), Scale, Polarity, Saliency;
    also "Defect type" against class_name and template_sentence against the authors' template of the record's
    own T3.
    Records without structured_attributes, without a mask file, or whose image/mask cannot be read are counted
    as unverifiable (never dropped silently). Returns {"files": {name: {...}}, "total": {...}}.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder not found: {data_dir}")
    files = sorted(data_dir.glob("*-text.json"))
    if splits:
        files = [data_dir / f"{s}-text.json" for s in splits]
    if not files:
        raise ValueError(f"no <split>-text.json files in {data_dir}")
    report: dict[str, Any] = {"files": {}, "total": {}}
    total = collections.Counter()
    total_mm = collections.Counter()
    for path in files:
        entry, mism = _verify_file(data_dir, path, workers, quiet, examples)
        report["files"][path.name] = entry
        total.update({k: entry[k] for k in VERIFY_COUNTS})
        total_mm.update(mism)
    report["total"] = {**{k: total.get(k, 0) for k in VERIFY_COUNTS},
                       "mismatches": {f: total_mm.get(f, 0) for f in VERIFY_COLUMNS}}
    return report


def _read_records(path: Path) -> list:
    recs = read_json(path)
    if not isinstance(recs, list):
        raise ValueError(f"{path}: expected a list of records, got {type(recs).__name__}")
    return recs


def _verify_file(data_dir: Path, path: Path, workers: int, quiet: bool,
                 examples: int) -> tuple[dict, collections.Counter]:
    """(the report entry of one <split>-text.json, its mismatch counts per field)."""
    split = path.name[: -len("-text.json")]
    recs = _read_records(path)
    finder = _MaskFinder(data_dir / f"{split}_mask")
    jobs = []
    for i, rec in enumerate(recs):
        if not isinstance(rec, dict) or not isinstance(rec.get("image_name"), str):
            raise ValueError(f"{path}: record {i} has no image_name")
        image = data_dir / split / rec["image_name"]
        try:
            mask = finder.find(image, None)
        except ValueError as exc:   # masks sharing the image's stem: unreadable, as the builder refuses them
            jobs.append((str(image), exc, rec))
            continue
        jobs.append((str(image), None if mask is None else str(mask), rec))
    results = _map_chunks(_verify_chunk, jobs, workers, f"verify {path.name}", quiet)
    status = collections.Counter(r["status"] for r in results)
    mism = collections.Counter(f for r in results for f in r["mismatch"])
    bad = [r for r in results if r["mismatch"]]
    entry = {
        "records": len(recs), "verified": status["ok"], "no_attributes": status["no_attributes"],
        "no_mask": status["no_mask"], "unreadable": status["unreadable"],
        "records_with_mismatch": len(bad),
        "mismatches": {f: mism.get(f, 0) for f in VERIFY_COLUMNS},
        "examples": [{"image_name": r["image_name"], **r["mismatch"]} for r in bad[:examples]],
        "unreadable_files": [r["error"] for r in results if r["status"] == "unreadable"][:examples],
    }
    return entry, mism


def format_verify(report: dict) -> str:
    """The verify report as a fixed-width table (one row per file and a total row)."""
    short = {"Number of Defects": "Number", "Position": "Position", "Scale": "Scale", "Polarity": "Polarity",
             "Saliency": "Saliency", "Defect type": "Type", "template_sentence": "T4"}
    head = ["file", "records", "verified", "no T3", "no mask", "unreadable"] + [short[f] for f in VERIFY_COLUMNS]
    rows = [head]
    for name, e in list(report["files"].items()) + [("TOTAL", report["total"])]:
        rows.append([name, e["records"], e["verified"], e["no_attributes"], e["no_mask"], e["unreadable"]]
                    + [e["mismatches"][f] for f in VERIFY_COLUMNS])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ["  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("(mismatch counts per field; verified = records recomputed from image + mask)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# CLI (registered on steeldefectx.py by register_cli)
# ----------------------------------------------------------------------------------------------------------
def annotate_main(args: argparse.Namespace) -> dict:
    if getattr(args, "llm_fields", False):
        from sdx.annotate.fields import annotate_llm_main  # function-local: that module imports this one
        return annotate_llm_main(args)
    summary = annotate_folder(args.image_dir, args.mask_dir, args.output, labels=args.labels,
                              descriptions=args.descriptions, workers=args.workers, missing_mask=args.missing_mask,
                              on_error=args.on_error, fallback_fields=args.fallback_fields,
                              resize_mask=args.resize_mask, quiet=args.quiet)
    print(f"wrote {summary['records']} records to {summary['output']} (labels from {summary['labels_from']}): "
          f"{summary['annotated']} annotated, {summary['empty_masks']} with an empty mask, "
          f"{summary['no_mask']} without a mask ({summary['no_mask_action']}), {len(summary['errors'])} skipped "
          f"as unreadable")
    for err in summary["errors"][:10]:
        print(f"  skipped: {err}")
    return summary


def verify_main(args: argparse.Namespace) -> dict:
    report = verify_release(args.data_dir, splits=args.splits, workers=args.workers, quiet=args.quiet)
    print(format_verify(report))
    for name, e in report["files"].items():
        for ex in e["examples"]:
            fields = {k: v for k, v in ex.items() if k != "image_name"}
            print(f"  {name}: {ex['image_name']}: " + "; ".join(
                f"{k}: release {v['release']!r} vs computed {v['computed']!r}" for k, v in fields.items()))
        for err in e["unreadable_files"]:
            print(f"  {name}: unreadable: {err}")
    if args.fail_on_mismatch and report["total"]["records_with_mismatch"]:
        raise ValueError(f"{report['total']['records_with_mismatch']} record(s) disagree with their masks "
                         f"in {args.data_dir}")
    return report


def add_folder_arguments(p: argparse.ArgumentParser, mask_required: bool, mask_help: str) -> None:
    """--image_dir, --mask_dir and --labels: the input folder flags of annotate and describe."""
    p.add_argument("--image_dir", required=True, help="folder of images (flat, or one sub-folder per class)")
    p.add_argument("--mask_dir", required=mask_required, default=None, help=mask_help)
    p.add_argument("--labels", default=None, metavar="CSV", help="CSV with columns image_name,class_name")


def register_cli(subparsers: Any) -> None:
    """Add the ``annotate`` and ``verify`` subcommands (func returns the summary / report dict)."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser(
        "annotate", formatter_class=fmt,
        help="compute T3/T4 for a folder of images and masks and write records in the official schema",
        description="Annotate a folder of images and masks with the SteelDefectX T3 structured attributes and "
                    "the T4 template sentence (five rule fields exactly as the authors' scripts; Shape, "
                    "Direction and Spatial Distribution from mask geometry, or the authors' fallbacks with "
                    "--fallback_fields). Labels come from --labels, else class sub-folders of --image_dir, else "
                    "the official file-name prefixes (<prefix>_<n>.jpg). Masks: <mask_dir>/<stem>.png.")
    add_folder_arguments(p, mask_required=True, mask_help="folder of masks named <image stem>.png")
    p.add_argument("--descriptions", default=None, metavar="JSON",
                   help="T2 source: records in the official schema or {image_name: text}; T2 is '' otherwise")
    p.add_argument("--output", required=True, metavar="FILE.json", help="records file to write")
    p.add_argument("--workers", type=int, default=1, help="processes (1 = in-process)")
    p.add_argument("--missing_mask", choices=MISSING_MASK_CHOICES, default="keep",
                   help="image without a mask: keep its record with null T3 and empty T4, skip it, or error")
    p.add_argument("--on_error", choices=("raise", "skip"), default="raise",
                   help="unreadable image/mask or size mismatch: stop with an error naming the file, or skip it")
    p.add_argument("--fallback_fields", action="store_true",
                   help="Shape/Direction/Spatial Distribution = the authors' fallbacks (unclear/none/"
                        "isolated-or-unclear) instead of mask geometry")
    p.add_argument("--resize_mask", action="store_true",
                   help="resize a mask of another size to its image (nearest) instead of raising")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from sdx.annotate.fields import add_llm_field_args  # function-local: that module imports this one
    add_llm_field_args(p)
    p.set_defaults(func=annotate_main)

    v = subparsers.add_parser(
        "verify", formatter_class=fmt,
        help="recompute the rule-based T3 fields of a release from its masks and report mismatches",
        description="For every <split>-text.json in --data_dir, recompute Number of Defects, Position, Scale, "
                    "Polarity and Saliency from <split>/<image> and <split>_mask/<stem>.png, and check Defect "
                    "type and the T4 template. Prints mismatch counts per field and per file; records without "
                    "T3, without a mask or with unreadable files are counted as unverifiable.")
    v.add_argument("--data_dir", required=True, help="folder in the official SteelDefectX layout")
    v.add_argument("--splits", nargs="+", default=None, help="only these splits (default: every *-text.json)")
    v.add_argument("--workers", type=int, default=1, help="processes (1 = in-process)")
    v.add_argument("--fail_on_mismatch", action="store_true", help="exit with an error when anything disagrees")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=verify_main)
