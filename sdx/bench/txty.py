"""Task 2, vision-language classification (the Tx-Ty matrix): each CLIP checkpoint (trained with level x)
classifies the test images zero-shot with class prompts at every level y."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdx.bench.tasks import Benchmark


def run(bench: Benchmark) -> dict:
    test = bench.split("test")
    cands = bench.candidates()
    rows = []
    for enc in bench.encoders():
        img = bench.cache.images(enc, test)
        results = {y: bench.zero_shot.evaluate(enc, img, test.labels, y, cands) for y in bench.levels}
        rows.append({"model": enc.label, "train_level": enc.level or "unknown", "results": results,
                     "setting": enc.setting()})
    return {"test_levels": list(bench.levels), "candidates": [bench.class_names[c] for c in cands], "rows": rows,
            "n_test": len(test.labels), "chance": bench.chance()}
