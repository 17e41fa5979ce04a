"""The official raw layout: locating it (local folder, "synthetic", the Hub), reading and checking every raw file.

Bad input raises DataError naming the file and the field, or is skipped and counted once (``on_error="skip"``):
records in = rows out + records skipped, images in = rows out + images skipped. Images and masks are read by the
rules of sdx.annotate.images (the annotation engine's). The layout and every check: docs/dataset.md. Kept apart
from the builder because `datasets` patches ``open``, ``os.path`` and ``Path`` in a builder's own module, slowing
the scan.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sdx.annotate.images import (READ_ERRORS, WIDE_MODES, decode_gray, exif_orientation, list_files, masks_by_stem,
                                 oriented, read_error, to_8bit)
from sdx.data import levels as T
from sdx.data.streaming import JsonListError, NotAList, Spill, SpillEntry, iter_json_list

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


TEXT_FILES = ("class_descriptions.json",) + tuple(triple[2] for triple in SPLITS.values())


def _hash_content(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def _hash_entry(h, label: str, path: str, content: bool) -> None:
    """One folder entry: name, size and mtime (stat), or its content; a dangling link by its target."""
    try:
        st = os.stat(path)
    except OSError:
        h.update(f"{label}:dangling:{os.readlink(path) if os.path.islink(path) else ''};".encode())
        return
    h.update(f"{label}:{st.st_size};".encode())
    if content:
        _hash_content(h, Path(path))
    else:
        h.update(f"{st.st_mtime_ns};".encode())


def fingerprint_layout(data_dir: Path, *, verify_images: bool = False) -> str:
    """Hash of the raw files, for cache invalidation: the content of the text files; each image and mask by name,
    size and mtime (stat only), or by content with ``verify_images=True`` (docs/dataset.md, "Cache")."""
    h = hashlib.sha1(b"content" if verify_images else b"stat")
    for name in TEXT_FILES:
        path = data_dir / name
        if path.is_file():
            h.update(f"{name}:".encode())
            _hash_content(h, path)
        else:
            h.update(f"{name}:absent;".encode())
    for image_dir, mask_dir, _ in SPLITS.values():
        for folder in (image_dir, mask_dir):
            if (data_dir / folder).is_dir():
                with os.scandir(data_dir / folder) as it:
                    for e in sorted(it, key=lambda e: e.name):
                        _hash_entry(h, f"{folder}/{e.name}", e.path, verify_images)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------
# Reading the text files

def _not_found(path: Path, what: str = "file not found") -> DataError:
    if path.is_symlink():
        return DataError(path, "<file>", f"dangling symbolic link to {os.readlink(path)}")
    return DataError(path, "<file>", what)


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise _not_found(path)
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
    except RecursionError:
        raise DataError(path, "<file>", "malformed JSON: nested too deeply") from None


def iter_records(path: Path) -> Iterator[Any]:
    """The elements of a ``<split>-text.json`` list, one at a time (the file is never held whole)."""
    if not path.is_file():
        raise _not_found(path)
    try:
        yield from iter_json_list(path)
    except JsonListError as e:
        raise DataError(path, "<file>", str(e)) from None
    except NotAList:
        read_json(path)  # raises for malformed JSON
        raise DataError(path, "<root>", "expected a list of records") from None


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


# --------------------------------------------------------------------------------------------------------
# What the scan keeps (little per image: the rest waits in the spill file) and what it counts

class Item(NamedTuple):
    """One checked image: what the splits need; its record, mask name and re-encoded bytes wait in the scan's
    spill (``Scan.entry``), so that memory holds a few hundred bytes per image."""

    root: Path            # the data folder
    split: str            # "train" or "val" (official)
    image_name: str
    class_name: str
    label: int
    spill_at: int
    spill_length: int

    @property
    def record(self) -> dict:
        """The fields that identify the item (the full record: ``Scan.entry(item).record``)."""
        return {"image_name": self.image_name, "class_name": self.class_name}

    @property
    def image_path(self) -> str:
        return os.path.join(self.root, SPLITS[self.split][0], self.image_name)  # str: cheaper than Path joins


@dataclass
class ScanReport:
    """What the scan saw, per official split: inputs, outputs, skips by reason (each bad item once), and notes.

    records in = rows out + records skipped; images in = rows out + images skipped (docs/dataset.md)."""

    records_in: collections.Counter = field(default_factory=collections.Counter)
    images_in: collections.Counter = field(default_factory=collections.Counter)
    rows_out: collections.Counter = field(default_factory=collections.Counter)
    records_skipped: collections.Counter = field(default_factory=collections.Counter)
    images_skipped: collections.Counter = field(default_factory=collections.Counter)
    skipped: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    notes: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    fallbacks: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    messages: list = field(default_factory=list)

    MAX_MESSAGES = 50

    def message(self, text: str) -> None:
        if len(self.messages) < self.MAX_MESSAGES:
            self.messages.append(text)

    def as_dict(self) -> dict:
        return {
            "records_in": dict(self.records_in), "images_in": dict(self.images_in),
            "rows_out": dict(self.rows_out),
            "records_skipped": dict(self.records_skipped), "images_skipped": dict(self.images_skipped),
            "skipped": {k: dict(v) for k, v in self.skipped.items()},
            "notes": {k: dict(v) for k, v in self.notes.items()},
            "fallbacks": {k: dict(v) for k, v in self.fallbacks.items()},
            "messages": self.messages[:self.MAX_MESSAGES],
        }


class _Checker:
    """Raise DataError, or count a skip when on_error == "skip": one reason per bad item, and how many records
    and images that item held."""

    def __init__(self, on_error: str, report: ScanReport):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.on_error, self.report = on_error, report

    def fail(self, split: str, reason: str, error: DataError, *, records: int = 1, images: int = 1) -> None:
        if self.on_error == "raise":
            raise error
        self.report.skipped[split][reason] += 1
        self.report.records_skipped[split] += records
        self.report.images_skipped[split] += images
        self.report.message(str(error))
        logger.warning("skipped (%s): %s", reason, error)


# --------------------------------------------------------------------------------------------------------
# Checking records

_REQUIRED_FIELDS = {
    "image_name": (str,),
    "class_name": (str,),
    "natural_language_description": (str, type(None)),
    "structured_attributes": (dict, type(None)),
    "template_sentence": (str, type(None)),
}


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a file in the split's folder, or None ('..' inside a name is fine)."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        return f"{name!r} is not a plain file name (no path separators, no '..' as the name, no surrounding spaces)"
    if name.startswith("."):
        return (f"{name!r} is a hidden file (its name starts with '.'); hidden files are never read (macOS '._' "
                f"files, editors' backups): rename the file and its record")
    return None


def _position_problem(pos: Any) -> str | None:
    if not isinstance(pos, list):
        return f"expected [[cell, share], ...], got {type(pos).__name__}"
    for k, entry in enumerate(pos):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            return f"entry {k}: expected [cell, share], got {entry!r}"
        cell, share = entry
        if not isinstance(cell, str):
            return f"entry {k}: cell {cell!r} is not a string"
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            return f"entry {k}: share {share!r} is not a number in [0, 1]"  # NaN fails the comparison too
    return None


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
    problem = _name_problem(name)
    if problem:
        raise DataError(path, f"{where}.image_name", problem)
    if rec["class_name"] not in classes:
        raise DataError(path, f"{where}.class_name",
                        f"{rec['class_name']!r} ({name}) is not in class_descriptions.json")
    attrs = rec.get("structured_attributes")
    if attrs is not None:
        for f_name in T.T3_FIELDS:
            if f_name not in attrs:
                raise DataError(path, f"{where}.structured_attributes.{f_name}", f"missing ({name})")
        problem = _position_problem(attrs["Position"])
        if problem:
            raise DataError(path, f"{where}.structured_attributes.Position", f"{problem} ({name})")
    return rec


# --------------------------------------------------------------------------------------------------------
# Checking images and masks (the reading rules are sdx.annotate.images', shared with the annotation engine)

NOTE_WIDE = "images scaled to 8 bits (16-bit or float: high byte)"
NOTE_ORIENTED = "EXIF orientation applied (re-encoded as PNG)"
NOTE_EXTENSION = "extension differs from content"
NOTE_BINARISED = "masks binarised (> 127)"
NOTE_EMPTY_MASK = "masks with no pixel > 127"


def _existing(path: str | os.PathLike, what: str) -> None:
    if not os.path.exists(path):
        raise DataError(path, what, f"dangling symbolic link to {os.readlink(path)}" if os.path.islink(path)
                        else "file not found")
    if os.path.getsize(path) == 0:
        raise DataError(path, what, "zero-byte file")


class CheckedImage(NamedTuple):
    size: tuple[int, int]   # as displayed (EXIF orientation applied)
    notes: tuple[str, ...]
    stored: bytes | None    # PNG of the normalised image; None: the file's own bytes are stored


def _normalised_png(im: Image.Image) -> bytes:
    out = to_8bit(oriented(im))
    if out.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
        out = out.convert("RGB")
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def check_image(path: str | os.PathLike) -> CheckedImage:
    """Decode the whole file; a 16-bit image or one with an EXIF orientation is re-encoded (8-bit, as displayed,
    lossless PNG), so every reader of the built dataset sees the same pixels. Raises DataError.

    Other JPEGs are decoded in draft mode (DCT scaled to 1/8): the whole entropy-coded stream is still read, so a
    truncated or corrupt file fails exactly as a full decode would, at a fraction of the cost.
    """
    _existing(path, "image")
    try:
        with Image.open(path) as im:
            fmt, size = im.format, im.size
            orientation = exif_orientation(im) if fmt == "JPEG" else 1
            if fmt == "JPEG" and orientation == 1:
                im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
            orientation = exif_orientation(im) if fmt != "JPEG" else orientation
            notes = tuple(n for n, on in ((NOTE_WIDE, im.mode in WIDE_MODES), (NOTE_ORIENTED, orientation != 1)) if on)
            stored = _normalised_png(im) if notes else None
    except READ_ERRORS as e:
        raise DataError(path, "image", f"cannot be decoded ({read_error(e)})") from None
    if orientation in (5, 6, 7, 8):
        size = (size[1], size[0])
    expected = EXT_FORMATS.get(os.path.splitext(path)[1].lower())
    if expected and fmt != expected:
        notes += (NOTE_EXTENSION,)
    return CheckedImage(size, notes, stored)


def binarize_mask_file(path: str | os.PathLike, size: tuple[int, int]) -> tuple[bytes | None, tuple[str, ...]]:
    """Read a mask file (sdx.annotate.images.decode_gray: the engine's rule per mode), check its size against its
    image's as displayed and binarise it at > 127.

    Returns (PNG bytes of the 0/255 mask, or None when the file already is exactly that: an 8-bit gray PNG holding
    only 0 and 255 with no EXIF orientation; notes)."""
    _existing(path, "mask")
    try:
        decoded = decode_gray(path, mask=True)
    except ValueError as e:
        raise DataError(path, "mask", str(e)) from None
    arr = decoded.array
    if (arr.shape[1], arr.shape[0]) != tuple(size):
        raise DataError(path, "mask", f"size {arr.shape[1]}x{arr.shape[0]} differs from its image's "
                                      f"{size[0]}x{size[1]} (both as displayed, EXIF orientation applied)")
    binary = arr > 127
    foreground = int(np.count_nonzero(binary))
    non_binary = foreground != int(np.count_nonzero(arr)) or bool(np.any(arr[binary] != 255))
    notes = ((NOTE_BINARISED,) if non_binary else ()) + ((NOTE_EMPTY_MASK,) if not foreground else ())
    if not non_binary and decoded.format == "PNG" and decoded.mode == "L" and decoded.orientation == 1:
        return None, notes
    buf = io.BytesIO()
    Image.fromarray(binary.astype(np.uint8) * 255, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), notes + ((NOTE_ORIENTED,) if decoded.orientation != 1 else ())


class Checked(NamedTuple):
    """The files of one candidate, checked: the image, and the mask's stored bytes and notes."""

    image: CheckedImage
    mask: bytes | None
    mask_notes: tuple[str, ...]


def _check_files(image_path: str, mask_path: str | None) -> Checked | tuple[str, DataError]:
    """Decode one image and its mask: Checked, or ("unreadable image" | "bad mask", DataError)."""
    try:
        image = check_image(image_path)
    except DataError as e:
        return "unreadable image", e
    if mask_path is None:
        return Checked(image, None, ())
    try:
        mask, notes = binarize_mask_file(mask_path, image.size)
    except DataError as e:
        return "bad mask", e
    return Checked(image, mask, notes)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _ordered_map(pool: ThreadPoolExecutor, fn, jobs: Iterable, window: int) -> Iterator:
    """``pool.map`` with at most ``window`` jobs in flight, results in job order (``Executor.map`` submits every
    job at once, so its results could pile up in memory ahead of the consumer)."""
    pending: collections.deque = collections.deque()
    for job in jobs:
        pending.append((job, pool.submit(fn, job)))
        if len(pending) >= window:
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


# --------------------------------------------------------------------------------------------------------
# The scan

@dataclass
class Scan:
    """The result of `scan_layout`: class descriptions, the checked items, the report, and the spill file that
    holds each item's record and re-encoded bytes (close it, or use the scan as a context manager)."""

    root: Path
    classes: dict[str, str]
    items: list[Item]
    report: ScanReport
    spill: Spill

    def entry(self, item: Item) -> SpillEntry:
        return self.spill.get(item.spill_at, item.spill_length)

    def image_bytes(self, item: Item, entry: SpillEntry) -> bytes:
        return entry.image if entry.image is not None else _read_bytes(item.image_path)

    def mask_path(self, item: Item, entry: SpillEntry) -> str | None:
        return None if entry.mask_name is None else os.path.join(self.root, SPLITS[item.split][1], entry.mask_name)

    def mask_bytes(self, item: Item, entry: SpillEntry) -> bytes | None:
        if entry.mask_name is None:
            return None
        return entry.mask if entry.mask is not None else _read_bytes(self.mask_path(item, entry))

    def close(self) -> None:
        self.spill.close()

    def __enter__(self) -> Scan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def scan_layout(data_dir: Path, *, on_error: str = "raise", with_masks: bool = True, progress: bool = False,
                num_workers: int | None = None, spill_dir: str | os.PathLike | None = None) -> Scan:
    """Read and check every raw file, streaming: records are parsed one at a time, images and masks decoded on
    ``num_workers`` threads (PIL releases the GIL) with a bounded number in flight, and their results taken back
    in record order, so errors and skips are reported exactly as a sequential scan would report them. Memory
    stays small per image: each record and any re-encoded bytes go to a spill file (in ``spill_dir``)."""
    data_dir = Path(os.fspath(data_dir))  # a plain Path: `datasets` hands its builder a patched, slower one
    report = ScanReport()
    check = _Checker(on_error, report)
    classes = read_class_descriptions(data_dir)
    scan = Scan(data_dir, classes, [], report, Spill(spill_dir))
    workers = num_workers or default_workers()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for split in SPLITS:
                _scan_split(scan, split, check, pool, 32 * workers, with_masks=with_masks, progress=progress)
    except BaseException:
        scan.close()
        raise
    return scan


def _scan_split(scan: Scan, split: str, check: _Checker, pool: ThreadPoolExecutor, window: int, *,
                with_masks: bool, progress: bool) -> None:
    """Check one official split into ``scan.items``; every skip counted once in ``check.report``."""
    image_dir, mask_dir, text_file = SPLITS[split]
    text_path, image_root, mask_root = scan.root / text_file, scan.root / image_dir, scan.root / mask_dir
    if not image_root.is_dir():
        raise DataError(image_root, "<folder>", f"image folder for split '{split}' not found")
    images = list_files(image_root)
    check.report.images_in[split] = len(images)
    masks, ambiguous = masks_by_stem(list_files(mask_root)) if with_masks and mask_root.is_dir() else ({}, {})
    candidates = _match_records(split, text_path, image_root, scan.classes, images, masks, ambiguous, check)
    results = _ordered_map(pool, lambda job: _check_files(job[1], job[2]), candidates, window)
    if progress:
        results = tqdm(results, desc=f"checking {split}", unit="img")
    label_of = {name: i for i, name in enumerate(scan.classes)}
    shared = {name: name for name in scan.classes}  # one string object per class, not one per record
    for (rec, image_path, mask_path), result in results:
        if _count_files(split, image_path, result, check, with_masks=with_masks, has_mask=mask_path is not None):
            mask_name = os.path.basename(mask_path) if mask_path else None
            at, length = scan.spill.put(SpillEntry(rec, mask_name, result.image.stored, result.mask))
            scan.items.append(Item(scan.root, split, rec["image_name"], shared[rec["class_name"]],
                                   label_of[rec["class_name"]], at, length))
    for name in sorted(images):  # what no record claimed
        check.fail(split, "image without record", DataError(
            image_root / name, "image_name", f"no record in {text_path.name}"), records=0, images=1)


def _match_records(split: str, text_path: Path, image_root: Path, classes: dict[str, str], images: set[str],
                   masks: dict[str, str], ambiguous: dict[str, list[str]], check: _Checker) -> Iterator[tuple]:
    """Records in order: fields, classes, duplicates, matching image and mask -> (rec, image, mask) candidates.

    Each image a record names is taken out of ``images``, so what is left there has no record; a bad record
    that names an existing image is one skipped item (its record and its image)."""
    seen: dict[str, int] = {}
    mask_root = image_root.parent / SPLITS[split][1]
    for index, rec in enumerate(iter_records(text_path)):
        check.report.records_in[split] += 1
        name = rec.get("image_name") if isinstance(rec, dict) else None
        claimed = isinstance(name, str) and name in images
        if claimed:
            images.discard(name)
        try:
            rec = _check_record(text_path, index, rec, classes)
        except DataError as e:
            if isinstance(name, str):
                seen.setdefault(name, index)
            check.fail(split, "bad record", e, images=int(claimed))
            continue
        if name in seen:
            check.fail(split, "duplicate image_name", DataError(
                text_path, f"record {index}.image_name", f"{name!r} already used by record {seen[name]}"), images=0)
            continue
        seen[name] = index
        if not claimed:
            check.fail(split, "record without image", DataError(
                text_path, f"record {index}.image_name", f"no file {image_root / name}"), images=0)
            continue
        stem = os.path.splitext(name)[0]
        if stem in ambiguous:
            check.fail(split, "ambiguous mask", DataError(
                mask_root / ambiguous[stem][0], "mask", f"{' and '.join(ambiguous[stem])} share the stem {stem!r} "
                                                        f"of {name}: remove all but one"))
            continue
        yield rec, os.path.join(image_root, name), (os.path.join(mask_root, masks[stem]) if stem in masks else None)


def _count_files(split: str, image_path: str, result, check: _Checker, *, with_masks: bool, has_mask: bool) -> bool:
    """Count one decoded candidate's skip or notes; True when it becomes a row."""
    report = check.report
    if not isinstance(result, Checked):
        check.fail(split, result[0], result[1])
        return False
    if not has_mask and with_masks:
        report.notes[split]["images without mask"] += 1
    for note in result.image.notes + result.mask_notes:
        report.notes[split][note] += 1
    if NOTE_EXTENSION in result.image.notes:
        report.message(f"{image_path}: extension {os.path.splitext(image_path)[1]} but other content: read by "
                       f"content")
    report.rows_out[split] += 1
    return True


# what each raw folder's rows become in the built dataset (the build report names both, so say which is which)
RAW_SPLIT_USE = {"train": "the dataset's train and validation splits are drawn from them",
                 "val": "they are the dataset's test split"}


def format_report(summary: dict) -> str:
    lines = ["SteelDefectX build, dataset splits: "
             + ", ".join(f"{k} {v}" for k, v in summary.get("splits", {}).items())]
    if summary.get("empty_splits_left_out"):
        lines.append(f"  empty splits left out: {', '.join(summary['empty_splits_left_out'])}")
    for split in summary.get("records_in", {}):
        rows = summary.get("rows_out", {}).get(split, 0)
        use = RAW_SPLIT_USE.get(split) if summary.get("splits") else None
        lines.append(f"  raw folder {split}/: records in {summary['records_in'][split]} = rows out {rows} + skipped "
                     f"{summary.get('records_skipped', {}).get(split, 0)}; images in "
                     f"{summary.get('images_in', {}).get(split, 0)} = rows out {rows} + skipped "
                     f"{summary.get('images_skipped', {}).get(split, 0)}" + (f" (rows out: {use})" if use else ""))
    for title in ("skipped", "notes", "fallbacks"):
        for split, counts in summary.get(title, {}).items():
            for reason, n in counts.items():
                lines.append(f"  {title} [{split}] {reason}: {n}")
    return "\n".join(lines)


def dataset_stats(data_dir: str | os.PathLike | None, *, with_masks: bool = True) -> dict:
    """Per class and official split: images, masks, records lacking T2 / T3 / T4; plus every problem, counted."""
    root = resolve_data_dir(data_dir)
    columns = ("images", "masks", "lacking T2", "lacking T3", "lacking T4")
    with scan_layout(root, on_error="skip", with_masks=with_masks, progress=True) as scan:
        table: dict = {split: {name: dict.fromkeys(columns, 0) for name in scan.classes} for split in SPLITS}
        for it in scan.items:
            entry = scan.entry(it)
            rec = entry.record
            row = table[it.split][it.class_name]
            row["images"] += 1
            row["masks"] += int(entry.mask_name is not None)
            row["lacking T2"] += int(T.is_missing_text(rec.get("natural_language_description")))
            row["lacking T3"] += int(rec.get("structured_attributes") is None)
            row["lacking T4"] += int(T.is_missing_text(rec.get("template_sentence")))
    return {"data_dir": str(root), "classes": list(scan.classes), "per_class": table,
            "report": scan.report.as_dict()}


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


