"""Zero-shot classification with class prompts at a text level (tasks 2, 3 and 4): the class text embedding of
each level (T0 template, T1 description, T2-T4 mean of the class's training captions) and one evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdx import metrics as M
from sdx.bench.data import column
from sdx.bench.embeddings import EmbeddingCache
from sdx.bench.models import BenchClip
from sdx.data.builder import caption_texts, class_descriptions
from sdx.data.levels import normalize_level, t0_prompt
from sdx.models.clip import zero_shot_predict
from sdx.models.prompts import caption_mean_embeddings

SAMPLE_LEVELS = ("t2", "t3", "t4")
CLASS_LEVELS = ("t0", "t1")


class ZeroShot:
    """Class prompt embeddings of a DatasetDict per (model, level), computed once, and zero-shot evaluation."""

    def __init__(self, ds, cache: EmbeddingCache):
        self.ds, self.cache = ds, cache
        self.class_names = list(ds["train"].features["label"].names)
        self._descriptions: dict[int, str] | None = None
        self._memo: dict[tuple[str, str], tuple[dict | None, dict]] = {}

    def class_embeddings(self, enc: BenchClip, level: str, classes: Sequence[int]):
        """(E [len(classes), D], info) for prompt level ``level``; (None, info) when the level has no text."""
        level = normalize_level(level)
        memo = (enc.fingerprint, level)
        if memo not in self._memo:
            self._memo[memo] = self._table(enc, level)
        table, info = self._memo[memo]
        if table is None:
            return None, info
        return np.stack([table[c] for c in classes]), info

    def evaluate(self, enc: BenchClip, img: np.ndarray, labels: np.ndarray, level: str,
                 classes: Sequence[int]) -> dict:
        """Acc / mAcc / macro-F1 of ``img`` (rows) classified among ``classes`` with prompts at ``level``."""
        E, info = self.class_embeddings(enc, level, classes)
        if E is None:
            return {"available": False, **info}
        pred = zero_shot_predict(img, E, np.asarray(classes))
        out = M.classification_metrics(labels, pred)
        out.update(available=True, text=info.get("source"))
        fallbacks = [c for c in info.get("fallbacks", []) if self.class_names.index(c) in classes]
        if fallbacks:
            out["fallback_to_t1"] = fallbacks
        return out

    def _t1_texts(self) -> tuple[list[str], list[str]]:
        """(each class's T1 sentence, the T0 template for a class without one; the names of those classes)."""
        if self._descriptions is None:
            self._descriptions = class_descriptions(self.ds)
        texts = [self._descriptions.get(c) or t0_prompt(name) for c, name in enumerate(self.class_names)]
        return texts, [name for c, name in enumerate(self.class_names) if c not in self._descriptions]

    def _table(self, enc: BenchClip, level: str) -> tuple[dict | None, dict]:
        if level == "t0":
            e = self.cache.texts(enc, [t0_prompt(name) for name in self.class_names], level)
            return dict(enumerate(e)), {"source": "class-name template", "fallbacks": []}
        if level == "t1":
            texts, missing = self._t1_texts()
            return dict(enumerate(self.cache.texts(enc, texts, level))), {"source": "class description",
                                                                           "fallbacks": missing}
        return self._caption_means(enc, level)

    def _caption_means(self, enc: BenchClip, level: str) -> tuple[dict | None, dict]:
        """Re-normalised mean of each class's training captions at ``level``; T1 for a class without any
        (sdx.models.prompts.caption_mean_embeddings, the rule training-time validation uses too)."""
        train = self.ds["train"]
        caps = caption_texts(train, level)
        source = f"mean of training {level.upper()} captions"
        table, counts = caption_mean_embeddings(caps, column(train, "label"), len(self.class_names),
                                                lambda texts: self.cache.texts(enc, texts, level),
                                                self.cache.texts(enc, self._t1_texts()[0], "t1"))
        if table is None:
            return None, {"source": source, "unavailable": f"no training caption at level {level.upper()}"}
        fallbacks = [self.class_names[c] for c in range(len(self.class_names)) if not counts[c]]
        return dict(enumerate(table)), {"source": source, "captions": int(counts.sum()), "fallbacks": fallbacks}
