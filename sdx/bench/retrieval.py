"""Retrieval: test images against their own sample-level captions (T2, T3, T4), R@1/5/10 both ways, beside the
R@K of a random ranking."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sdx import metrics as M
from sdx.bench.zeroshot import SAMPLE_LEVELS
from sdx.data.builder import caption_texts
from sdx.models.prompts import distinct_captions

if TYPE_CHECKING:
    from sdx.bench.tasks import Benchmark


def _one_level(bench: Benchmark, enc, img: np.ndarray, caps: list[str], level: str) -> dict:
    rows, uniq, index = distinct_captions(caps)  # the text gallery: distinct captions
    if not len(rows):
        return {"available": False, "reason": f"no test caption at level {level.upper()}"}
    sim = img[rows] @ bench.cache.texts(enc, uniq, level).T
    rel = np.zeros(sim.shape, dtype=bool)
    rel[np.arange(len(rows)), index] = True
    return {"available": True, "images": len(rows), "texts": len(uniq),
            "i2t": M.retrieval_recall(sim, rel), "t2i": M.retrieval_recall(sim.T, rel.T),
            "chance": {"i2t": M.retrieval_chance(rel), "t2i": M.retrieval_chance(rel.T)}}


def run(bench: Benchmark) -> dict:
    test = bench.split("test")
    out = {}
    for enc in bench.encoders():
        img = bench.cache.images(enc, test)
        out[enc.label] = {lv: _one_level(bench, enc, img, caption_texts(test.dataset, lv), lv)
                          for lv in SAMPLE_LEVELS}
    return out
