"""The SteelDefectX benchmark tasks, over one shared on-disk embedding cache.

Every image is encoded once per model: image embeddings (L2-normalised, projected), projected patch tokens (only
for test images with a mask, for localization), classifier logits (Task 1) and text embeddings live in an
append-only cache ``<cache_dir>/<kind>/<model fingerprint>/chunk_*.npy`` (+ ``.json`` key lists). Keys:

- model fingerprint: SHA-1 over the model's name/path and, for a local folder, the bytes of its small config
  files (``*.json``, ``*.txt``) and the name, size and mtime of its weight files (``*.safetensors``, ``*.bin``,
  ``*.pt``, ``*.pth``, ``*.npz``); ``checkpoint-*`` and ``runs`` sub-folders are ignored.
- data fingerprint: SHA-1 of each image's bytes (so renaming a file reuses, editing a pixel re-encodes); the
  per-split fingerprint (SHA-1 over the split's image hashes) is recorded in results.json.
- text: SHA-1 of the UTF-8 text.
A re-run with the same inputs makes zero encoder calls (``cache`` counters in results.json say so).

Tasks (all evaluate on the ``test`` split = the official val split; anything selected is selected on
``validation`` = the builder's carve-out of official train, never on test):

Task 1, vision-only classification: an image-classification checkpoint's argmax over its labels, mapped to the
dataset's classes by name (case-insensitive; generic ``LABEL_i`` names map to id i when the label counts
agree). Acc, mAcc (over classes present in test), macro-F1, per-class table, confusion matrix.

Task 2, vision-language classification (the Tx-Ty matrix): for each CLIP checkpoint trained with level x (a
``tX=path`` tag, else its metadata, else "unknown") and each prompt level y, the test image is assigned the
candidate class whose text embedding is most similar. Candidate classes = classes with at least one image in
train or test. Class text embedding: T0 = "A photo of steel surface defect: {class}."; T1 = the class
description; T2/T3/T4 (sample-level) = the re-normalised mean of the class's TRAINING captions at that level
(empty captions left out; T3 rendered with sdx.data.levels.render_t3). A class without any caption at that level falls
back to its T1 sentence (counted in ``fallbacks``); a level with no caption in any class is reported as
unavailable rather than silently equal to T1.

Task 3, zero-/few-shot: zero-shot = Task 2's rule per prompt level. Few-shot for k in ``shots`` x ``seeds``:
the support set is drawn from train only with the builder's own rule (sdx.data.builder.draw_shots on the loaded
train split: identical to load_steeldefectx(shots=k, seed=s)["train"], nested across k for one seed; checked
to be a subset of train and disjoint from validation and test). Two methods:
  * linear probe: multinomial L2 logistic regression on normalised image embeddings (scikit-learn's objective,
    solved for all of LP_C_GRID at once with L-BFGS-B: fit_logistic_grid), C chosen by validation accuracy;
  * Tip-Adapter (training-free): logits = 100 * f W_T0^T + alpha * exp(-beta (1 - f F_s^T)) L_s, with W_T0
    the T0 class prompts, F_s / L_s the support embeddings / one-hot labels; (alpha, beta) chosen from
    TIP_ALPHA_GRID x TIP_BETA_GRID by validation accuracy.
  Ties in a grid keep the first value in grid order. Mean +- std (ddof=1) over seeds per k.

Task 4, zero-shot transfer: (a) external sets given as ``folder`` (one sub-folder per class, images inside) plus
a JSON {class: description} (default ``folder/class_descriptions.json``): zero-shot with T0 (class-name
template) and T1 (the description) prompts over the set's classes. (b) cross-class on SteelDefectX: test images
of the UNSEEN classes are classified among the unseen classes only, per prompt level. Unseen classes come from
``unseen_classes`` or from the checkpoint's metadata (``exclude_classes`` / ``train_classes`` of its run metadata); if
neither exists a deterministic fallback (every 4th candidate class, alphabetical, starting at the 2nd) is used
and the result is flagged ``model_excluded_unseen: false`` (the model may have seen those classes).

Retrieval: test images vs their own sample-level captions (T2, T3, T4, each where available). The text gallery
is the set of distinct captions; image i is relevant to text j when its caption equals text j (and vice
versa). R@1/5/10 image->text and text->image (sdx.metrics.retrieval_recall).

Localization: the vision tower's last hidden state without the CLS token, through post_layernorm and
visual_projection, L2-normalised (taken from the same forward pass as the image embedding, so no image is encoded
twice); the patch score is cos(patch, the image's class prompt at T0 or T1) - cos(patch, NORMAL_PROMPT), i.e. the
logit of the 2-way softmax "defect vs flawless" (monotone in its probability, without its saturation ties); the
patch grid is upsampled bilinearly to the mask size; pixel AUROC, F1-max and IoU at the F1-max threshold pooled over all pixels of the
test images that have a mask (mask binarised at > 127).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import os
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from sdx import metrics as M
from sdx.data.builder import candidate_classes, class_descriptions
from sdx.train.runmeta import RUN_META_FILE, RunMetadata
from sdx.models.clip import ClipEncoder, load_clip_parts, zero_shot_predict
from sdx.data.levels import LEVELS, normalize_level, row_level_texts, t0_prompt

SAMPLE_LEVELS = ("t2", "t3", "t4")
CLASS_LEVELS = ("t0", "t1")
NORMAL_PROMPT = "A photo of a flawless steel surface."
ZS_SCALE = 100.0
LP_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
TIP_ALPHA_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
TIP_BETA_GRID = (1.0, 2.0, 3.5, 5.5, 7.0, 10.0)
TEXT_BATCH = 128  # texts per text-encoder batch (at least --batch_size)
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
TASKS = ("task1", "task2", "task3", "task4", "retrieval", "localization")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")
CONFIG_SUFFIXES = (".json", ".txt")
N_OVERLAYS = 4


# ---------------------------------------------------------------------------------------------------------------
# fingerprints and the on-disk cache
# ---------------------------------------------------------------------------------------------------------------
def sha1(data: bytes | str) -> str:
    return hashlib.sha1(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def model_fingerprint(name_or_path: str | os.PathLike) -> str:
    """SHA-1 of a model: config bytes + weight-file name/size/mtime (local dir) or the Hub id."""
    p = Path(name_or_path)
    h = hashlib.sha1(str(name_or_path).encode())
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            rel = f.relative_to(p)
            if not f.is_file() or any(part.startswith("checkpoint-") or part == "runs" for part in rel.parts[:-1]):
                continue
            if f.suffix in CONFIG_SUFFIXES and f.stat().st_size < 5_000_000:
                h.update(rel.as_posix().encode() + b"\0" + f.read_bytes())
            elif f.suffix in WEIGHT_SUFFIXES:
                st = f.stat()
                h.update(f"{rel.as_posix()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


class ArrayStore:
    """Append-only key -> array cache (one per model and kind), in memory when ``directory`` is None."""

    def __init__(self, directory: Path | None):
        self.dir = directory
        self.rows: dict[str, np.ndarray] = {}
        self.encoded = 0   # items computed by the encoder in this process
        self.reused = 0    # items served from the cache
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for keys_file in sorted(directory.glob("chunk_*.json")):
                arr_file = keys_file.with_suffix(".npy")
                if not arr_file.exists():
                    continue
                keys = json.loads(keys_file.read_text())
                arr = np.load(arr_file)
                if len(keys) != len(arr):
                    continue  # a torn write: ignore it, the rows are recomputed
                self.rows.update(zip(keys, arr))

    def put(self, keys: Sequence[str], arr: np.ndarray) -> None:
        """Store rows computed elsewhere (e.g. patch tokens from the embedding pass)."""
        keys = list(keys)
        new = [i for i, k in enumerate(keys) if k not in self.rows]
        if not new:
            return
        keys, arr = [keys[i] for i in new], np.asarray(arr)[new]
        self.rows.update(zip(keys, arr))
        self.encoded += len(keys)
        self._write(keys, arr)

    def _write(self, keys: list[str], arr: np.ndarray) -> None:
        if self.dir is None:
            return
        stem = self.dir / f"chunk_{time.time_ns()}_{uuid.uuid4().hex[:8]}"
        tmp = stem.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, stem.with_suffix(".npy"))
        stem.with_suffix(".json").write_text(json.dumps(keys))

    def get(self, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray]) -> np.ndarray:
        """Rows for ``keys``; ``compute(positions)`` encodes the missing ones (positions index ``keys``)."""
        missing, seen = [], set()
        for i, k in enumerate(keys):
            if k not in self.rows and k not in seen:
                missing.append(i)
                seen.add(k)
        self.reused += len(keys) - len(missing)
        if missing:
            arr = np.asarray(compute(missing))
            if len(arr) != len(missing):
                raise RuntimeError(f"encoder returned {len(arr)} rows for {len(missing)} items")
            new_keys = [keys[i] for i in missing]
            self.rows.update(zip(new_keys, arr))
            self.encoded += len(missing)
            self._write(new_keys, arr)
        if not keys:
            return np.zeros((0,))
        return np.stack([self.rows[k] for k in keys])


# ---------------------------------------------------------------------------------------------------------------
# encoders
# ---------------------------------------------------------------------------------------------------------------
def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def _level_or_raw(value) -> str:
    """A canonical level t0..t4, or the value itself (e.g. "mixed") when it is not a single level."""
    try:
        return normalize_level(value)
    except ValueError:
        return str(value).strip().lower()


def _origin(run: RunMetadata | None) -> str:
    return run.origin if run else f"unknown (no {RUN_META_FILE} in the checkpoint)"


def _describe(model, kind: str, method: str) -> dict:
    run = model.run
    return {"name": model.label, "path": model.path, "kind": kind, "origin": _origin(run), "method": method,
            "seed": run.seed if run else None, "fingerprint": model.fingerprint[:16],
            "metadata": dataclasses.asdict(run) if run else {}}


class BenchClip(ClipEncoder):
    """A CLIP-family checkpoint in the benchmark: the shared encoder plus its name, training level, metadata and
    fingerprint (the cache key)."""

    def __init__(self, name_or_path: str, *, label: str | None = None, level: str | None = None,
                 batch_size: int = 32, device: str | None = None):
        self.path = str(name_or_path)
        super().__init__(*load_clip_parts(self.path), device=device)
        self.label = label or Path(self.path).name or self.path
        self.fingerprint = model_fingerprint(self.path)
        self.run = RunMetadata.read(self.path) if Path(self.path).is_dir() else None
        run_level = self.run.caption_level if self.run else None
        self.level = _level_or_raw(level or run_level) if (level or run_level) else None
        self.batch_size = batch_size
        self.adapter = getattr(self.model, "adapter", None)
        self.origin = _origin(self.run)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return super().encode_texts(texts, batch_size=max(self.batch_size, TEXT_BATCH))

    def describe(self) -> dict:
        method = self.run.method if self.run else ("adapter" if self.adapter is not None else "unknown")
        return dict(_describe(self, "clip", method), train_level=self.level)


def _load_image_processor(path: str):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: no image processor (preprocessor_config.json) found ({err})") from err


class VisionClassifier:
    """An image-classification checkpoint (Task 1)."""

    def __init__(self, name_or_path: str, *, batch_size: int = 32, device: str | None = None):
        from transformers import AutoModelForImageClassification

        self.path = str(name_or_path)
        self.label = Path(self.path).name or self.path
        self.fingerprint = model_fingerprint(self.path)
        self.run = RunMetadata.read(self.path) if Path(self.path).is_dir() else None
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.model = AutoModelForImageClassification.from_pretrained(self.path).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.path}: cannot load an image-classification model ({err})") from err
        self.image_processor = _load_image_processor(self.path)
        self.origin = _origin(self.run)

    @torch.inference_mode()
    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        pix = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        return self.model(pixel_values=pix.to(self.device)).logits.float().cpu().numpy()

    def label_map(self, class_names: Sequence[str]) -> np.ndarray:
        """model output id -> dataset label id (-1 when the model's class is not in the dataset)."""
        id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        n = self.model.config.num_labels
        lookup = {c.lower().strip(): i for i, c in enumerate(class_names)}
        mapped = np.array([lookup.get(id2label.get(i, "").lower().strip(), -1) for i in range(n)])
        if (mapped >= 0).any():
            return mapped
        generic = all(id2label.get(i, f"LABEL_{i}") == f"LABEL_{i}" for i in range(n))
        if generic and n == len(class_names):
            return np.arange(n)
        raise ValueError(f"{self.path}: config.id2label names {sorted(id2label.values())[:5]}... match none of "
                         f"the dataset classes {list(class_names)[:5]}...")

    def describe(self) -> dict:
        return _describe(self, "image-classifier", self.run.method if self.run else type(self.model).__name__)


# ---------------------------------------------------------------------------------------------------------------
# image sets
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ImageSet:
    """Images of one split (raw bytes, content hashes, labels, names) and, lazily, their masks."""

    name: str
    blobs: list[bytes]
    labels: np.ndarray
    image_names: list[str]
    keys: list[str] = field(default_factory=list)
    dataset: Any = None  # the datasets.Dataset it came from (for text columns and masks)

    def __post_init__(self):
        if not self.keys:
            self.keys = [sha1(b) for b in self.blobs]

    @property
    def fingerprint(self) -> str:
        return sha1("".join(self.keys))

    def pil(self, i: int) -> Image.Image:
        try:
            return Image.open(io.BytesIO(self.blobs[i]))
        except Exception as err:
            raise ValueError(f"{self.name}/{self.image_names[i]}: cannot decode image ({err})") from err

    @classmethod
    def from_dataset(cls, name: str, ds) -> ImageSet:
        import datasets as hfds

        raw = ds.select_columns(["image"]).cast_column("image", hfds.Image(decode=False))
        blobs = []
        for item in raw["image"]:
            if item is None:
                raise ValueError(f"{name}: a row has no image")
            blobs.append(item["bytes"] if item.get("bytes") else Path(item["path"]).read_bytes())
        return cls(name=name, blobs=blobs, labels=np.asarray(column(ds, "label"), dtype=np.int64),
                   image_names=column(ds, "image_name"), dataset=ds)

    def masks(self) -> list[np.ndarray | None]:
        """Binary masks (> 127) per row, None where the row has no mask."""
        import datasets as hfds

        if self.dataset is None or "mask" not in self.dataset.column_names:
            return [None] * len(self.blobs)
        raw = self.dataset.select_columns(["mask"]).cast_column("mask", hfds.Image(decode=False))["mask"]
        out = []
        for i, item in enumerate(raw):
            if item is None or (not item.get("bytes") and not item.get("path")):
                out.append(None)
                continue
            data = item["bytes"] if item.get("bytes") else Path(item["path"]).read_bytes()
            try:
                out.append(np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 127)
            except Exception as err:
                raise ValueError(f"{self.name}/{self.image_names[i]}: field 'mask': cannot decode ({err})") from err
        return out


def external_image_set(folder: str | os.PathLike, descriptions: str | os.PathLike | None = None):
    """(ImageSet, class names, {class: description}) of a folder with one sub-folder of images per class."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: external set folder not found")
    desc_file = Path(descriptions) if descriptions else root / "class_descriptions.json"
    if not desc_file.exists():
        raise ValueError(f"{desc_file}: class-description JSON not found (give it with the external set)")
    try:
        desc = json.loads(desc_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{desc_file}: not valid JSON ({err})") from err
    if not isinstance(desc, dict) or not all(isinstance(v, str) and v.strip() for v in desc.values()):
        raise ValueError(f"{desc_file}: must be an object {{class: non-empty description}}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class sub-folders")
    missing = [c for c in classes if c not in desc]
    if missing:
        raise ValueError(f"{desc_file}: field {missing[0]!r}: no description for class folder(s) {missing}")
    blobs, labels, names = [], [], []
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
    for ci, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in exts:
                blobs.append(f.read_bytes())
                labels.append(ci)
                names.append(f"{c}/{f.name}")
    if not blobs:
        raise ValueError(f"{root}: no images in the class folders")
    return ImageSet(name=root.name, blobs=blobs, labels=np.asarray(labels), image_names=names), classes, desc


# ---------------------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------------------
def column(ds, name: str) -> list:
    """One column as a Python list in a single batched read (iterating a datasets Column is row by row)."""
    return ds.select_columns([name])[:][name]


def caption_texts(ds, level: str) -> list[str]:
    """Per-row caption at ``level`` without fallback ("" when missing; T3 rendered, T4 rendered from T3)."""
    level = normalize_level(level)
    if level in ("t0", "t1"):
        return column(ds, level)
    rows = ds.select_columns([c for c in ("class_name", "t1", "t2", "t3", "t4") if c in ds.column_names])
    return [row_level_texts(row)[level] for row in rows]


def builder_support(train_ds, k: int, seed: int, _memo: dict = {}) -> list[int]:  # noqa: B006 - per-split memo
    """Rows of ``train_ds`` in the builder's k-shot draw (sdx.data.builder.draw_shots; nested across k)."""
    from sdx.data.builder import draw_shots

    key = train_ds._fingerprint
    if key not in _memo:
        _memo.clear()
        names = column(train_ds, "image_name")
        labels = column(train_ds, "label")
        _memo[key] = [types.SimpleNamespace(label=int(lab), record={"image_name": n}, row=i)
                      for i, (n, lab) in enumerate(zip(names, labels))]
    return sorted(it.row for it in draw_shots(_memo[key], k, seed))


def fit_logistic_grid(x: np.ndarray, y: np.ndarray, Cs: Sequence[float], max_iter: int = 100):
    """Multinomial L2 logistic regression for every C at once: (classes, W [G, D, K], b [G, K]).

    Same objective as scikit-learn's LogisticRegression(C) with lbfgs: C * sum_i CE_i + 0.5 ||W||^2 (bias not
    penalised), here divided by C (same minimiser) and solved jointly for the G values of C with scipy's L-BFGS-B
    on an analytic numpy gradient (the G problems are independent, so the joint minimiser is the set of the
    separate minimisers). At most ``max_iter`` iterations (scikit-learn's default is 100).
    """
    from scipy.optimize import minimize

    classes, yi = np.unique(np.asarray(y), return_inverse=True)
    X = np.asarray(x, dtype=np.float64)
    G, (N, D), K = len(Cs), X.shape, len(classes)
    onehot = np.zeros((N, K))
    onehot[np.arange(N), yi] = 1.0
    inv_c = 1.0 / np.asarray(Cs, dtype=np.float64)
    n_w = G * D * K

    def loss_grad(theta):
        W, b = theta[:n_w].reshape(G, D, K), theta[n_w:].reshape(G, K)
        z = np.matmul(X, W) + b[:, None, :]                          # [G, N, K]
        z -= z.max(axis=2, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=2, keepdims=True))
        logp = z - lse
        loss = -(logp * onehot).sum() + 0.5 * float((inv_c * (W ** 2).sum(axis=(1, 2))).sum())
        d = np.exp(logp) - onehot                                   # dL/dz, [G, N, K]
        gW = np.matmul(X.T, d) + inv_c[:, None, None] * W
        return loss, np.concatenate([gW.ravel(), d.sum(axis=1).ravel()])

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small matrices: BLAS threads only contend
        res = minimize(loss_grad, np.zeros(n_w + G * K), jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "gtol": 1e-6})
    return classes, res.x[:n_w].reshape(G, D, K), res.x[n_w:].reshape(G, K)


def predict_logistic(classes, W, b, x) -> np.ndarray:
    """[G, N] predicted labels of each of the G fitted models."""
    logits = np.einsum("nd,gdk->gnk", np.asarray(x, dtype=np.float64), W) + b[:, None, :]
    return classes[np.argmax(logits, axis=2)]


@dataclass
class ModelSpec:
    path: str
    level: str | None = None
    label: str | None = None


def parse_model_arg(arg: str) -> ModelSpec:
    """"path", "t3=path" or "t3:name=path" -> ModelSpec (the level tag overrides checkpoint metadata)."""
    if "=" in arg:
        tag, path = arg.split("=", 1)
        label = None
        if ":" in tag:
            tag, label = tag.split(":", 1)
        try:
            return ModelSpec(path=path, level=normalize_level(tag), label=label)
        except ValueError:
            pass
    return ModelSpec(path=arg)


class Benchmark:
    """Runs the tasks over a loaded SteelDefectX DatasetDict; results are plain JSON-able dicts."""

    def __init__(self, ds, *, clip_models: Sequence[ModelSpec | str] = (), vision_model: str | None = None,
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
                 shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] = DEFAULT_SEEDS,
                 levels: Sequence[str] = LEVELS, external: Sequence[tuple[str, str | None]] = (),
                 unseen_classes: Sequence[str] | None = None, max_eval_samples: int | None = None,
                 support_fn: Callable | None = None, progress: bool = True, device: str | None = None):
        for split in ("train", "validation", "test"):
            if split not in ds:
                raise ValueError(f"dataset has no {split!r} split (splits: {list(ds)})")
        self.ds = ds
        self.class_names = list(ds["train"].features["label"].names)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.shots, self.seeds = [int(k) for k in shots], [int(s) for s in seeds]
        self.levels = [normalize_level(lv) for lv in levels]
        self.external = list(external)
        self.unseen_arg = list(unseen_classes) if unseen_classes else None
        self.progress = progress
        self.device = device
        self.support_fn = support_fn or builder_support
        self.specs = [parse_model_arg(m) if isinstance(m, str) else m for m in clip_models]
        self.vision_path = vision_model
        self.max_eval_samples = max_eval_samples
        self._sets: dict[str, ImageSet] = {}
        self._stores: dict[tuple[str, str], ArrayStore] = {}
        self._encoders: list[BenchClip] | None = None
        self._emb_memo: dict[tuple[str, str], np.ndarray] = {}
        self._class_memo: dict[tuple[str, str], tuple] = {}
        self._patch_rows: dict[str, set[int]] = {}  # split -> rows whose patch tokens are needed
        self._masks: list | None = None
        self._cands: list[int] | None = None
        self.hyperparameters: list[dict] = []
        self.support_sets: list[dict] = []
        self.artifacts: dict[str, Any] = {}  # non-JSON things for plots (score maps, images)
        self.timings: dict[str, float] = {}

    # ----- data --------------------------------------------------------------------------------------------------
    def split(self, name: str) -> ImageSet:
        if name not in self._sets:
            d = self.ds[name]
            if name in ("validation", "test") and self.max_eval_samples and len(d) > self.max_eval_samples:
                rows = np.sort(np.random.default_rng(0).permutation(len(d))[: self.max_eval_samples])
                d = d.select(rows.tolist())
            self._sets[name] = ImageSet.from_dataset(name, d)
        return self._sets[name]

    def candidates(self) -> list[int]:
        if self._cands is not None:
            return self._cands
        self._cands = candidate_classes(self.ds)
        return self._cands

    # ----- cache -------------------------------------------------------------------------------------------------
    def store(self, kind: str, fingerprint: str) -> ArrayStore:
        key = (kind, fingerprint)
        if key not in self._stores:
            directory = self.cache_dir / kind / fingerprint[:20] if self.cache_dir else None
            self._stores[key] = ArrayStore(directory)
        return self._stores[key]

    def cache_counts(self) -> dict:
        out: dict[str, dict[str, int]] = {}
        for (kind, _), st in self._stores.items():
            d = out.setdefault(kind, {"encoded": 0, "reused": 0})
            d["encoded"] += st.encoded
            d["reused"] += st.reused
        return out

    def encoders(self) -> list[BenchClip]:
        if self._encoders is None:
            self._encoders = []
            for spec in self.specs:
                enc = BenchClip(spec.path, label=spec.label, level=spec.level, batch_size=self.batch_size,
                                  device=self.device)
                self._encoders.append(enc)
            labels = [e.label for e in self._encoders]
            for i, e in enumerate(self._encoders):  # unique names in the report
                if labels.count(e.label) > 1:
                    e.label = f"{e.label}#{i}"
        return self._encoders

    def image_emb(self, enc: BenchClip, iset: ImageSet, rows: Sequence[int] | None = None) -> np.ndarray:
        memo = (enc.fingerprint, iset.name) if rows is None else None
        if memo and memo in self._emb_memo:
            return self._emb_memo[memo]
        idx = list(range(len(iset.keys))) if rows is None else list(rows)
        keys = [iset.keys[i] for i in idx]
        store = self.store("image", enc.fingerprint)

        # localization needs projected patch tokens of the test images with a mask: they come out of the same
        # forward pass, so they are stored in the patch cache here and no image is encoded twice
        want = self._patch_rows.get(iset.name) if rows is None else None
        patch_store = self.store("patch", enc.fingerprint) if want else None

        def compute(pos: list[int]) -> np.ndarray:
            out = []
            for sl in tqdm(list(_batches(len(pos), enc.batch_size)), desc=f"encode {iset.name} [{enc.label}]",
                           disable=not self.progress, leave=False):
                batch_rows = [idx[p] for p in pos[sl]]
                with_patches = bool(want) and any(r in want for r in batch_rows) and enc.can_localize
                emb, patches = enc.encode_images([iset.pil(r) for r in batch_rows], with_patches=with_patches)
                out.append(emb)
                if with_patches:
                    keep = [j for j, r in enumerate(batch_rows) if r in want]
                    patch_store.put([iset.keys[batch_rows[j]] for j in keep], patches[keep].astype(np.float16))
            return np.concatenate(out)

        emb = store.get(keys, compute).astype(np.float32)
        if memo:
            self._emb_memo[memo] = emb
        return emb

    def patch_tokens(self, enc: BenchClip, iset: ImageSet, rows: Sequence[int]) -> np.ndarray:
        keys = [iset.keys[i] for i in rows]
        store = self.store("patch", enc.fingerprint)

        def compute(pos: list[int]) -> np.ndarray:
            out = []
            for sl in tqdm(list(_batches(len(pos), enc.batch_size)), desc=f"patch tokens [{enc.label}]",
                           disable=not self.progress, leave=False):
                out.append(enc.encode_images([iset.pil(rows[p]) for p in pos[sl]], with_patches=True)[1]
                           .astype(np.float16))
            return np.concatenate(out)

        return store.get(keys, compute).astype(np.float32)

    def text_emb(self, enc: BenchClip, texts: Sequence[str]) -> np.ndarray:
        keys = [sha1(t) for t in texts]
        store = self.store("text", enc.fingerprint)

        def compute(pos: list[int]) -> np.ndarray:
            out = []
            bs = max(enc.batch_size, TEXT_BATCH)
            for sl in tqdm(list(_batches(len(pos), bs)), desc=f"encode texts [{enc.label}]",
                           disable=not self.progress or len(pos) <= bs, leave=False):
                out.append(enc.encode_texts([texts[p] for p in pos[sl]]))
            return np.concatenate(out)

        return store.get(keys, compute).astype(np.float32)

    def class_embeddings(self, enc: BenchClip, level: str, classes: Sequence[int] | None = None):
        """(E [len(classes), D], info) for prompt level ``level``; None when the level has no text at all."""
        level = normalize_level(level)
        classes = list(self.candidates() if classes is None else classes)
        memo = (enc.fingerprint, level)
        if memo not in self._class_memo:
            self._class_memo[memo] = self._all_class_embeddings(enc, level)
        table, info = self._class_memo[memo]
        if table is None:
            return None, info
        return np.stack([table[c] for c in classes]), info

    def _all_class_embeddings(self, enc: BenchClip, level: str):
        all_ids = range(len(self.class_names))
        t1 = class_descriptions(self.ds)
        if level == "t0":
            texts = [t0_prompt(self.class_names[c]) for c in all_ids]
            e = self.text_emb(enc, texts)
            return {c: e[i] for i, c in enumerate(all_ids)}, {"source": "class-name template", "fallbacks": []}
        if level == "t1":
            texts = [t1.get(c) or t0_prompt(self.class_names[c]) for c in all_ids]
            e = self.text_emb(enc, texts)
            fb = [self.class_names[c] for c in all_ids if c not in t1]
            return {c: e[i] for i, c in enumerate(all_ids)}, {"source": "class description", "fallbacks": fb}
        train = self.ds["train"]
        caps = caption_texts(train, level)
        labels = np.asarray(column(train, "label"))
        have = [i for i, t in enumerate(caps) if t and t.strip()]
        if not have:
            return None, {"source": f"mean of training {level.upper()} captions",
                          "unavailable": f"no training caption at level {level.upper()}"}
        uniq = sorted({caps[i] for i in have})
        e_u = self.text_emb(enc, uniq)
        pos = {t: i for i, t in enumerate(uniq)}
        e = e_u[[pos[caps[i]] for i in have]]
        lab = labels[have]
        table, fallbacks = {}, []
        sums = np.zeros((len(self.class_names), e.shape[1]), dtype=np.float64)
        np.add.at(sums, lab, e)
        counts = np.bincount(lab, minlength=len(self.class_names))
        t1_texts = [t1.get(c) or t0_prompt(self.class_names[c]) for c in all_ids]
        e_t1 = self.text_emb(enc, t1_texts)
        for c in all_ids:
            if counts[c]:
                table[c] = _normalize(sums[c]).astype(np.float32)
            else:
                table[c] = e_t1[c]
                fallbacks.append(self.class_names[c])
        info = {"source": f"mean of training {level.upper()} captions", "captions": len(have),
                "fallbacks": fallbacks}
        return table, info

    def _zero_shot(self, enc, iset: ImageSet, level: str, classes: Sequence[int], img=None) -> dict:
        E, info = self.class_embeddings(enc, level, classes)
        if E is None:
            return {"available": False, **info}
        img = self.image_emb(enc, iset) if img is None else img
        pred = zero_shot_predict(img, E, np.asarray(classes))
        out = M.classification_metrics(iset.labels, pred)
        out.update(available=True, text=info.get("source"))
        fb = [c for c in info.get("fallbacks", []) if self.class_names.index(c) in classes]
        if fb:
            out["fallback_to_t1"] = fb
        return out

    # ----- Task 1 ------------------------------------------------------------------------------------------------
    def task1(self) -> dict:
        if not self.vision_path:
            return {"skipped": "no --vision_model_name_or_path given"}
        clf = VisionClassifier(self.vision_path, batch_size=self.batch_size, device=self.device)
        test = self.split("test")
        store = self.store("logits", clf.fingerprint)

        def compute(pos):
            out = []
            for sl in tqdm(list(_batches(len(pos), clf.batch_size)), desc=f"classify test [{clf.label}]",
                           disable=not self.progress, leave=False):
                out.append(clf.logits([test.pil(p) for p in pos[sl]]))
            return np.concatenate(out)

        logits = store.get(test.keys, compute)
        mapping = clf.label_map(self.class_names)
        logits = np.where(mapping[None, :] >= 0, logits, -np.inf)
        pred = mapping[np.argmax(logits, axis=1)]
        labels = sorted(set(test.labels.tolist()) | set(pred.tolist()))
        res = M.classification_metrics(test.labels, pred)
        res["per_class"] = M.per_class_table(test.labels, pred, labels, self.class_names)
        res["confusion"] = {"labels": [self.class_names[i] for i in labels],
                            "matrix": M.confusion(test.labels, pred, labels).tolist()}
        res["model"] = clf.describe()
        return res

    # ----- Task 2 ------------------------------------------------------------------------------------------------
    def task2(self) -> dict:
        test = self.split("test")
        cands = self.candidates()
        rows = []
        for enc in self.encoders():
            img = self.image_emb(enc, test)
            row = {"model": enc.label, "train_level": enc.level or "unknown", "results": {}}
            for y in self.levels:
                row["results"][y] = self._zero_shot(enc, test, y, cands, img)
            rows.append(row)
        return {"test_levels": list(self.levels), "candidates": [self.class_names[c] for c in cands],
                "rows": rows}

    # ----- Task 3 ------------------------------------------------------------------------------------------------
    def supports(self) -> dict[tuple[int, int], list[int]]:
        train = self.ds["train"]
        train_names = column(train, "image_name")
        held = set(column(self.ds["validation"], "image_name")) | set(column(self.ds["test"], "image_name"))
        out = {}
        for seed in self.seeds:
            for k in self.shots:
                rows = list(self.support_fn(train, k, seed))
                names = [train_names[r] for r in rows]
                leak = sorted(set(names) & held)
                if leak:
                    raise RuntimeError(f"support set k={k} seed={seed} contains validation/test images: {leak[:5]}")
                out[(k, seed)] = rows
                self.support_sets.append({"k": k, "seed": seed, "split": "train", "image_names": names})
        return out

    def _select(self, **record) -> None:
        record.setdefault("selected_on", "validation")
        self.hyperparameters.append(record)

    def task3(self) -> dict:
        test, val = self.split("test"), self.split("validation")
        cands = self.candidates()
        train_set = self.split_train()
        supports = self.supports()
        union_rows = sorted({r for rows in supports.values() for r in rows})
        out = {}
        for enc in self.encoders():
            res: dict[str, Any] = {"zero_shot": {lv: self._zero_shot(enc, test, lv, cands) for lv in self.levels}}
            if not supports:
                out[enc.label] = res
                continue
            if len(val.keys) == 0:  # nothing to select on: refuse rather than select on test
                res["few_shot_skipped"] = ("the validation split is empty (validation_fraction 0): C, alpha and beta "
                                           "can only be selected on validation")
                out[enc.label] = res
                continue
            x_test, x_val = self.image_emb(enc, test), self.image_emb(enc, val)
            union_emb = self.image_emb(enc, train_set, union_rows)
            row_pos = {r: i for i, r in enumerate(union_rows)}
            w_t0, _ = self.class_embeddings(enc, "t0", cands)
            cand_pos = {c: i for i, c in enumerate(cands)}
            zs_val, zs_test = ZS_SCALE * x_val @ w_t0.T, ZS_SCALE * x_test @ w_t0.T
            runs = {"linear_probe": {}, "tip_adapter": {}}
            for (k, seed), rows in tqdm(sorted(supports.items()), desc=f"few-shot [{enc.label}]",
                                        disable=not self.progress, leave=False):
                xs = union_emb[[row_pos[r] for r in rows]]
                ys = train_set.labels[rows]
                # linear probe: C on validation (all C fitted at once)
                if len(np.unique(ys)) >= 2:
                    classes, W, bias = fit_logistic_grid(xs, ys, LP_C_GRID)
                    val_acc = [M.accuracy(val.labels, pv) for pv in predict_logistic(classes, W, bias, x_val)]
                    g = int(np.argmax(val_acc))  # first best in grid order
                    C, acc_v = LP_C_GRID[g], val_acc[g]
                    pred = predict_logistic(classes, W[g:g + 1], bias[g:g + 1], x_test)[0]
                    runs["linear_probe"].setdefault(k, []).append(
                        {"seed": seed, **M.classification_metrics(test.labels, pred), "C": C, "val_acc": acc_v})
                    self._select(task="task3", model=enc.label, method="linear_probe", k=k, seed=seed, name="C",
                                 value=C, grid=list(LP_C_GRID), score=acc_v, metric="acc")
                # Tip-Adapter: alpha, beta on validation
                onehot = np.zeros((len(rows), len(cands)), dtype=np.float32)
                onehot[np.arange(len(rows)), [cand_pos[int(y)] for y in ys]] = 1.0
                aff_val = x_val @ xs.T
                best_t = None
                for beta in TIP_BETA_GRID:
                    cache_val = np.exp(-beta * (1.0 - aff_val)) @ onehot
                    for alpha in TIP_ALPHA_GRID:
                        pred_v = np.asarray(cands)[np.argmax(zs_val + alpha * cache_val, axis=1)]
                        acc = M.accuracy(val.labels, pred_v)
                        if best_t is None or acc > best_t[0]:
                            best_t = (acc, alpha, beta)
                acc_v, alpha, beta = best_t
                cache_test = np.exp(-beta * (1.0 - x_test @ xs.T)) @ onehot
                pred = np.asarray(cands)[np.argmax(zs_test + alpha * cache_test, axis=1)]
                runs["tip_adapter"].setdefault(k, []).append(
                    {"seed": seed, **M.classification_metrics(test.labels, pred), "alpha": alpha, "beta": beta,
                     "val_acc": acc_v})
                for name, value, grid in (("alpha", alpha, TIP_ALPHA_GRID), ("beta", beta, TIP_BETA_GRID)):
                    self._select(task="task3", model=enc.label, method="tip_adapter", k=k, seed=seed, name=name,
                                 value=value, grid=list(grid), score=acc_v, metric="acc")
            res["few_shot"] = {}
            for method, per_k in runs.items():
                res["few_shot"][method] = {}
                for k in sorted(per_k):
                    accs = [r["acc"] for r in per_k[k]]
                    maccs = [r["macc"] for r in per_k[k]]
                    (am, asd), (mm, msd) = M.mean_std(accs), M.mean_std(maccs)
                    res["few_shot"][method][str(k)] = {"acc_mean": am, "acc_std": asd, "macc_mean": mm,
                                                       "macc_std": msd, "seeds": [r["seed"] for r in per_k[k]],
                                                       "runs": per_k[k]}
            out[enc.label] = res
        return out

    def split_train(self) -> ImageSet:
        return self.split("train")  # never subsampled: support rows index the full train split

    # ----- Task 4 ------------------------------------------------------------------------------------------------
    def unseen(self, enc: BenchClip) -> tuple[list[int], bool, str]:
        cands = self.candidates()
        if self.unseen_arg:
            unknown = [c for c in self.unseen_arg if c not in self.class_names]
            if unknown:
                raise ValueError(f"--unseen_classes: unknown class(es) {unknown}")
            ids = sorted(self.class_names.index(c) for c in self.unseen_arg)
            declared = _declared_unseen(enc.run, self.class_names)
            return ids, bool(declared) and set(ids) <= set(declared), "--unseen_classes"
        declared = [c for c in (_declared_unseen(enc.run, self.class_names) or []) if c in cands]
        if declared:  # classes without images never count as "held out"
            return declared, True, "checkpoint metadata"
        return cands[1::4], False, "fallback: every 4th class from the 2nd (model did not declare held-out classes)"

    def task4(self) -> dict:
        out: dict[str, Any] = {}
        test = self.split("test")
        for enc in self.encoders():
            res: dict[str, Any] = {}
            ids, excluded, source = self.unseen(enc)
            rows = np.nonzero(np.isin(test.labels, ids))[0]
            present = sorted(set(test.labels[rows].tolist()))
            cc: dict[str, Any] = {"unseen_classes": [self.class_names[c] for c in ids], "source": source,
                                  "model_excluded_unseen": excluded, "n_test": len(rows)}
            if len(rows) and len(present) >= 2:
                img = self.image_emb(enc, test)[rows]
                sub = types.SimpleNamespace(labels=test.labels[rows])
                cc["levels"] = {lv: self._zero_shot(enc, sub, lv, ids, img) for lv in self.levels}
            else:
                cc["skipped"] = "fewer than two unseen classes with test images"
            res["cross_class"] = cc
            ext = {}
            for folder, desc_file in self.external:
                iset, classes, desc = external_image_set(folder, desc_file)
                img = self.image_emb(enc, iset)
                one = {"classes": classes, "n_images": len(iset.keys), "fingerprint": iset.fingerprint[:16]}
                for lv, texts in (("t0", [t0_prompt(c) for c in classes]), ("t1", [desc[c] for c in classes])):
                    E = self.text_emb(enc, texts)
                    pred = zero_shot_predict(img, E, np.arange(len(classes)))
                    one[lv] = M.classification_metrics(iset.labels, pred)
                ext[iset.name] = one
            res["external"] = ext
            out[enc.label] = res
        return out

    # ----- retrieval ---------------------------------------------------------------------------------------------
    def retrieval(self) -> dict:
        test = self.split("test")
        out = {}
        for enc in self.encoders():
            img = self.image_emb(enc, test)
            res = {}
            for lv in SAMPLE_LEVELS:
                caps = caption_texts(test.dataset, lv)
                rows = [i for i, t in enumerate(caps) if t and t.strip()]
                if not rows:
                    res[lv] = {"available": False, "reason": f"no test caption at level {lv.upper()}"}
                    continue
                uniq = sorted({caps[i] for i in rows})
                pos = {t: j for j, t in enumerate(uniq)}
                txt = self.text_emb(enc, uniq)
                sim = img[rows] @ txt.T
                rel = np.zeros(sim.shape, dtype=bool)
                rel[np.arange(len(rows)), [pos[caps[i]] for i in rows]] = True
                res[lv] = {"available": True, "images": len(rows), "texts": len(uniq),
                           "i2t": M.retrieval_recall(sim, rel), "t2i": M.retrieval_recall(sim.T, rel.T)}
            out[enc.label] = res
        return out

    # ----- localization ------------------------------------------------------------------------------------------
    def localization(self) -> dict:
        test = self.split("test")
        masks = self.test_masks()
        rows = [i for i, m in enumerate(masks) if m is not None]
        if not rows:
            return {"skipped": "no test image has a mask"}
        out: dict[str, Any] = {}
        for enc in self.encoders():
            if not enc.can_localize:
                out[enc.label] = {"skipped": "model has no vision_model/visual_projection (not CLIP-style)"}
                continue
            self.image_emb(enc, test)  # stores the patch tokens of the masked rows on a cache miss
            tokens = self.patch_tokens(enc, test, rows)  # [N, P, D]
            n_patch = tokens.shape[1]
            g = round(np.sqrt(n_patch))
            if g * g != n_patch:
                out[enc.label] = {"skipped": f"{n_patch} patch tokens do not form a square grid"}
                continue
            normal = self.text_emb(enc, [NORMAL_PROMPT])[0]
            res = {"images": len(rows), "grid": [g, g], "normal_prompt": NORMAL_PROMPT}
            # overlay rows: the first masked image of each class (distinct classes first), N_OVERLAYS at most
            firsts: dict[int, int] = {}
            for r in rows:
                firsts.setdefault(int(test.labels[r]), r)
            shown = set((list(firsts.values()) + rows)[:N_OVERLAYS])
            for lv in CLASS_LEVELS:
                E, _ = self.class_embeddings(enc, lv, list(range(len(self.class_names))))
                e_cls = E[test.labels[rows]]                                    # [N, D]
                s_def = np.einsum("npd,nd->np", tokens, e_cls)
                s_nor = tokens @ normal
                logit = (s_def - s_nor).astype(np.float32)  # monotone in the 2-way softmax probability
                maps = torch.from_numpy(logit.reshape(-1, 1, g, g))
                scores, targets, small = [], [], []
                by_size: dict[tuple[int, int], list[int]] = {}
                for j, r in enumerate(rows):
                    by_size.setdefault(masks[r].shape, []).append(j)
                for shape, js in by_size.items():
                    up = torch.nn.functional.interpolate(maps[js], size=shape, mode="bilinear",
                                                         align_corners=False)[:, 0].numpy()
                    scores.append(up.reshape(-1))
                    targets.append(np.stack([masks[rows[j]] for j in js]).reshape(-1))
                    if lv == "t0":
                        small += [(rows[j], up[t]) for t, j in enumerate(js) if rows[j] in shown]
                scores_all, targets_all = np.concatenate(scores), np.concatenate(targets)
                if targets_all.all() or not targets_all.any():
                    res[lv] = {"available": False, "reason": "masks are all positive or all negative"}
                    continue
                res[lv] = M.localization_metrics(scores_all, targets_all)
                if lv == "t0":
                    self.artifacts.setdefault("overlays", {})[enc.label] = [
                        (test.image_names[r], test.pil(r).convert("RGB"), m, masks[r]) for r, m in small]
            out[enc.label] = res
        return out

    # ----- all ---------------------------------------------------------------------------------------------------
    def test_masks(self) -> list[np.ndarray | None]:
        if self._masks is None:
            self._masks = self.split("test").masks()
        return self._masks

    def run(self, tasks: Iterable[str] = TASKS) -> dict:
        tasks = list(tasks)
        results: dict[str, Any] = {}
        if "localization" in tasks:  # patch tokens come out of the test embedding pass
            self._patch_rows["test"] = {i for i, m in enumerate(self.test_masks()) if m is not None}
        needs_clip = [t for t in tasks if t != "task1"]
        if needs_clip and not self.specs:
            raise ValueError(f"tasks {needs_clip} need --model_name_or_path (a CLIP-family checkpoint)")
        for t in tasks:
            if t not in TASKS:
                raise ValueError(f"unknown task {t!r}: use one of {', '.join(TASKS)} or 'all'")
            start = time.perf_counter()
            results[t] = getattr(self, t)()
            self.timings[t] = time.perf_counter() - start
        results["models"] = ([e.describe() for e in self._encoders] if self._encoders else [])
        results["hyperparameters"] = self.hyperparameters
        results["support_sets"] = self.support_sets
        results["cache"] = self.cache_counts()
        results["timings_s"] = self.timings
        results["splits"] = {name: {"images": len(s.keys), "fingerprint": s.fingerprint[:16]}
                             for name, s in self._sets.items()}
        return results


def _declared_unseen(run: RunMetadata | None, class_names: Sequence[str]) -> list[int] | None:
    if run and run.exclude_classes:
        return sorted(class_names.index(c) for c in run.exclude_classes if c in class_names)
    if run and run.train_classes:
        seen = set(run.train_classes)
        return [i for i, c in enumerate(class_names) if c not in seen]
    return None


# ---------------------------------------------------------------------------------------------------------
# Command line (eval_benchmark.py is a thin shim over these)

CLI_DESCRIPTION = """SteelDefectX benchmark: the paper's four tasks plus retrieval and text-guided localization, in one report.

Example (paths are local checkpoint folders written by train_clip.py / train_vit.py, or Hub ids)::

    python eval_benchmark.py --data_dir synthetic \\
        --model_name_or_path t1=outputs/clip_t1 --model_name_or_path t3=outputs/clip_t3 \\
        --vision_model_name_or_path outputs/vit --tasks all --output_dir outputs/bench

writes outputs/bench/results.json, outputs/bench/report.md and PNG plots. Every image is encoded once per model
and cached under --cache_dir (default OUTPUT_DIR/cache); a re-run with the same models and data encodes
nothing. The protocols, every rule and every grid are documented in sdx/tasks.py; the report in sdx/report.py.
"""


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
        prog="eval_benchmark.py", description=CLI_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", action="append", default=[], metavar="[tX[:NAME]=]PATH",
                   help="CLIP-family checkpoint (local dir or Hub id) for tasks 2-4, retrieval and localization. "
                        "Repeat it for the Tx-Ty matrix; prefix a level tag (t0..t4 or an alias, e.g. "
                        "'t3=outputs/clip_t3', optionally 't3:name=PATH') to state the caption level the model was "
                        "trained with; without a tag the level is read from the checkpoint's run metadata (sdx_run.json).")
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
                        "run metadata, else a flagged fallback)")
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
    from sdx.data.builder import build_report
    from sdx.data.layout import data_source
    from sdx.data.synthetic import is_synthetic_dir

    info = {"data_dir": data_dir}
    synthetic = is_synthetic_dir(data_dir)
    path = Path(data_dir)
    if synthetic:
        desc = "synthetic images from sdx.data.synthetic (NOT SteelDefectX)"
    elif data_source(data_dir) == "hub":
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


def parse_benchmark_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run_benchmark(args: argparse.Namespace, argv=None) -> dict:
    """Everything eval_benchmark.py does after parsing: data, models, tasks, report; returns the results."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tasks = _parse_tasks(args.tasks)
    levels = [normalize_level(lv) for lv in args.levels.split(",") if lv.strip()]
    if not args.model_name_or_path and [t for t in tasks if t != "task1"]:
        raise SystemExit("--model_name_or_path is required for tasks other than task1 "
                         f"(asked: {', '.join(tasks)})")
    if "task1" in tasks and not args.vision_model_name_or_path and args.tasks != "all":
        raise SystemExit("task1 needs --vision_model_name_or_path (an image-classification checkpoint)")

    from sdx.data.builder import load_steeldefectx
    from sdx.report.markdown import write_report

    overrides = {}
    if args.validation_fraction is not None:
        overrides["validation_fraction"] = args.validation_fraction
    ds = load_steeldefectx(args.data_dir, args.dataset_config, cache_dir=args.dataset_cache_dir, **overrides)

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


def main(argv: Sequence[str] | None = None) -> dict:
    """eval_benchmark.py: parse the arguments and run the benchmark."""
    return run_benchmark(parse_benchmark_args(argv), argv)
