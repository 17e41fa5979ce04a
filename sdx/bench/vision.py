"""Task 1, vision-only classification: an image classifier's argmax over its labels, mapped to the dataset's
classes by name; Acc, mAcc, macro-F1, a per-class table, the confusion matrix and the chance levels on test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sdx import metrics as M
from sdx.bench.models import VisionClassifier

if TYPE_CHECKING:
    from sdx.bench.tasks import Benchmark


def run(bench: Benchmark) -> dict:
    if not bench.vision_path:
        return {"skipped": "no --vision_model_name_or_path given"}
    clf = VisionClassifier(bench.vision_path, batch_size=bench.batch_size, device=bench.device)
    test = bench.split("test")
    logits = bench.cache.logits(clf, test)
    mapping = clf.label_map(bench.class_names)
    logits = np.where(mapping[None, :] >= 0, logits, -np.inf)
    pred = mapping[np.argmax(logits, axis=1)]
    labels = sorted(set(test.labels.tolist()) | set(pred.tolist()))
    res = M.classification_metrics(test.labels, pred)
    res["per_class"] = M.per_class_table(test.labels, pred, labels, bench.class_names)
    res["confusion"] = {"labels": [bench.class_names[i] for i in labels],
                        "matrix": M.confusion(test.labels, pred, labels).tolist()}
    res["model"] = clf.describe()
    res["chance"] = bench.chance()
    return res
