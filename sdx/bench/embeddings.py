"""Encoding through the cache: image embeddings (with the patch tokens localization needs, from the same
forward pass), patch tokens, text embeddings and classifier logits, each computed once per model and input."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdx.bench.cache import ArrayStore, sha1
from sdx.bench.data import ImageSet
from sdx.bench.models import TEXT_BATCH, BenchClip, VisionClassifier, single_thread


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class EmbeddingCache:
    """One ArrayStore per (kind, model fingerprint) under ``cache_dir`` (in memory when None), and the encoding
    loops that fill them with a progress bar per batch loop."""

    def __init__(self, cache_dir: str | os.PathLike | None, progress: bool = True):
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.progress = progress
        self._stores: dict[tuple[str, str], ArrayStore] = {}
        self._memo: dict[tuple[str, str], np.ndarray] = {}  # whole-set image embeddings, per model and set

    def store(self, kind: str, fingerprint: str) -> ArrayStore:
        key = (kind, fingerprint)
        if key not in self._stores:
            directory = self.cache_dir / kind / fingerprint[:20] if self.cache_dir else None
            self._stores[key] = ArrayStore(directory)
        return self._stores[key]

    def counts(self) -> dict[str, dict[str, int]]:
        """{kind: {"encoded": n, "reused": n, "discarded": damaged chunks}} over every store used in this process."""
        out: dict[str, dict[str, int]] = {}
        for (kind, _), st in self._stores.items():
            d = out.setdefault(kind, {"encoded": 0, "reused": 0, "discarded": 0})
            d["encoded"] += st.encoded
            d["reused"] += st.reused
            d["discarded"] += st.discarded
        return out

    def _loop(self, n: int, size: int, desc: str, step: Callable[[slice], np.ndarray]):
        parts = [step(sl) for sl in tqdm(list(batches(n, size)), desc=desc, leave=False,
                                         disable=not self.progress)]
        return np.concatenate(parts)

    def images(self, enc: BenchClip, iset: ImageSet, rows: Sequence[int] | None = None) -> np.ndarray:
        """Image embeddings of ``rows`` of ``iset`` (all rows when None). On a cache miss over the whole set the
        patch tokens of ``iset.patch_rows`` are stored from the same forward pass, so no image is encoded twice."""
        memo = (enc.fingerprint, iset.fingerprint) if rows is None else None
        if memo in self._memo:
            return self._memo[memo]
        idx = list(range(len(iset.keys))) if rows is None else list(rows)
        store = self.store("image", enc.fingerprint)
        want = iset.patch_rows if rows is None and enc.can_localize else set()
        patch_store = self.store("patch", enc.fingerprint) if want else None

        def encode(pos: list[int]) -> np.ndarray:
            def step(sl: slice) -> np.ndarray:
                batch_rows = [idx[p] for p in pos[sl]]
                with_patches = any(r in want for r in batch_rows)
                emb, patches = enc.encode_images([iset.pil(r) for r in batch_rows], with_patches=with_patches)
                if with_patches:
                    keep = [j for j, r in enumerate(batch_rows) if r in want]
                    patch_store.put([iset.keys[batch_rows[j]] for j in keep], patches[keep].astype(np.float16))
                return emb
            return self._loop(len(pos), enc.batch_size, f"encode {iset.name} [{enc.label}]", step)

        emb = store.get([iset.keys[i] for i in idx], encode).astype(np.float32)
        if memo:
            self._memo[memo] = emb
        return emb

    def patch_tokens(self, enc: BenchClip, iset: ImageSet, rows: Sequence[int]) -> np.ndarray:
        """Projected, normalised patch tokens [len(rows), P, D] (stored as float16)."""
        def encode(pos: list[int]) -> np.ndarray:
            def step(sl: slice) -> np.ndarray:
                images = [iset.pil(rows[p]) for p in pos[sl]]
                return enc.encode_images(images, with_patches=True)[1].astype(np.float16)
            return self._loop(len(pos), enc.batch_size, f"patch tokens [{enc.label}]", step)

        return self.store("patch", enc.fingerprint).get([iset.keys[i] for i in rows], encode).astype(np.float32)

    def texts(self, enc: BenchClip, texts: Sequence[str], level: str = "other") -> np.ndarray:
        """Normalised text embeddings [len(texts), D], keyed by the SHA-1 of each text (per model and token
        budget); every text, cached or not, is counted against the budget under ``level``."""
        size = max(enc.batch_size, TEXT_BATCH)
        enc.truncation.add(level, texts)

        def encode(pos: list[int]) -> np.ndarray:
            if len(pos) <= size:  # one batch (a class table): too little work for torch's thread pool
                with single_thread():
                    return enc.encode_texts([texts[p] for p in pos])
            return self._loop(len(pos), size, f"encode texts [{enc.label}]",
                              lambda sl: enc.encode_texts([texts[p] for p in pos[sl]]))

        return self.store("text", enc.text_fingerprint).get([sha1(t) for t in texts], encode).astype(np.float32)

    def logits(self, clf: VisionClassifier, iset: ImageSet) -> np.ndarray:
        """The classifier's logits over its own labels, one row per image of ``iset``."""
        def encode(pos: list[int]) -> np.ndarray:
            return self._loop(len(pos), clf.batch_size, f"classify {iset.name} [{clf.label}]",
                              lambda sl: clf.logits([iset.pil(p) for p in pos[sl]]))

        return self.store("logits", clf.fingerprint).get(iset.keys, encode)
