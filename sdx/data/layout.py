"""The official raw layout: locating it (local folder, "synthetic", the Hub), reading and checking every raw file.

Bad input raises DataError naming the file and the field, or is skipped and counted (``on_error="skip"``);
records in = rows out + skips. The layout and every check: docs/dataset.md. Kept apart from the builder
because `datasets` patches ``open``, ``os.path`` and ``Path`` in a builder's own module, slowing the scan.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from sdx.data import levels as T

logger = logging.getLogger(__name__)

HUB_REPO = "Zhaosxian/SteelDefectX"
SPLITS = {"train": ("train", "train_mask", "train-text.json"), "val": ("val", "val_mask", "val-text.json")}
EXT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}

OFFLINE_HELP = (
    "SteelDefectX: no data_dir was given and the Hub dataset {repo} could not be fetched ({error}).\n"
    "  * On a machine with internet: `hf download {repo} --repo-type dataset --local-dir SteelDefectX`,\n"
    "    copy the folder here and pass it: load_steeldefectx(data_dir='SteelDefectX') or --data_dir SteelDefectX.\n"
    "  * Any folder in the official layout works (class_descriptions.json, train/, val/, train-text.json, ...).\n"
    "  * For the embedded synthetic demo data (no download): data_dir='synthetic' / --data_dir synthetic."
)


class DataError(ValueError):
    """Bad raw input; the message names the file and the field."""

    def __init__(self, file: str | os.PathLike, field: str, message: str):
        self.file, self.field = str(file), field
        super().__init__(f"{file}: field '{field}': {message}")


class DataSourceError(RuntimeError):
    """The data could not be located (offline with no data_dir, missing folder)."""



def data_source(data_dir: str | os.PathLike | None) -> str:
    """What a ``data_dir`` value names, the one place its special values are decoded: "synthetic" (the embedded
    generator), "hub" (None, or "hub" when no local folder has that name: the Hub release) or "local"."""
    if data_dir is None or (str(data_dir) == "hub" and not Path("hub").is_dir()):
        return "hub"
    return "synthetic" if str(data_dir) == "synthetic" else "local"


def is_synthetic_dir(data_dir: str | os.PathLike | None) -> bool:
    """True for "synthetic" and for any folder the synthetic generator wrote (it carries a SYNTHETIC.md marker)."""
    if data_dir is None:
        return False
    return data_source(data_dir) == "synthetic" or (Path(data_dir) / "SYNTHETIC.md").is_file()


def resolve_data_dir(data_dir: str | os.PathLike | None, hub_repo: str = HUB_REPO) -> Path:
    """The folder a ``data_dir`` value names (see `data_source`); the Hub release is fetched (or read from the
    huggingface_hub cache) with one clear error when that fails offline."""
    kind = data_source(data_dir)
    if kind == "synthetic":
        from sdx.data.synthetic import default_dataset_dir  # heavy (scipy, the annotation engine), optional

        return Path(default_dataset_dir())
    if kind == "local":
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataSourceError(f"data_dir {path} does not exist or is not a folder")
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download  # optional: only the Hub release needs it

        return Path(snapshot_download(repo_id=hub_repo, repo_type="dataset"))
    except Exception as error:  # offline, no such repo, no permission: one clear message
        raise DataSourceError(OFFLINE_HELP.format(repo=hub_repo, error=f"{type(error).__name__}: {error}")) from None


def fingerprint_layout(data_dir: Path) -> str:
    """Hash of every raw file's name, size and mtime (cheap: stat only), for cache invalidation."""
    h = hashlib.sha1()
    entries = ["class_descriptions.json"] + [name for triple in SPLITS.values() for name in triple]
    for entry in entries:
        path = data_dir / entry
        if path.is_file():
            st = path.stat()
            h.update(f"{entry}:{st.st_size}:{st.st_mtime_ns};".encode())
        elif path.is_dir():
            with os.scandir(path) as it:
                for e in sorted(it, key=lambda e: e.name):
                    st = e.stat()
                    h.update(f"{entry}/{e.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        else:
            h.update(f"{entry}:absent;".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------
# Reading and checking the raw files

def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(path, "<file>", "file not found")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, "<file>",
                        f"not valid UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    try:
        return json.loads(content)
    except json.JSONDecodeError as e:
        raise DataError(path, "<file>", f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def read_class_descriptions(data_dir: Path) -> dict[str, str]:
    path = data_dir / "class_descriptions.json"
    obj = read_json(path)
    if not isinstance(obj, dict) or not obj:
        raise DataError(path, "<root>", "expected a non-empty object {class_name: description}")
    for name, desc in obj.items():
        if not isinstance(desc, str) or not desc.strip():
            raise DataError(path, name, "class description must be a non-empty string")
    return {name: obj[name] for name in sorted(obj)}


def class_texts(data_dir: str | os.PathLike) -> dict[str, str]:
    """{class name: T1 sentence} of a data folder ("synthetic" accepted)."""
    return read_class_descriptions(resolve_data_dir(data_dir))


@dataclass
class Item:
    split: str            # "train" or "val" (official)
    image_path: Path
    mask_path: Path | None
    record: dict
    label: int
    size: tuple[int, int]
    mask_png: bytes | None = None   # the binarised mask, encoded once while checking


@dataclass
class ScanReport:
    """What the scan saw, per official split: inputs, outputs, skips by reason, and notes."""

    records_in: collections.Counter = field(default_factory=collections.Counter)
    images_in: collections.Counter = field(default_factory=collections.Counter)
    rows_out: collections.Counter = field(default_factory=collections.Counter)
    skipped: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    notes: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    fallbacks: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    messages: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "records_in": dict(self.records_in), "images_in": dict(self.images_in),
            "rows_out": dict(self.rows_out),
            "skipped": {k: dict(v) for k, v in self.skipped.items()},
            "notes": {k: dict(v) for k, v in self.notes.items()},
            "fallbacks": {k: dict(v) for k, v in self.fallbacks.items()},
            "messages": self.messages[:50],
        }


class _Checker:
    """Raise DataError, or count a skip when on_error == "skip"."""

    def __init__(self, on_error: str, report: ScanReport):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.on_error, self.report = on_error, report

    def fail(self, split: str, reason: str, error: DataError) -> None:
        if self.on_error == "raise":
            raise error
        self.report.skipped[split][reason] += 1
        self.report.messages.append(str(error))
        logger.warning("skipped (%s): %s", reason, error)


_REQUIRED_FIELDS = {
    "image_name": (str,),
    "class_name": (str,),
    "natural_language_description": (str, type(None)),
    "structured_attributes": (dict, type(None)),
    "template_sentence": (str, type(None)),
}


def _check_record(path: Path, index: int, rec: Any, classes: dict[str, str]) -> dict:
    where = f"record {index}"
    if not isinstance(rec, dict):
        raise DataError(path, where, f"expected an object, got {type(rec).__name__}")
    for name, types in _REQUIRED_FIELDS.items():
        if name not in rec:
            if types[-1] is type(None):
                continue
            raise DataError(path, f"{where}.{name}", "missing")
        if not isinstance(rec[name], types):
            raise DataError(path, f"{where}.{name}", f"expected {' or '.join(t.__name__ for t in types)}, "
                                                   f"got {type(rec[name]).__name__}")
    name = rec["image_name"]
    if not name or "/" in name or "\\" in name or ".." in name or name != name.strip():
        raise DataError(path, f"{where}.image_name", f"{name!r} is not a plain file name (no paths, no '..')")
    if rec["class_name"] not in classes:
        raise DataError(path, f"{where}.class_name",
                        f"{rec['class_name']!r} ({name}) is not in class_descriptions.json")
    attrs = rec.get("structured_attributes")
    if attrs is not None:
        for f_name in T.T3_FIELDS:
            if f_name not in attrs:
                raise DataError(path, f"{where}.structured_attributes.{f_name}", f"missing ({name})")
        pos = attrs["Position"]
        if not isinstance(pos, list) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[1], (int, float)) for p in pos):
            raise DataError(path, f"{where}.structured_attributes.Position",
                            f"expected [[cell, share], ...] ({name})")
    return rec


def _verify_image(path: Path) -> tuple[tuple[int, int], str | None]:
    """Decode the whole file; return (size, repair note). Raises DataError for unreadable files.

    JPEGs are decoded in draft mode (DCT scaled to 1/8): the whole entropy-coded stream is still read, so a
    truncated or corrupt file fails exactly as a full decode would, at a fraction of the cost.
    """
    if os.path.getsize(path) == 0:
        raise DataError(path, "image", "zero-byte file")
    try:
        with Image.open(path) as im:
            fmt, size = im.format, im.size
            if fmt == "JPEG":
                im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, "image", f"cannot be decoded ({type(e).__name__}: {e})") from None
    expected = EXT_FORMATS.get(os.path.splitext(path)[1].lower())
    note = f"extension {os.path.splitext(path)[1]} but {fmt} content: read by content" \
        if expected and fmt != expected else None
    return size, note


def binarize_mask_file(path: Path, size: tuple[int, int]) -> tuple[bytes, bool]:
    """Decode a mask file, check its size against its image's and binarise it at > 127.

    Returns (PNG bytes of the 0/255 mask, whether the file held other values). A mask that is already a 0/255
    grayscale PNG keeps its own bytes (no re-encode)."""
    if os.path.getsize(path) == 0:
        raise DataError(path, "mask", "zero-byte file")
    try:
        with Image.open(path) as im:
            im.load()
            fmt, mode = im.format, im.mode
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, "mask", f"cannot be decoded ({type(e).__name__}: {e})") from None
    if arr.ndim == 3:  # RGB(A) masks: any colour channel above the threshold
        arr = arr[..., :3].max(axis=2)
    if arr.dtype != np.uint8:  # 16-bit / 32-bit masks: scale to 8 bits
        arr = (arr.astype(np.float64) * (255.0 / max(float(np.iinfo(arr.dtype).max), 1.0))).round() \
            if np.issubdtype(arr.dtype, np.integer) else (arr > 0.5) * 255.0
    if (arr.shape[1], arr.shape[0]) != tuple(size):
        raise DataError(path, "mask", f"size {arr.shape[1]}x{arr.shape[0]} differs from its image's "
                                      f"{size[0]}x{size[1]}")
    binary = arr > 127
    non_binary = bool(np.count_nonzero(binary) != np.count_nonzero(arr))
    if not non_binary:
        non_binary = bool(np.any(arr[binary] != 255))
    if not non_binary and fmt == "PNG" and mode == "L":
        with open(path, "rb") as f:
            return f.read(), False
    buf = io.BytesIO()
    Image.fromarray(binary.astype(np.uint8) * 255, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), non_binary


def _check_files(image_path: Path, mask_path: Path | None):
    """Decode one image and its mask: (size, note, mask_png, non_binary), or ("image"|"mask", DataError)."""
    try:
        size, note = _verify_image(image_path)
    except DataError as e:
        return "image", e
    if mask_path is None:
        return size, note, None, False
    try:
        mask_png, non_binary = binarize_mask_file(mask_path, size)
    except DataError as e:
        return "mask", e
    return size, note, mask_png, non_binary


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def scan_layout(data_dir: Path, *, on_error: str = "raise", with_masks: bool = True, progress: bool = False,
                num_workers: int | None = None) -> tuple[dict[str, str], list[Item], ScanReport]:
    """Read and check every raw file; returns (class descriptions, items, report).

    Records are checked in order; images and masks are decoded on ``num_workers`` threads (PIL releases the
    GIL while decoding), and their results are taken back in record order, so errors and skips are reported
    exactly as a sequential scan would report them.
    """
    report = ScanReport()
    check = _Checker(on_error, report)
    classes = read_class_descriptions(data_dir)
    items: list[Item] = []
    pool = ThreadPoolExecutor(max_workers=num_workers or default_workers())
    try:
        for split in SPLITS:
            items += _scan_split(data_dir, split, classes, check, pool, with_masks=with_masks, progress=progress)
    finally:
        pool.shutdown(cancel_futures=True)
    return classes, items, report


def _list_files(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:  # DirEntry: no extra stat calls
        return [e for e in it if e.is_file()]


def _scan_split(data_dir: Path, split: str, classes: dict[str, str], check: _Checker, pool: ThreadPoolExecutor,
                *, with_masks: bool, progress: bool) -> list[Item]:
    """The checked items of one official split; every skip counted in ``check.report``."""
    image_dir, mask_dir, text_file = SPLITS[split]
    text_path, image_root, mask_root = data_dir / text_file, data_dir / image_dir, data_dir / mask_dir
    records = read_json(text_path)
    if not isinstance(records, list):
        raise DataError(text_path, "<root>", "expected a list of records")
    if not image_root.is_dir():
        raise DataError(image_root, "<folder>", f"image folder for split '{split}' not found")
    images = {e.name: Path(e.path) for e in _list_files(image_root) if not e.name.startswith(".")}
    check.report.records_in[split] = len(records)
    check.report.images_in[split] = len(images)
    masks = {}
    if with_masks and mask_root.is_dir():
        masks = {os.path.splitext(e.name)[0]: Path(e.path) for e in _list_files(mask_root)}
    seen, candidates = _match_records(split, text_path, image_root, records, classes, images, masks, check)
    results = pool.map(lambda c: _check_files(c[1], c[2]), candidates)
    if progress:
        results = tqdm(results, total=len(candidates), desc=f"checking {split}", unit="img")
    label_of = {name: i for i, name in enumerate(classes)}
    items = [Item(split, image_path, mask_path, rec, label_of[rec["class_name"]], result[0], result[2])
             for (rec, image_path, mask_path), result in zip(candidates, results)
             if _count_files(split, image_path, mask_path, result, check, with_masks=with_masks)]
    for name in sorted(set(images) - set(seen)):
        check.fail(split, "image without record", DataError(
            image_root / name, "image_name", f"no record in {text_path.name}"))
    return items


def _match_records(split: str, text_path: Path, image_root: Path, records: list, classes: dict[str, str],
                   images: dict[str, Path], masks: dict[str, Path],
                   check: _Checker) -> tuple[dict[str, int], list[tuple]]:
    """Records in order: fields, classes, duplicates, matching image -> ({name: index}, [(rec, image, mask)])."""
    seen: dict[str, int] = {}
    candidates = []
    for index, rec in enumerate(records):
        try:
            rec = _check_record(text_path, index, rec, classes)
        except DataError as e:
            check.fail(split, "bad record", e)
            continue
        name = rec["image_name"]
        if name in seen:
            check.fail(split, "duplicate image_name", DataError(
                text_path, f"record {index}.image_name", f"{name!r} already used by record {seen[name]}"))
            continue
        seen[name] = index
        image_path = images.get(name)
        if image_path is None:
            check.fail(split, "record without image", DataError(
                text_path, f"record {index}.image_name", f"no file {image_root / name}"))
            continue
        candidates.append((rec, image_path, masks.get(os.path.splitext(name)[0])))
    return seen, candidates


def _count_files(split: str, image_path: Path, mask_path: Path | None, result: tuple, check: _Checker, *,
                 with_masks: bool) -> bool:
    """Count one decoded candidate's skip or notes; True when it becomes a row."""
    report = check.report
    if isinstance(result[1], DataError):
        check.fail(split, "unreadable image" if result[0] == "image" else "bad mask", result[1])
        return False
    _size, note, _mask_png, non_binary = result
    if mask_path is None and with_masks:
        report.notes[split]["images without mask"] += 1
    if non_binary:
        report.notes[split]["masks binarised (> 127)"] += 1
    if note:
        report.notes[split]["extension differs from content"] += 1
        report.messages.append(f"{image_path}: {note}")
    report.rows_out[split] += 1
    return True


def format_report(summary: dict) -> str:
    lines = ["SteelDefectX build: " + ", ".join(f"{k} {v}" for k, v in summary.get("splits", {}).items())]
    if summary.get("empty_splits_left_out"):
        lines.append(f"  empty splits left out: {', '.join(summary['empty_splits_left_out'])}")
    for split in summary.get("records_in", {}):
        lines.append(f"  {split}: records in {summary['records_in'][split]}, images in "
                     f"{summary['images_in'][split]}, rows out {summary['rows_out'].get(split, 0)}")
    for title in ("skipped", "notes", "fallbacks"):
        for split, counts in summary.get(title, {}).items():
            for reason, n in counts.items():
                lines.append(f"  {title} [{split}] {reason}: {n}")
    return "\n".join(lines)


def dataset_stats(data_dir: str | os.PathLike | None, *, with_masks: bool = True) -> dict:
    """Per class and official split: images, masks, records lacking T2 / T3 / T4; plus every problem, counted."""
    root = resolve_data_dir(data_dir)
    classes, items, report = scan_layout(root, on_error="skip", with_masks=with_masks, progress=True)
    columns = ("images", "masks", "lacking T2", "lacking T3", "lacking T4")
    table: dict = {split: {name: dict.fromkeys(columns, 0) for name in classes} for split in SPLITS}
    for it in items:
        row = table[it.split][it.record["class_name"]]
        row["images"] += 1
        row["masks"] += int(it.mask_path is not None)
        row["lacking T2"] += int(T.is_missing_text(it.record.get("natural_language_description")))
        row["lacking T3"] += int(it.record.get("structured_attributes") is None)
        row["lacking T4"] += int(T.is_missing_text(it.record.get("template_sentence")))
    return {"data_dir": str(root), "classes": list(classes),
            "per_class": table,
            "report": report.as_dict()}


def format_stats(stats: dict) -> str:
    cols = ("images", "masks", "lacking T2", "lacking T3", "lacking T4")
    out = [f"SteelDefectX raw files in {stats['data_dir']} ({len(stats['classes'])} classes declared)"]
    for split, table in stats["per_class"].items():
        out.append(f"\n[{split}]\n{'class':<36}" + "".join(f"{c:>12}" for c in cols))
        totals = collections.Counter()
        for name, row in table.items():
            out.append(f"{name:<36}" + "".join(f"{row.get(c, 0):>12}" for c in cols))
            totals.update(row)
        out.append(f"{'total':<36}" + "".join(f"{totals.get(c, 0):>12}" for c in cols))
    rep = stats["report"]
    out.append("")
    out.append(format_report({**rep, "splits": {}}).split("\n", 1)[-1])
    return "\n".join(out)


