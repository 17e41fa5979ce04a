"""Metrics of the SteelDefectX benchmark (numpy / scikit-learn, vectorised).

Classification (labels are integer ids; ``labels`` = the id list a table or matrix is laid out over):

- ``accuracy``: share of samples whose prediction equals the label.
- ``mean_class_accuracy`` (the paper's mAcc): mean per-class recall over the classes PRESENT in ``y_true``
  (a class without test images has no recall and is left out, never counted as 0 or 1).
- ``macro_f1``: unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``
  (scikit-learn's default label set); a class with no true and no predicted sample is left out, a class
  predicted but never true counts with F1 = 0 (zero_division=0).
- ``per_class_table``: per class id in ``labels``: name, support, correct, recall (= per-class accuracy),
  precision, F1 (zero_division=0, recall is None for a class without support).
- ``confusion``: scikit-learn confusion matrix over ``labels`` (rows = true, columns = predicted).

Retrieval:

- ``retrieval_recall(sim, relevant, ks)``: ``sim`` is a [queries, gallery] score matrix and ``relevant`` a boolean
  matrix of the same shape. A query is a hit at K when ANY relevant gallery item is among its K highest scores;
  ties are broken by gallery order (stable sort), so a tie never helps a query. Queries with no relevant item are
  left out (their count is returned). R@K is given in percent. Image->text uses ``sim``, text->image ``sim.T``.

Pixel-level localization (``scores`` and ``targets`` of any shape, flattened; a target pixel is positive when
``target > 0`` after the caller binarised the mask at > 127):

- ``pixel_auroc``: area under the ROC curve, computed from one descending sort with tied scores grouped
  (equal to scikit-learn's ``roc_auc_score``).
- ``f1_max``: the best F1 over every threshold t (a pixel is predicted positive when score >= t), computed from
  the same sort: cumulative true positives at the last index of each distinct score. Returns F1-max, the
  threshold reaching it (the smallest score value in the predicted-positive set) and the IoU
  (TP / (TP + FP + FN)) of that same thresholded prediction.
- ``localization_metrics``: all three in one call (one sort), in percent.

Every function rejects empty input and shape mismatches with a ValueError naming the argument.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np


def _as_1d(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = _as_1d("y_true", y_true).astype(np.int64)
    p = _as_1d("y_pred", y_pred).astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    return t, p


# --------------------------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------------------------
def accuracy(y_true, y_pred) -> float:
    """Share of correct predictions, in percent."""
    t, p = _check_pair(y_true, y_pred)
    return float((t == p).mean() * 100.0)


def per_class_recall(y_true, y_pred) -> dict[int, float]:
    """{class id present in y_true: recall in percent}."""
    t, p = _check_pair(y_true, y_pred)
    classes, inverse = np.unique(t, return_inverse=True)
    support = np.bincount(inverse, minlength=classes.size)
    correct = np.bincount(inverse, weights=(t == p).astype(np.float64), minlength=classes.size)
    return {int(c): float(100.0 * k / n) for c, k, n in zip(classes, correct, support)}


def mean_class_accuracy(y_true, y_pred) -> float:
    """mAcc: mean per-class recall over the classes present in y_true, in percent."""
    return float(np.mean(list(per_class_recall(y_true, y_pred).values())))


def macro_f1(y_true, y_pred) -> float:
    """Macro-F1 over classes present in y_true or y_pred (zero_division=0), in percent."""
    from sklearn.metrics import f1_score

    t, p = _check_pair(y_true, y_pred)
    return float(100.0 * f1_score(t, p, average="macro", zero_division=0))


def confusion(y_true, y_pred, labels: Sequence[int] | None = None) -> np.ndarray:
    """Confusion matrix (rows true, columns predicted) over ``labels`` (default: ids seen in either)."""
    from sklearn.metrics import confusion_matrix

    t, p = _check_pair(y_true, y_pred)
    if labels is None:
        labels = np.union1d(t, p)
    return confusion_matrix(t, p, labels=list(labels))


def per_class_table(y_true, y_pred, labels: Sequence[int],
                    names: Sequence[str] | Mapping[int, str] | None = None) -> list[dict]:
    """One row per class id in ``labels``: name, support, correct, predicted, recall, precision, f1 (percent)."""
    cm = confusion(y_true, y_pred, labels)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    correct = np.diag(cm)
    rows = []
    for i, lab in enumerate(labels):
        if names is None:
            name = str(lab)
        else:
            name = names[lab]  # a mapping, or a sequence indexed by class id (the full class list)
        rec = float(100.0 * correct[i] / support[i]) if support[i] else None
        prec = float(100.0 * correct[i] / predicted[i]) if predicted[i] else 0.0
        r = rec or 0.0
        f1 = float(2 * prec * r / (prec + r)) if (prec + r) > 0 else 0.0
        rows.append({"label": int(lab), "class": name, "support": int(support[i]), "correct": int(correct[i]),
                     "predicted": int(predicted[i]), "recall": rec, "precision": prec, "f1": f1})
    return rows


def classification_metrics(y_true, y_pred) -> dict[str, float]:
    """{"acc", "macc", "macro_f1", "n"}: the three headline numbers in percent."""
    t, p = _check_pair(y_true, y_pred)
    return {"acc": accuracy(t, p), "macc": mean_class_accuracy(t, p), "macro_f1": macro_f1(t, p), "n": int(t.size)}


# --------------------------------------------------------------------------------------------------------------
# retrieval
# --------------------------------------------------------------------------------------------------------------
def retrieval_recall(sim, relevant, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K (percent) of each query row of ``sim`` given the boolean ``relevant`` matrix.

    A query hits at K when any relevant item is among its top K; ties keep gallery order (stable), queries
    without a relevant item are left out. Returns {"R@1": ..., ..., "queries": n_used, "skipped": n_left_out}.
    """
    s = np.asarray(sim, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"sim must be a non-empty 2-D matrix, got shape {s.shape}")
    if rel.shape != s.shape:
        raise ValueError(f"relevant has shape {rel.shape} but sim has {s.shape}")
    has_rel = rel.any(axis=1)
    if not has_rel.any():
        raise ValueError("relevant: no query has a relevant item")
    s, rel = s[has_rel], rel[has_rel]
    # rank of the best-ranked relevant item: number of items strictly better, plus earlier ties
    order = np.argsort(-s, axis=1, kind="stable")
    rel_sorted = np.take_along_axis(rel, order, axis=1)
    first_hit = rel_sorted.argmax(axis=1)  # 0-based rank of first relevant item
    out = {f"R@{k}": float(100.0 * (first_hit < k).mean()) for k in ks}
    out["queries"] = int(has_rel.sum())
    out["skipped"] = int((~has_rel).sum())
    return out


# --------------------------------------------------------------------------------------------------------------
# pixel-level localization
# --------------------------------------------------------------------------------------------------------------
def _sorted_counts(scores, targets):
    s = _as_1d("scores", scores)
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    y = _as_1d("targets", targets)
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.size} items but targets has {y.size}")
    y = y > 0
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("targets must contain both positive and negative pixels")
    order = np.argsort(-s)  # ties need no order: they are grouped below
    s_sorted = s[order]
    y_sorted = y[order]
    tp = np.cumsum(y_sorted, dtype=np.int64)
    fp = np.arange(1, s.size + 1, dtype=np.int64) - tp
    # last index of each group of equal scores: the thresholds where the prediction changes
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]
    return s_sorted[last], tp[last], fp[last], n_pos, n_neg


def pixel_auroc(scores, targets) -> float:
    """ROC AUC of pixel scores against binary targets, in percent (ties handled as scikit-learn does)."""
    thr, tp, fp, n_pos, n_neg = _sorted_counts(scores, targets)
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    return float(100.0 * np.trapezoid(tpr, fpr))


def _f1max_from_counts(thr, tp, fp, n_pos):
    pred = tp + fp
    f1 = 2.0 * tp / (pred + n_pos)  # = 2PR/(P+R)
    i = int(np.argmax(f1))
    iou = tp[i] / (pred[i] + n_pos - tp[i])
    return float(f1[i]), float(thr[i]), float(iou)


def f1_max(scores, targets) -> tuple[float, float, float]:
    """(F1-max, threshold, IoU at that threshold), F1 and IoU as fractions in [0, 1]; positive = score >= t."""
    thr, tp, fp, n_pos, _ = _sorted_counts(scores, targets)
    return _f1max_from_counts(thr, tp, fp, n_pos)


def localization_metrics(scores, targets) -> dict[str, float]:
    """{"pixel_auroc", "f1_max", "iou", "threshold", "pixels", "positive_pixels"}; metrics in percent."""
    thr, tp, fp, n_pos, n_neg = _sorted_counts(scores, targets)
    auroc = float(100.0 * np.trapezoid(np.r_[0.0, tp / n_pos], np.r_[0.0, fp / n_neg]))
    f1, t, iou = _f1max_from_counts(thr, tp, fp, n_pos)
    return {"pixel_auroc": auroc, "f1_max": 100.0 * f1, "iou": 100.0 * iou, "threshold": t,
            "pixels": int(n_pos + n_neg), "positive_pixels": int(n_pos)}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("values is empty")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
