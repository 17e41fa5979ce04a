"""Class text embeddings from captions: the one rule of training-time validation (sdx.train.clip) and the
benchmark (sdx.bench.zeroshot) for zero-shot classification at T2-T4; and the distinct captions of a column, each
encoded once by every caption user (these two, the benchmark's retrieval and its caption-trained CLIP-Adapters).

A class's embedding at such a level is the re-normalised mean of the embeddings of its training captions at that
level; a class without any caption at that level takes its row of a fallback table (the callers pass T1).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def distinct_captions(texts: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(rows with a caption, the distinct captions sorted, each such row's position in them); ``texts``: one per
    row, "" (or blank) where the row lacks a caption."""
    rows = np.asarray([i for i, t in enumerate(texts) if t and t.strip()], dtype=np.int64)
    uniq = sorted({texts[i] for i in rows})
    pos = {t: j for j, t in enumerate(uniq)}
    return rows, uniq, np.asarray([pos[texts[i]] for i in rows], dtype=np.int64)


def caption_mean_embeddings(texts: Sequence[str], labels: Sequence[int], num_classes: int,
                            encode: Callable[[list[str]], np.ndarray], fallback: np.ndarray
                            ) -> tuple[np.ndarray | None, np.ndarray]:
    """(table [num_classes, D] float32, caption counts per class [num_classes]).

    ``texts``: one per training row, "" where the row lacks the level; ``labels``: the rows' class ids;
    ``encode``: a list of distinct strings -> their normalised embeddings [n, D] (each distinct text encoded once);
    ``fallback``: [num_classes, D], the row of a class without a caption. The table is None when no row has text.
    """
    have, uniq, index = distinct_captions(texts)
    lab = np.asarray(labels, dtype=np.int64)[have]
    counts = np.bincount(lab, minlength=num_classes)
    if not len(have):
        return None, counts
    emb = np.asarray(encode(uniq))[index]
    sums = np.zeros((num_classes, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, lab, emb)
    table = np.where(counts[:, None] > 0, normalize_rows(sums), np.asarray(fallback, dtype=np.float64))
    return table.astype(np.float32), counts
