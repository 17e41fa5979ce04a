"""Task 1, vision-only classification: an image classifier's argmax over its labels, mapped to the dataset's
classes by name; Acc, mAcc, macro-F1, a per-class table, the confusion matrix and the chance levels on test. The
headline is the argmax over all the model's labels; the argmax restricted to the classes with images in the data
(the candidates of the CLIP tasks) is reported beside it (docs/benchmark.md, Task 1)."""

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
    mapping = clf.label_map(bench.class_names)  # model label -> dataset class id, -1 outside the dataset
    id2label = clf.model.config.id2label
    model_names = [str(id2label.get(i, f"LABEL_{i}")) for i in range(len(mapping))]
    # a label outside the dataset keeps its own (negative) id, so it counts as a wrong answer of its own
    own_ids = np.where(mapping >= 0, mapping, -1 - np.arange(len(mapping)))
    names = {**dict(enumerate(bench.class_names)),
             **{int(own_ids[i]): f"{model_names[i]} (model label, not a data class)" for i in np.where(mapping < 0)[0]}}
    candidates = bench.candidates()
    inside = np.isin(mapping, candidates)
    if not inside.any():
        raise ValueError(f"{bench.vision_path}: none of the model's labels is a class with images in the data")
    pred = own_ids[np.argmax(logits, axis=1)]
    res = _scores(test.labels, pred, names)
    restricted = mapping[np.argmax(np.where(inside[None, :], logits, -np.inf), axis=1)]
    res["argmax_over"] = f"all {len(mapping)} model labels"
    res["restricted"] = {**M.classification_metrics(test.labels, restricted), "classes": int(inside.sum()),
                         "over": f"the {int(inside.sum())} model labels that are classes with images in the data"}
    res["model_labels"] = len(mapping)
    res["labels_not_present"] = [model_names[i] for i in np.where(~inside)[0]]
    res["predicted_not_present"] = int((~np.isin(pred, candidates)).sum())
    res["model"] = clf.describe()
    res["chance"] = bench.chance()
    return res


def _scores(y: np.ndarray, pred: np.ndarray, names: dict[int, str]) -> dict:
    labels = sorted(set(y.tolist()) | set(pred.tolist()))
    res = M.classification_metrics(y, pred)
    res["per_class"] = M.per_class_table(y, pred, labels, names)
    res["confusion"] = {"labels": [names[i] for i in labels], "matrix": M.confusion(y, pred, labels).tolist()}
    return res
