"""Task 2, vision-language classification (the Tx-Ty matrix): each CLIP checkpoint (trained with level x)
classifies the test images zero-shot with class prompts at every level y; and, as the paper ran it, a CLIP-Adapter
per training level x on each frozen base of --adapter_base_model, trained on the cached training-image features
(sdx.bench.adapters), tested the same way."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from sdx.bench import adapters as A
from sdx.bench.models import BenchClip
from sdx.data.builder import caption_texts
from sdx.models.clip import get_logit_scale
from sdx.models.prompts import distinct_captions

if TYPE_CHECKING:
    from sdx.bench.tasks import Benchmark

SELECT_LEVEL = "t0"  # adapters are selected by validation accuracy with T0 prompts (the paper tests with T0)


def _texts(bench: Benchmark, base: BenchClip, level: str, labels: np.ndarray, select: np.ndarray):
    """(training rows used, class text [C, D], per-row caption embeddings or None, loss) of a level: the class
    texts for T0 / T1, each image's own caption for T2-T4 (rows without one are left out and counted; the class
    text is then ``select``, the SELECT_LEVEL table)."""
    cands = np.asarray(bench.candidates())
    if level in ("t0", "t1"):
        text, _ = bench.zero_shot.class_embeddings(base, level, cands)
        return np.arange(len(labels)), text, None, "bidirectional"
    caps = caption_texts(bench.split("train").dataset, level)
    rows, uniq, index = distinct_captions(caps)
    if not len(rows):
        return rows, None, None, "captions"
    emb = bench.cache.texts(base, uniq)[index]
    return rows, select, emb, "captions"


def adapter_rows(bench: Benchmark, base: BenchClip) -> list[dict]:
    """The frozen base's own row and one CLIP-Adapter row per level of --adapter_levels."""
    train, val, test = bench.split("train"), bench.split("validation"), bench.split("test")
    cands = np.asarray(bench.candidates())
    pos = {int(c): i for i, c in enumerate(cands)}
    x, xv, xt = (bench.cache.images(base, s) for s in (train, val, test))
    y, yv = (np.asarray([pos[int(c)] for c in s.labels]) for s in (train, val))
    select, _ = bench.zero_shot.class_embeddings(base, SELECT_LEVEL, cands)
    evaluate = lambda img: {lv: bench.zero_shot.evaluate(base, img, test.labels, lv, cands) for lv in bench.levels}
    rows = [] if base in bench.encoders() else [  # the base's own row, unless it is evaluated anyway
        {"model": base.label, "train_level": "none", "method": "frozen base, no adapter", "results": evaluate(xt),
         "setting": base.setting()}]
    for level in bench.adapter_levels:
        used, text, captions, loss = _texts(bench, base, level, y, select)
        name = f"{base.label} + CLIP-Adapter"
        if not len(used) or not len(val.keys):
            why = (f"no CLIP-Adapter at {level.upper()}: "
                   + ("no training caption at this level" if not len(used) else "the validation split is empty"))
            rows.append({"model": name, "train_level": level, "method": "clip-adapter", "skipped": why,
                         "results": {lv: {"available": False, "unavailable": why} for lv in bench.levels}})
            continue
        recipe = dataclasses.replace(A.TXTY_RECIPE, loss=loss)
        group = A.Group(x=x[used], y=y[used], x_val=xv, y_val=yv, seed=bench.seeds[0], captions=captions)
        fit = A.fit_clip_adapters([group], text, logit_scale=float(get_logit_scale(base.base).detach()),
                                  recipe=recipe, select_text=select)[0]
        for hp, value, grid in (("ratio", fit.ratio, recipe.ratios), ("epoch", fit.epoch,
                                                                      range(1, recipe.epochs + 1))):
            bench.select(task="task2", model=name, k="all", seed=group.seed, method=f"clip_adapter@{level}",
                         name=hp, value=value, grid=list(grid), score=fit.val_acc, metric=f"acc ({SELECT_LEVEL})",
                         validation_images=len(yv))
        rows.append({"model": name, "train_level": level, "method": "clip-adapter (cached features)",
                     "setting": dict(base.setting(), train_method="clip-adapter (cached features)"),
                     "adapter": {"ratio": fit.ratio, "epoch": fit.epoch, "val_acc": fit.val_acc, "loss": loss,
                                 "train_images": int(len(used)), "left_out": int(len(y) - len(used))},
                     "results": evaluate(fit.transform(xt))})
    return rows


def run(bench: Benchmark) -> dict:
    test = bench.split("test")
    cands = bench.candidates()
    rows = []
    for enc in bench.encoders():
        img = bench.cache.images(enc, test)
        results = {y: bench.zero_shot.evaluate(enc, img, test.labels, y, cands) for y in bench.levels}
        rows.append({"model": enc.label, "train_level": enc.level or "unknown", "results": results,
                     "setting": enc.setting()})
    for base in bench.adapter_encoders():
        rows += adapter_rows(bench, base)
    return {"test_levels": list(bench.levels), "candidates": [bench.class_names[c] for c in cands], "rows": rows,
            "n_test": len(test.labels), "chance": bench.chance()}
