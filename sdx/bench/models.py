"""The checkpoints the benchmark evaluates: CLIP-family encoders (tasks 2-4, retrieval, localization) and image
classifiers (task 1), each with its name, run metadata and cache fingerprint."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdx.bench.cache import model_fingerprint, sha1
from sdx.data.levels import normalize_level
from sdx.models.clip import (TRUNCATION_WARNING_SHARE, ClipEncoder, TruncationCounter, adapter_base, load_clip_parts,
                             model_lineage, text_positions, vision_architecture)
from sdx.train.runmeta import RUN_META_FILE, RunMetadata

TEXT_BATCH = 128  # texts per text-encoder batch (at least --batch_size)


@contextlib.contextmanager
def single_thread():
    """torch on one intra-op thread for small work: cached-feature training and one batch of texts. Each op of
    the default pool waits for every pool thread, and on the shared 2-core machine a busy core made that a
    scheduler tick per op: the grid's CLIP-Adapter training 4.6x to 19.3x slower in four runs of
    bench/bench_fewshot.py (load 7-9), 25 T0 prompts 1.0 s on 2 threads vs 0.05 s on one (load 4)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def _level_or_raw(value) -> str:
    """A canonical level t0..t4, or the value itself (e.g. "mixed") when it is not a single level."""
    try:
        return normalize_level(value)
    except ValueError:
        return str(value).strip().lower()


def clip_fingerprint(path: str) -> str:
    """The cache key of a CLIP-family checkpoint: its own fingerprint, and for an adapter folder whose base lies
    outside it, the base's too (a retrained base must not reuse the adapter's cached embeddings)."""
    own = model_fingerprint(path)
    base = adapter_base(path) if Path(path).is_dir() else None
    if base is None or Path(base).resolve().is_relative_to(Path(path).resolve()):
        return own
    return sha1(own + model_fingerprint(base))


def _read_run(path: str) -> RunMetadata | None:
    return RunMetadata.read(path) if Path(path).is_dir() else None


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
                 batch_size: int = 32, device: str | None = None, max_length: int | None = None,
                 truncation_warning_share: float = TRUNCATION_WARNING_SHARE):
        self.path = str(name_or_path)
        super().__init__(*load_clip_parts(self.path), device=device, max_length=max_length)
        self.label = label or Path(self.path).name or self.path
        self.fingerprint = clip_fingerprint(self.path)
        # text embeddings depend on the token budget too (--max_seq_length)
        self.text_fingerprint = sha1(f"{self.fingerprint}|max_length={self.max_length}")
        self.truncation = TruncationCounter(self.tokenizer, self.max_length, text_positions(self.base),
                                            truncation_warning_share)
        self.run = _read_run(self.path)
        run_level = self.run.caption_level if self.run else None
        self.level = _level_or_raw(level or run_level) if (level or run_level) else None
        self.batch_size = batch_size
        self.adapter = getattr(self.model, "adapter", None)
        self.origin = _origin(self.run)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return super().encode_texts(texts, batch_size=max(self.batch_size, TEXT_BATCH))

    def describe(self) -> dict:
        method = self.run.method if self.run else ("adapter" if self.adapter is not None else "unknown")
        return dict(_describe(self, "clip", method), train_level=self.level, **self.setting())

    def setting(self) -> dict:
        """What the paper-setting comparison needs: lineage (family, conversion, stretch), vision architecture,
        method and the token budget."""
        method = self.run.method if self.run else ("adapter" if self.adapter is not None else "unknown")
        return {"lineage": model_lineage(self.base), "architecture": vision_architecture(self.base),
                "train_method": method, "max_seq_length": self.max_length}


def load_clip_models(specs: Sequence[ModelSpec], batch_size: int, device: str | None, max_length: int | None = None,
                     truncation_warning_share: float = TRUNCATION_WARNING_SHARE) -> list[BenchClip]:
    """The CLIP checkpoints of ``specs`` (token budget ``max_length``, default each model's text positions); names
    shared by several get a ``#i`` suffix (unique in the report)."""
    encoders = [BenchClip(s.path, label=s.label, level=s.level, batch_size=batch_size, device=device,
                          max_length=max_length, truncation_warning_share=truncation_warning_share)
                for s in specs]
    labels = [e.label for e in encoders]
    for i, e in enumerate(encoders):
        if labels.count(e.label) > 1:
            e.label = f"{e.label}#{i}"
    return encoders


class VisionClassifier:
    """An image-classification checkpoint (Task 1)."""

    def __init__(self, name_or_path: str, *, batch_size: int = 32, device: str | None = None):
        # heavy (about 5 s) and needed only when task 1 runs
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.path = str(name_or_path)
        self.label = Path(self.path).name or self.path
        self.fingerprint = model_fingerprint(self.path)
        self.run = _read_run(self.path)
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.model = AutoModelForImageClassification.from_pretrained(self.path).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.path}: cannot load an image-classification model ({err})") from err
        try:
            self.image_processor = AutoImageProcessor.from_pretrained(self.path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.path}: no image processor (preprocessor_config.json) found ({err})") from err
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
        return {**_describe(self, "image-classifier", self.run.method if self.run else type(self.model).__name__),
                "architecture": self.model.config.model_type}
