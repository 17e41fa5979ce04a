"""Metrics of the SteelDefectX benchmark and the trainers, in percent: classification (scikit-learn), retrieval
recall and pixel-level localization (numpy, vectorised). Definitions in docs/benchmark.md ("Metrics").

Every function rejects empty input and shape mismatches with a ValueError naming the argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


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
    # numpy, not accuracy_score: 112x faster on task 3's 615 selection scores per model (bench/bench_metrics.py)
    return float(100.0 * np.mean(t == p))


def mean_class_accuracy(y_true, y_pred) -> float:
    """mAcc: mean per-class recall over the classes present in y_true, in percent (a class without true samples
    has no recall and is left out, never counted as 0 or 1)."""
    t, p = _check_pair(y_true, y_pred)
    # numpy, not balanced_accuracy_score: 29x and 43x faster on the few-shot grid's 75 test mAcc calls in two runs
    # (bench/bench_metrics.py --parts macc)
    classes, t_idx = np.unique(t, return_inverse=True)
    recall = np.bincount(t_idx, weights=t == p, minlength=classes.size) / np.bincount(t_idx, minlength=classes.size)
    return float(100.0 * recall.mean())


def macro_f1(y_true, y_pred) -> float:
    """Macro-F1 over the classes present in y_true or y_pred (zero_division=0), in percent."""
    t, p = _check_pair(y_true, y_pred)
    return float(100.0 * f1_score(t, p, average="macro", zero_division=0))


def confusion(y_true, y_pred, labels: Sequence[int] | None = None) -> np.ndarray:
    """Confusion matrix (rows true, columns predicted) over ``labels`` (default: ids seen in either); pairs with a
    label outside ``labels`` are left out."""
    t, p = _check_pair(y_true, y_pred)
    labels = np.union1d(t, p) if labels is None else np.asarray(list(labels), dtype=np.int64)
    return confusion_matrix(t, p, labels=labels)


def per_class_table(y_true, y_pred, labels: Sequence[int],
                    names: Sequence[str] | Mapping[int, str] | None = None) -> list[dict]:
    """One row per class id in ``labels``: name, support, correct, predicted, recall (= per-class accuracy; None
    for a class without support), precision, f1 (zero_division=0), in percent."""
    t, p = _check_pair(y_true, y_pred)
    cm = confusion(t, p, labels)
    precision, recall, f1, support = precision_recall_fscore_support(t, p, labels=list(labels), zero_division=0)
    rows = []
    for i, lab in enumerate(labels):
        name = str(lab) if names is None else names[lab]  # a mapping, or the full class list indexed by id
        rows.append({"label": int(lab), "class": name, "support": int(support[i]), "correct": int(cm[i, i]),
                     "predicted": int(cm[:, i].sum()), "recall": float(100.0 * recall[i]) if support[i] else None,
                     "precision": float(100.0 * precision[i]), "f1": float(100.0 * f1[i])})
    return rows


def chance_levels(y_true, n_classes: int) -> dict:
    """What a classifier that learned nothing scores on ``y_true`` among ``n_classes`` candidates, in percent:
    guessing uniformly (Acc and mAcc both 100 / n_classes in expectation) and always answering the most frequent
    true class (Acc = its share of y_true; "majority_class" is its id)."""
    t = _as_1d("y_true", y_true).astype(np.int64)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    ids, counts = np.unique(t, return_counts=True)
    top = int(np.argmax(counts))
    return {"classes": int(n_classes), "uniform": 100.0 / n_classes,
            "majority_acc": float(100.0 * counts[top] / t.size), "majority_class": int(ids[top]), "n": int(t.size)}


def classification_metrics(y_true, y_pred) -> dict[str, float]:
    """{"acc", "macc", "macro_f1", "n"}: the three headline numbers in percent."""
    t, p = _check_pair(y_true, y_pred)
    return {"acc": accuracy(t, p), "macc": mean_class_accuracy(t, p), "macro_f1": macro_f1(t, p), "n": int(t.size)}


# --------------------------------------------------------------------------------------------------------------
# retrieval (hand-written: scikit-learn has no recall@K with several relevant items per query)
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


def retrieval_chance(relevant, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K (percent) of a random ranking, in expectation: a query with r relevant items among N hits at K with
    probability 1 - C(N - r, K) / C(N, K); averaged over the queries that have a relevant item."""
    rel = np.asarray(relevant, dtype=bool)
    if rel.ndim != 2 or rel.size == 0:
        raise ValueError(f"relevant must be a non-empty 2-D matrix, got shape {rel.shape}")
    r = rel.sum(axis=1)
    r = r[r > 0].astype(np.float64)
    if r.size == 0:
        raise ValueError("relevant: no query has a relevant item")
    n = rel.shape[1]
    out = {}
    for k in ks:
        miss = np.ones_like(r)
        for i in range(min(k, n)):  # P(no relevant item in the top k) = prod_i (n - r - i) / (n - i)
            miss *= np.clip(n - r - i, 0, None) / (n - i)
        out[f"R@{k}"] = float(100.0 * np.mean(1.0 - miss))
    return out


# --------------------------------------------------------------------------------------------------------------
# pixel-level localization (hand-written: roc_auc_score + precision_recall_curve take 13x the time on the real
# fixture's 35 M test-mask pixels, about a minute per model and prompt level; bench/bench_metrics.py)
# --------------------------------------------------------------------------------------------------------------
def _split_sorted(scores, targets):
    """Positive and negative scores, each sorted ascending (two value sorts, cheaper than one argsort)."""
    s = _as_1d("scores", scores)
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    y = _as_1d("targets", targets)
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.size} items but targets has {y.size}")
    y = y > 0
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("targets must contain both positive and negative pixels")
    return pos, neg


def _threshold_counts(pos, neg):
    """At each distinct positive score u (ascending): TP = #pos >= u, FP = #neg >= u, #neg < u, #neg == u.

    The F1-maximising threshold is always one of the positive scores (lowering it to the next positive adds a
    positive; any threshold between two positive scores only adds negatives), so these are all the candidates.
    """
    first = np.r_[0, np.flatnonzero(np.diff(pos)) + 1]   # first index of each distinct positive value
    u = pos[first]
    count = np.diff(np.r_[first, pos.size])              # positives with exactly that value
    tp = pos.size - first
    below = np.searchsorted(neg, u, side="left")
    equal = np.searchsorted(neg, u, side="right") - below
    fp = neg.size - below
    return u, count, tp, fp, below, equal


def _auroc(pos, neg, count, below, equal) -> float:
    # Mann-Whitney U: each positive beats the negatives below it and ties count 1/2 (= the ROC area)
    return float(100.0 * np.sum(count * (below + 0.5 * equal)) / (pos.size * neg.size))


def _f1max(u, tp, fp, n_pos):
    pred = tp + fp
    f1 = 2.0 * tp / (pred + n_pos)  # = 2PR / (P + R)
    i = int(np.argmax(f1[::-1]))     # scan from the highest threshold so ties keep the higher one
    i = f1.size - 1 - i
    iou = tp[i] / (pred[i] + n_pos - tp[i])
    return float(f1[i]), float(u[i]), float(iou)


def pixel_auroc(scores, targets) -> float:
    """ROC AUC of pixel scores against binary targets, in percent (ties count 1/2, as scikit-learn)."""
    pos, neg = _split_sorted(scores, targets)
    _, count, _, _, below, equal = _threshold_counts(pos, neg)
    return _auroc(pos, neg, count, below, equal)


def f1_max(scores, targets) -> tuple[float, float, float]:
    """(F1-max, threshold, IoU at that threshold), F1 and IoU as fractions in [0, 1]; positive = score >= t."""
    pos, neg = _split_sorted(scores, targets)
    u, _, tp, fp, _, _ = _threshold_counts(pos, neg)
    return _f1max(u, tp, fp, pos.size)


def localization_metrics(scores, targets) -> dict[str, float]:
    """{"pixel_auroc", "f1_max", "iou", "threshold", "pixels", "positive_pixels"}; metrics in percent."""
    pos, neg = _split_sorted(scores, targets)
    u, count, tp, fp, below, equal = _threshold_counts(pos, neg)
    f1, t, iou = _f1max(u, tp, fp, pos.size)
    return {"pixel_auroc": _auroc(pos, neg, count, below, equal), "f1_max": 100.0 * f1, "iou": 100.0 * iou,
            "threshold": t, "pixels": int(pos.size + neg.size), "positive_pixels": int(pos.size)}


def f1_iou_at(scores, targets, threshold: float) -> tuple[float, float]:
    """(F1, IoU) in percent of the prediction "score >= threshold", the threshold chosen elsewhere (on
    validation): unlike F1-max, not tuned on these targets."""
    s, y = _as_1d("scores", scores), _as_1d("targets", targets) > 0
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.size} items but targets has {y.size}")
    if not y.any():
        raise ValueError("targets has no positive pixel")
    pred = s >= threshold
    tp = int(np.count_nonzero(pred & y))
    n_pred, n_pos = int(np.count_nonzero(pred)), int(np.count_nonzero(y))
    return 100.0 * 2 * tp / (n_pred + n_pos), 100.0 * tp / (n_pred + n_pos - tp)


def all_positive_baseline(positive: int, total: int) -> dict[str, float]:
    """The trivial localizer "every pixel is a defect": pixel AUROC 50 (a constant score), F1 = 2p / (1 + p) and
    IoU = p, with p the positive share of the ``total`` pixels (percent, as every metric here)."""
    if total <= 0 or not 0 < positive <= total:
        raise ValueError(f"positive must be in 1..total, got positive={positive}, total={total}")
    p = positive / total
    return {"pixel_auroc": 50.0, "f1": 100.0 * 2 * p / (1 + p), "iou": 100.0 * p, "positive_rate": 100.0 * p}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("values is empty")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
