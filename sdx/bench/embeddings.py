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
        self._memo: dict[tuple, np.ndarray] = {}  # image embeddings per (model, set, rows or None: all)

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
        """Image embeddings of ``rows`` of ``iset`` (all rows when None): ``images_of`` with one request."""
        return self.images_of(enc, [(iset, rows)])[0]

    def images_of(self, enc: BenchClip, requests: Sequence[tuple[ImageSet, Sequence[int] | None]]
                  ) -> list[np.ndarray]:
        """Image embeddings of each (set, rows) request (rows None: the whole set), each computed once per
        process. The images the cache lacks are encoded in ONE stream of batches in request order, as one plain
        pass over them would be (no short batch at the end of each set). On a whole-set request the patch tokens
        of the set's ``patch_rows`` are stored from the same forward pass, so no image is encoded twice."""
        memo = [(enc.fingerprint, iset.fingerprint, None if rows is None else tuple(rows)) for iset, rows in requests]
        todo = [i for i, m in enumerate(memo) if m not in self._memo]
        if todo:
            items: list[tuple[ImageSet, int, bool]] = []  # (set, row, its patch tokens wanted) per image asked for
            ends = []
            for i in todo:
                iset, rows = requests[i]
                want = iset.patch_rows if rows is None and enc.can_localize else set()
                items += [(iset, r, r in want) for r in (range(len(iset.keys)) if rows is None else rows)]
                ends.append(len(items))
            patch_store = self.store("patch", enc.fingerprint) if any(want for *_, want in items) else None
            emb = self.store("image", enc.fingerprint).get(
                [iset.keys[r] for iset, r, _ in items],
                lambda pos: self._encode(enc, [items[p] for p in pos], patch_store)).astype(np.float32)
            for i, part in zip(todo, np.split(emb, ends[:-1])):
                self._memo[memo[i]] = part
        return [self._memo[m] for m in memo]

    def _encode(self, enc: BenchClip, items: list[tuple[ImageSet, int, bool]], patch_store: ArrayStore | None
                ) -> np.ndarray:
        """Embeddings of ``items`` in batches of ``enc.batch_size``; the wanted patch tokens go to ``patch_store``."""
        def step(sl: slice) -> np.ndarray:
            batch = items[sl]
            with_patches = any(want for _, _, want in batch)
            emb, patches = enc.encode_images([iset.pil(r) for iset, r, _ in batch], with_patches=with_patches)
            if with_patches:
                keep = [j for j, (_, _, want) in enumerate(batch) if want]
                patch_store.put([batch[j][0].keys[batch[j][1]] for j in keep], patches[keep].astype(np.float16))
            return emb

        names = "+".join(dict.fromkeys(iset.name for iset, _, _ in items))
        return self._loop(len(items), enc.batch_size, f"encode {names} [{enc.label}]", step)

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
