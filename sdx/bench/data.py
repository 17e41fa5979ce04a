"""What the benchmark reads from the data: one split as an ImageSet (bytes, content hashes, labels, masks),
external image sets for task 4 and localization (class folders, optional masks), and columns read in one batch
(the captions without fallback: sdx.data.builder.caption_texts)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
from PIL import Image

from sdx.annotate.images import load_mask_array
from sdx.bench.cache import sha1

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
MASKS_DIR = "masks"  # an external set's mask folder: masks/<class>/<image stem>.png


def column(ds, name: str) -> list:
    """One column as a Python list in a single batched read (iterating a datasets Column is row by row)."""
    return ds.select_columns([name])[:][name]


def _raw_column(ds, name: str) -> list[bytes | None]:
    """The undecoded bytes of an image column (None where a row has none)."""
    raw = ds.select_columns([name]).cast_column(name, datasets.Image(decode=False))[name]
    out = []
    for item in raw:
        if item is None or (not item.get("bytes") and not item.get("path")):
            out.append(None)
        else:
            out.append(item["bytes"] if item.get("bytes") else Path(item["path"]).read_bytes())
    return out


@dataclass
class ImageSet:
    """Images of one split (raw bytes, content hashes, labels, names) and, lazily, their masks."""

    name: str
    blobs: list[bytes]
    labels: np.ndarray
    image_names: list[str]
    keys: list[str] = field(default_factory=list)
    dataset: Any = None  # the datasets.Dataset it came from (for text columns and masks)
    patch_rows: set[int] = field(default_factory=set)  # rows whose patch tokens localization needs
    mask_files: list[Path | None] | None = None  # an external set's mask file per row (None: no mask)
    squash: bool = False  # pil() resizes a non-square image to a square (see square_view)

    def __post_init__(self):
        if not self.keys:
            self.keys = [sha1(b) for b in self.blobs]

    @property
    def fingerprint(self) -> str:
        return sha1("".join(self.keys))

    def _open(self, i: int) -> Image.Image:
        try:
            return Image.open(io.BytesIO(self.blobs[i]))
        except Exception as err:
            raise ValueError(f"{self.name}/{self.image_names[i]}: cannot decode image ({err})") from err

    def pil(self, i: int) -> Image.Image:
        im = self._open(i)
        w, h = im.size
        return im.resize((max(w, h), max(w, h)), Image.BICUBIC) if self.squash and w != h else im

    def size(self, i: int) -> tuple[int, int]:
        """(width, height) of image ``i`` as stored (read from its header only)."""
        return self._open(i).size

    def square_rows(self, rows: Iterable[int]) -> set[int]:
        """The rows among ``rows`` whose image is square."""
        return {r for r in rows if len(set(self.size(r))) == 1}

    def square_view(self) -> ImageSet:
        """The set as localization feeds it to a model: each non-square image resized to a square first, so the
        patch grid of a centre-cropping processor covers the whole image and maps back onto its whole mask.
        Square images are unchanged and keep their cache keys; the others get keys of their own."""
        sizes = [self.size(i) for i in range(len(self.blobs))]
        if all(w == h for w, h in sizes):
            return self
        keys = [k if w == h else sha1(b"square\0" + b) for k, b, (w, h) in zip(self.keys, self.blobs, sizes)]
        return dataclasses.replace(self, keys=keys, squash=True, patch_rows=set(self.patch_rows))

    @classmethod
    def from_dataset(cls, name: str, ds) -> ImageSet:
        blobs = _raw_column(ds, "image")
        if any(b is None for b in blobs):
            raise ValueError(f"{name}: a row has no image")
        return cls(name=name, blobs=blobs, labels=np.asarray(column(ds, "label"), dtype=np.int64),
                   image_names=column(ds, "image_name"), dataset=ds)

    def masks(self) -> list[np.ndarray | None]:
        """Binary masks (> 127) per row, None where the row has no mask."""
        if self.mask_files is not None:
            return [None if f is None else self._external_mask(i, f) for i, f in enumerate(self.mask_files)]
        if self.dataset is None or "mask" not in self.dataset.column_names:
            return [None] * len(self.blobs)
        out = []
        for i, data in enumerate(_raw_column(self.dataset, "mask")):
            try:
                out.append(None if data is None else np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 127)
            except Exception as err:
                raise ValueError(f"{self.name}/{self.image_names[i]}: field 'mask': cannot decode ({err})") from err
        return out

    def _external_mask(self, i: int, path: Path) -> np.ndarray:
        """An external set's mask file read by the project's one mask rule, checked against its image, > 127."""
        mask = load_mask_array(path)  # a ValueError naming the file when it cannot be read
        size = (mask.shape[1], mask.shape[0])
        if size != self.size(i):
            raise ValueError(f"{path}: mask size {size} differs from its image {self.image_names[i]} ({self.size(i)})")
        return mask > 127


def _read_descriptions(desc_file: Path) -> dict[str, str]:
    if not desc_file.exists():
        raise ValueError(f"{desc_file}: class-description JSON not found (give it with the external set)")
    try:
        desc = json.loads(desc_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{desc_file}: not valid JSON ({err})") from err
    if not isinstance(desc, dict) or not all(isinstance(v, str) and v.strip() for v in desc.values()):
        raise ValueError(f"{desc_file}: must be an object {{class: non-empty description}}")
    return desc


class ExternalSet(NamedTuple):
    """An external image set: its images (with mask files where it has masks), class names and descriptions."""

    iset: ImageSet
    classes: list[str]
    descriptions: dict[str, str]

    @property
    def masked_rows(self) -> list[int]:
        return [i for i, f in enumerate(self.iset.mask_files or []) if f is not None]


def mask_folder(root: Path) -> Path | None:
    """An external set's mask folder: ``masks/`` inside the set folder beside the class folders, or ``masks/``
    beside the set folder itself (the magnetic-tile layout: ``<set>/<class>/*.jpg`` and ``masks/<class>/*.png``)."""
    for candidate in (root / MASKS_DIR, root.parent / MASKS_DIR):
        if candidate.is_dir() and any((candidate / d.name).is_dir() for d in root.iterdir() if d.is_dir()):
            return candidate
    return None


def external_image_set(folder: str | os.PathLike, descriptions: str | os.PathLike | None = None) -> ExternalSet:
    """(ImageSet, class names, {class: description}) of a folder with one sub-folder of images per class; the
    ImageSet's ``mask_files`` name each image's mask ``masks/<class>/<image stem>.png`` where one exists."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: external set folder not found")
    desc_file = Path(descriptions) if descriptions else root / "class_descriptions.json"
    desc = _read_descriptions(desc_file)
    masks = mask_folder(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and d != masks)
    if not classes:
        raise ValueError(f"{root}: no class sub-folders")
    missing = [c for c in classes if c not in desc]
    if missing:
        raise ValueError(f"{desc_file}: field {missing[0]!r}: no description for class folder(s) {missing}")
    blobs, labels, names, mask_files = [], [], [], []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                blobs.append(f.read_bytes())
                labels.append(ci)
                names.append(f"{c}/{f.name}")
                m = masks / c / f"{f.stem}.png" if masks else None
                mask_files.append(m if m and m.is_file() else None)
    if not blobs:
        raise ValueError(f"{root}: no images in the class folders")
    iset = ImageSet(name=root.name, blobs=blobs, labels=np.asarray(labels), image_names=names,
                    mask_files=mask_files if masks else None)
    return ExternalSet(iset, classes, desc)
