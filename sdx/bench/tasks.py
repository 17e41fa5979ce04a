"""The benchmark run: the shared state of one evaluation (data, models, embedding cache, selections) and the
task modules it runs; the protocols are specified in docs/benchmark.md."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sdx import metrics as M
from sdx.bench import fewshot, localize, retrieval, transfer, txty, vision
from sdx.bench.data import ExternalSet, ImageSet, external_image_set
from sdx.bench.embeddings import EmbeddingCache
from sdx.bench.models import BenchClip, ModelSpec, load_clip_models, parse_model_arg
from sdx.bench.zeroshot import ZeroShot
from sdx.data.builder import candidate_classes
from sdx.data.levels import LEVELS, normalize_level
from sdx.models.clip import TRUNCATION_WARNING_SHARE, format_truncation, truncation_warnings

logger = logging.getLogger(__name__)

# task name -> the function that runs it (each in its own module)
TASK_FUNCTIONS = {"task1": vision.run, "task2": txty.run, "task3": fewshot.run, "task4": transfer.run,
                  "retrieval": retrieval.run, "localization": localize.run}
TASKS = tuple(TASK_FUNCTIONS)


class Benchmark:
    """Runs the tasks over a loaded SteelDefectX DatasetDict; results are plain JSON-able dicts."""

    def __init__(self, ds, *, clip_models: Sequence[ModelSpec | str] = (), vision_model: str | None = None,
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
                 shots: Sequence[int] = fewshot.DEFAULT_SHOTS, seeds: Sequence[int] = fewshot.DEFAULT_SEEDS,
                 levels: Sequence[str] = LEVELS, external: Sequence[tuple[str, str | None]] = (),
                 unseen_classes: Sequence[str] | None = None, max_eval_samples: int | None = None,
                 progress: bool = True, device: str | None = None, max_seq_length: int | None = None,
                 truncation_warning_share: float = TRUNCATION_WARNING_SHARE, fewshot_validation: int | None = None,
                 adapter_bases: Sequence[str] = (), adapter_levels: Sequence[str] = LEVELS):
        for split in ("train", "validation", "test"):
            if split not in ds:
                raise ValueError(f"dataset has no {split!r} split (splits: {list(ds)})")
        self.ds = ds
        self.class_names = list(ds["train"].features["label"].names)
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self.shots, self.seeds = [int(k) for k in shots], [int(s) for s in seeds]
        self.fewshot_validation = int(fewshot_validation) if fewshot_validation else None  # None: the carve-out
        self.levels = [normalize_level(lv) for lv in levels]
        self.external = list(external)
        self.unseen_arg = list(unseen_classes) if unseen_classes else None
        self.specs = [parse_model_arg(m) if isinstance(m, str) else m for m in clip_models]
        self.vision_path = vision_model
        self.adapter_bases = [str(b) for b in adapter_bases]  # frozen CLIPs of task 2's CLIP-Adapter rows
        self.adapter_levels = [normalize_level(lv) for lv in adapter_levels]
        self.max_eval_samples = max_eval_samples
        self.max_seq_length, self.truncation_warning_share = max_seq_length, truncation_warning_share
        self.cache = EmbeddingCache(cache_dir, progress=progress)
        self.zero_shot = ZeroShot(ds, self.cache)
        self.hyperparameters: list[dict] = []  # every selection, with the split it was made on
        self.support_sets: list[dict] = []
        self.artifacts: dict[str, Any] = {}  # non-JSON things for plots (score maps, images)
        self.timings: dict[str, float] = {}
        self._sets: dict[str, ImageSet] = {}
        self._encoders: list[BenchClip] | None = None
        self._masks: dict[str, list] = {}
        self._external_sets: list[ExternalSet] | None = None
        self._bases: list[BenchClip] | None = None
        self._cands: list[int] | None = None

    def split(self, name: str) -> ImageSet:
        """A split as an ImageSet; validation and test subsampled (seeded) to --max_eval_samples."""
        if name not in self._sets:
            d = self.ds[name]
            if name in ("validation", "test") and self.max_eval_samples and len(d) > self.max_eval_samples:
                rows = np.sort(np.random.default_rng(0).permutation(len(d))[: self.max_eval_samples])
                d = d.select(rows.tolist())
            self._sets[name] = ImageSet.from_dataset(name, d)
        return self._sets[name]

    def candidates(self) -> list[int]:
        if self._cands is None:
            self._cands = candidate_classes(self.ds)
        return self._cands

    def encoders(self) -> list[BenchClip]:
        if self._encoders is None:
            self._encoders = load_clip_models(self.specs, self.batch_size, self.device, self.max_seq_length,
                                              self.truncation_warning_share)
        return self._encoders

    def masks(self, name: str) -> list[np.ndarray | None]:
        """The binary masks of a split's rows (None where a row has none), read once."""
        if name not in self._masks:
            self._masks[name] = self.split(name).masks()
        return self._masks[name]

    def adapter_encoders(self) -> list[BenchClip]:
        """The frozen bases of task 2's adapter rows (an evaluated model of the same path is reused)."""
        if self._bases is None:
            loaded = {e.path: e for e in (self._encoders or [])}
            self._bases = [loaded.get(p) or load_clip_models([ModelSpec(path=p)], self.batch_size, self.device,
                                                             self.max_seq_length, self.truncation_warning_share)[0]
                           for p in self.adapter_bases]
        return self._bases

    def test_masks(self) -> list[np.ndarray | None]:
        return self.masks("test")

    def external_sets(self) -> list[ExternalSet]:
        """The --external_data sets, each read once (images, classes, descriptions, mask files)."""
        if self._external_sets is None:
            self._external_sets = [external_image_set(folder, desc) for folder, desc in self.external]
        return self._external_sets

    def chance(self) -> dict:
        """Chance levels of a test-split classifier among the candidate classes (sdx.metrics.chance_levels)."""
        return self.named_chance(self.split("test").labels, len(self.candidates()), self.class_names)

    @staticmethod
    def named_chance(labels: np.ndarray, n_classes: int, names: Sequence[str]) -> dict:
        """sdx.metrics.chance_levels with the majority class's name (``names`` indexed by label id)."""
        ch = M.chance_levels(labels, n_classes)
        return dict(ch, majority_class_name=names[ch["majority_class"]])

    def select(self, **record) -> None:
        """Record one hyper-parameter selection (made on validation)."""
        record.setdefault("selected_on", "validation")
        self.hyperparameters.append(record)

    def loaded_models(self) -> list[BenchClip]:
        """The CLIPs this run loaded: the evaluated ones, then the adapter bases not among them."""
        encoders = list(self._encoders or [])
        return encoders + [b for b in self._bases or [] if b not in encoders]

    def text_budget(self) -> dict:
        """Per CLIP: the token budget and, per text level, the texts it truncated; printed, and warned about
        above the warning share."""
        out = {}
        for enc in self.loaded_models():
            out[enc.label] = summary = enc.truncation.summary()
            print("\n".join(format_truncation(summary, enc.label)), flush=True)
            for message in truncation_warnings(summary, enc.label):
                logger.warning(message)
        return out

    def run(self, tasks: Iterable[str] = TASKS) -> dict:
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in TASK_FUNCTIONS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}: use one of {', '.join(TASKS)} or 'all'")
        needs_clip = [t for t in tasks if t != "task1" and not (t == "task2" and self.adapter_bases)]
        if needs_clip and not self.specs:
            raise ValueError(f"tasks {needs_clip} need --model_name_or_path (a CLIP-family checkpoint)")
        if "localization" in tasks:  # patch tokens of square images come out of the embedding pass of each set
            for name in ("test", "validation"):  # (non-square ones get a pass of their own: ImageSet.square_view)
                iset = self.split(name)
                iset.patch_rows = iset.square_rows(i for i, m in enumerate(self.masks(name)) if m is not None)
            for ext in self.external_sets():
                ext.iset.patch_rows = ext.iset.square_rows(ext.masked_rows)
        results: dict[str, Any] = {}
        for t in tasks:
            start = time.perf_counter()
            results[t] = TASK_FUNCTIONS[t](self)
            self.timings[t] = time.perf_counter() - start
        results["chance"] = {"test": self.chance()}
        results["models"] = [e.describe() for e in self.loaded_models()]
        results["text_budget"] = self.text_budget()
        results["hyperparameters"] = self.hyperparameters
        results["support_sets"] = self.support_sets
        results["cache"] = self.cache.counts()
        results["timings_s"] = self.timings
        results["splits"] = {name: {"images": len(s.keys), "fingerprint": s.fingerprint[:16]}
                             for name, s in self._sets.items()}
        return results
