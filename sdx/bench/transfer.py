"""Task 4, zero-shot transfer: (a) external image sets with T0 and T1 prompts over their own classes;
(b) cross-class on SteelDefectX: test images of the unseen classes classified among the unseen classes. Each
result carries its chance levels (sdx.metrics.chance_levels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sdx import metrics as M
from sdx.bench.data import ExternalSet
from sdx.bench.models import BenchClip
from sdx.data.levels import t0_prompt
from sdx.models.clip import zero_shot_predict
from sdx.train.runmeta import RunMetadata

if TYPE_CHECKING:
    from sdx.bench.tasks import Benchmark

FALLBACK_SOURCE = "fallback: every 4th class from the 2nd (model did not declare held-out classes)"


def declared_unseen(run: RunMetadata | None, class_names: Sequence[str]) -> list[int] | None:
    """The class ids a checkpoint's run metadata says it did not train on (None when it says nothing)."""
    if run and run.exclude_classes:
        return sorted(class_names.index(c) for c in run.exclude_classes if c in class_names)
    if run and run.train_classes:
        seen = set(run.train_classes)
        return [i for i, c in enumerate(class_names) if c not in seen]
    return None


def unseen_classes(bench: Benchmark, enc: BenchClip) -> tuple[list[int], bool, str]:
    """(unseen class ids, whether the model declared it excluded them, where the list came from)."""
    names = bench.class_names
    if bench.unseen_arg:
        unknown = [c for c in bench.unseen_arg if c not in names]
        if unknown:
            raise ValueError(f"--unseen_classes: unknown class(es) {unknown}")
        ids = sorted(names.index(c) for c in bench.unseen_arg)
        declared = declared_unseen(enc.run, names)
        return ids, bool(declared) and set(ids) <= set(declared), "--unseen_classes"
    cands = bench.candidates()
    declared = [c for c in (declared_unseen(enc.run, names) or []) if c in cands]
    if declared:  # classes without images never count as "held out"
        return declared, True, "checkpoint metadata"
    return cands[1::4], False, FALLBACK_SOURCE


def cross_class(bench: Benchmark, enc: BenchClip) -> dict:
    test = bench.split("test")
    ids, excluded, source = unseen_classes(bench, enc)
    rows = np.nonzero(np.isin(test.labels, ids))[0]
    cc: dict[str, Any] = {"unseen_classes": [bench.class_names[c] for c in ids], "source": source,
                          "model_excluded_unseen": excluded, "n_test": len(rows)}
    if len(rows) and len(set(test.labels[rows].tolist())) >= 2:
        img, labels = bench.cache.images(enc, test)[rows], test.labels[rows]
        cc["chance"] = bench.named_chance(labels, len(ids), bench.class_names)
        cc["levels"] = {lv: bench.zero_shot.evaluate(enc, img, labels, lv, ids) for lv in bench.levels}
    else:
        cc["skipped"] = "fewer than two unseen classes with test images"
    return cc


def external_set(bench: Benchmark, enc: BenchClip, ext: ExternalSet) -> tuple[str, dict]:
    iset, classes, desc = ext
    img = bench.cache.images(enc, iset)
    one = {"classes": classes, "n_images": len(iset.keys), "fingerprint": iset.fingerprint[:16],
           "chance": bench.named_chance(iset.labels, len(classes), classes)}
    for lv, texts in (("t0", [t0_prompt(c) for c in classes]), ("t1", [desc[c] for c in classes])):
        pred = zero_shot_predict(img, bench.cache.texts(enc, texts), np.arange(len(classes)))
        one[lv] = M.classification_metrics(iset.labels, pred)
    return iset.name, one


def run(bench: Benchmark) -> dict:
    out: dict[str, Any] = {}
    for enc in bench.encoders():
        external = dict(external_set(bench, enc, ext) for ext in bench.external_sets())
        out[enc.label] = {"cross_class": cross_class(bench, enc), "external": external}
    return out
