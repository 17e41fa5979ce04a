"""sdx.metrics against hand-computed values and their definitions (and scikit-learn for the hand-written pixel
metrics)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sdx import metrics as M


def test_accuracy_macc_f1_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 0, 3]
    # 3 of 6 correct
    assert M.accuracy(y_true, y_pred) == pytest.approx(50.0)
    # recall: class0 2/3, class1 1/2, class2 0/1; class 3 is absent from y_true -> not in mAcc
    assert M.mean_class_accuracy(y_true, y_pred) == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)
    # F1 per class over {0,1,2,3}: c0 P=2/3 R=2/3 -> 2/3; c1 P=1/2 R=1/2 -> 1/2; c2 0; c3 0
    assert M.macro_f1(y_true, y_pred) == pytest.approx(100 * (2 / 3 + 1 / 2) / 4)
    cm = M.confusion(y_true, y_pred, labels=[0, 1, 2, 3])
    assert cm.tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]


def test_classification_metrics_match_their_definitions():
    """On random labels with classes missing from either side: each number equals its definition, counted by loops
    (the label sets and zero_division choices of docs/benchmark.md), and no warning escapes."""
    rng = np.random.default_rng(2)
    t, p = rng.integers(0, 7, 300), rng.integers(1, 9, 300)  # class 0 never predicted, 7 and 8 never true
    present = sorted(set(t.tolist()))
    recall = [np.mean(p[t == c] == c) for c in present]
    f1 = []
    for c in sorted(set(t.tolist()) | set(p.tolist())):
        tp, n_true, n_pred = np.sum((t == c) & (p == c)), np.sum(t == c), np.sum(p == c)
        f1.append(2 * tp / (n_true + n_pred))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = M.classification_metrics(t, p)
    assert out["acc"] == pytest.approx(100 * np.mean(t == p))
    assert out["macc"] == pytest.approx(100 * np.mean(recall))
    assert out["macro_f1"] == pytest.approx(100 * np.mean(f1)) and out["n"] == 300


def test_confusion_counts_pairs_within_labels():
    rng = np.random.default_rng(4)
    t, p = rng.integers(0, 6, 200), rng.integers(0, 7, 200)
    for labels in ([0, 1, 2, 3, 4, 5, 6], [5, 2, 0]):
        by_loop = [[int(np.sum((t == a) & (p == b))) for b in labels] for a in labels]
        assert M.confusion(t, p, labels).tolist() == by_loop


def test_per_class_table_rows():
    rows = M.per_class_table([0, 0, 1], [0, 1, 1], labels=[0, 1, 2], names=["a", "b", "c"])
    assert [r["class"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["support"] == 2 and rows[0]["recall"] == pytest.approx(50.0)
    assert rows[0]["precision"] == pytest.approx(100.0)
    assert rows[1]["precision"] == pytest.approx(50.0) and rows[1]["recall"] == pytest.approx(100.0)
    assert rows[1]["f1"] == pytest.approx(100 * 2 * 0.5 * 1.0 / 1.5)
    assert rows[2]["support"] == 0 and rows[2]["recall"] is None


def test_retrieval_recall_multiple_relevant():
    sim = np.array([[0.9, 0.8, 0.1, 0.0],   # relevant {1}: rank 2 -> hit at 5, miss at 1
                    [0.1, 0.2, 0.3, 0.4],   # relevant {0, 3}: item 3 ranked first -> hit at 1
                    [0.5, 0.5, 0.5, 0.5],   # tie everywhere, relevant {2}: stable order puts it third
                    [0.0, 0.0, 0.0, 0.0]])  # no relevant item -> left out
    rel = np.zeros_like(sim, dtype=bool)
    rel[0, 1] = rel[1, 0] = rel[1, 3] = rel[2, 2] = True
    out = M.retrieval_recall(sim, rel, ks=(1, 2, 3))
    assert out["queries"] == 3 and out["skipped"] == 1
    assert out["R@1"] == pytest.approx(100 / 3)
    assert out["R@2"] == pytest.approx(200 / 3)
    assert out["R@3"] == pytest.approx(100.0)


def test_pixel_auroc_by_hand_and_sklearn():
    from sklearn.metrics import roc_auc_score

    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5])
    target = np.array([1, 0, 1, 0, 1, 0])
    # pairs (pos, neg): pos 0.9 beats 3 negs; pos 0.7 beats 2 (0.6, 0.5); pos 0.5 ties 0.5 (1/2), loses 2
    assert M.pixel_auroc(scores, target) == pytest.approx(100 * (3 + 2 + 0.5) / 9)
    rng = np.random.default_rng(0)
    s = rng.integers(0, 20, 5000).astype(float)
    y = (rng.random(5000) < 0.2 + 0.02 * s).astype(int)
    assert M.pixel_auroc(s, y) == pytest.approx(100 * roc_auc_score(y, s))


def test_f1_max_and_iou_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5])
    target = np.array([1, 0, 1, 0, 1, 0])
    # thresholds: .9 tp1 fp0 F1=2/4 ; .8 tp1 fp1 F1=2/5 ; .7 tp2 fp1 F1=4/6 ; .6 tp2 fp2 F1=4/7 ;
    # .5 tp3 fp3 F1=6/9  -> max 2/3 at 0.7 first (argmax keeps the first, the higher threshold)
    f1, thr, iou = M.f1_max(scores, target)
    assert f1 == pytest.approx(2 / 3)
    assert thr == pytest.approx(0.7)
    assert iou == pytest.approx(2 / (2 + 1 + 1))  # tp / (tp + fp + fn)
    out = M.localization_metrics(scores.reshape(2, 3), target.reshape(2, 3))
    assert out["f1_max"] == pytest.approx(200 / 3) and out["iou"] == pytest.approx(50.0)
    assert out["positive_pixels"] == 3


def test_f1_max_matches_bruteforce_and_sklearn():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(1)
    s = np.round(rng.random(400), 2)  # many ties
    y = rng.random(400) < s
    best = (0.0, None, None)
    for t in np.unique(s)[::-1]:  # highest threshold first: ties keep it
        pred = s >= t
        tp = (pred & y).sum()
        f1 = 2 * tp / (pred.sum() + y.sum())
        if f1 > best[0]:
            best = (f1, t, tp / (pred | y).sum())
    f1, thr, iou = M.f1_max(s, y)
    assert f1 == pytest.approx(best[0]) and thr == pytest.approx(best[1]) and iou == pytest.approx(best[2])
    precision, recall, _ = precision_recall_curve(y, s)
    assert f1 == pytest.approx(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-300)))


def test_errors_name_argument():
    with pytest.raises(ValueError, match="y_pred"):
        M.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="targets"):
        M.pixel_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="relevant"):
        M.retrieval_recall(np.zeros((2, 2)), np.zeros((2, 3), bool))


def test_mean_std():
    assert M.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert M.mean_std([5.0]) == (5.0, 0.0)


def test_chance_levels():
    y = [2, 2, 2, 5, 7, 7]
    ch = M.chance_levels(y, 4)  # 4 candidate classes, one of them without test images
    assert ch["uniform"] == pytest.approx(25.0) and ch["majority_acc"] == pytest.approx(50.0)
    assert ch["majority_class"] == 2 and ch["classes"] == 4 and ch["n"] == 6
    # what the trivial classifiers really score
    assert M.accuracy(y, [2] * 6) == pytest.approx(ch["majority_acc"])
    rng = np.random.default_rng(0)
    guesses = rng.choice([2, 5, 7, 9], size=(300, 6))  # the mean of 300 draws: standard error about 1 point
    assert np.mean([M.mean_class_accuracy(y, g) for g in guesses]) == pytest.approx(ch["uniform"], abs=3.0)
    with pytest.raises(ValueError, match="n_classes"):
        M.chance_levels(y, 0)


def test_f1_iou_at_a_given_threshold_and_the_all_positive_baseline():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5])
    target = np.array([1, 0, 1, 0, 1, 0])
    f1, iou = M.f1_iou_at(scores, target, 0.75)  # predicted: .9 .8 -> tp 1, fp 1, fn 2
    assert f1 == pytest.approx(100 * 2 / 5) and iou == pytest.approx(100 * 1 / 4)
    # the lowest threshold predicts every pixel: exactly the all-positive baseline
    b = M.all_positive_baseline(int(target.sum()), target.size)
    assert M.f1_iou_at(scores, target, scores.min()) == pytest.approx((b["f1"], b["iou"]))
    assert b["pixel_auroc"] == 50.0 and b["positive_rate"] == pytest.approx(50.0)
    assert M.pixel_auroc(np.zeros(6), target) == pytest.approx(b["pixel_auroc"])  # a constant score
    # the real fixture's 32.58 % positive test pixels: F1 about 49.14 without looking at any image
    b = M.all_positive_baseline(3258, 10000)
    assert b["f1"] == pytest.approx(49.14, abs=0.01) and b["iou"] == pytest.approx(32.58)
    with pytest.raises(ValueError, match="positive"):
        M.all_positive_baseline(0, 10)


def test_retrieval_chance_is_the_mean_recall_of_random_rankings():
    rng = np.random.default_rng(3)
    rel = rng.random((12, 9)) < 0.2
    rel[0] = False  # a query without a relevant item is left out, as in retrieval_recall
    ch = M.retrieval_chance(rel)
    runs = [M.retrieval_recall(rng.random(rel.shape), rel) for _ in range(3000)]
    for k in (1, 5, 10):
        assert ch[f"R@{k}"] == pytest.approx(np.mean([r[f"R@{k}"] for r in runs]), abs=1.0)
    assert ch["R@10"] == pytest.approx(100.0)  # 9 items: every query hits at 10


def test_macc_equals_sklearn_balanced_accuracy_on_random_labels():
    """The numpy mAcc is scikit-learn's balanced accuracy, including classes absent from the predictions and
    predicted classes absent from the truth (left out)."""
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    absent = {"from_pred": 0, "from_true": 0}
    for n, n_true, n_pred in ((7, 5, 3), (50, 13, 13), (300, 25, 30), (40, 3, 25)):
        y_true, y_pred = rng.integers(0, n_true, n), rng.integers(0, n_pred, n)
        absent["from_pred"] += bool(set(y_true) - set(y_pred))
        absent["from_true"] += bool(set(y_pred) - set(y_true))
        with warnings.catch_warnings():  # "y_pred contains classes not in y_true"
            warnings.simplefilter("ignore", UserWarning)
            expected = 100 * balanced_accuracy_score(y_true, y_pred)
        assert M.mean_class_accuracy(y_true, y_pred) == pytest.approx(expected, abs=1e-9)
    assert absent["from_pred"] and absent["from_true"]
