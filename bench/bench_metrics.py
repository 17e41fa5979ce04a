#!/usr/bin/env python
"""Library or hand-written: the two metric computations of the benchmark where the choice is about speed.

In ONE process, each pair interleaved (A, B, A, B, ...; best of --rounds):

1. pixel AUROC + F1-max + IoU: sdx.metrics.localization_metrics (two value sorts + searchsorted) vs
   scikit-learn's roc_auc_score + precision_recall_curve, on the real fixture's test masks as targets (every
   pixel of every test image with a mask, and the first --pixels of them) with noisy scores; values compared;
2. the linear probe of task 3 over the C grid: sdx.bench.probe (one LogisticRegression per C, one BLAS thread)
   vs the joint L-BFGS fit of all C at once that the evaluator used before (kept here as the reference) and vs
   LogisticRegression with the default thread pool; 13 classes, k in --shots x 3 seeds, embedding sizes
   --dims; each compared with the fully converged fit (max_iter 20000, tol 1e-12): test predictions that differ;
3. the validation accuracies task 3's selections compute (per model: 5 k x 3 seeds x (5 C + 36 Tip-Adapter
   pairs) = 615 calls on the real fixture's 220 validation labels): sdx.metrics.accuracy (numpy) vs
   scikit-learn's accuracy_score;
4. the test mAcc of the few-shot grid (per model: 5 methods x 5 k x 3 seeds = 75 calls on the real fixture's
   test labels, random predictions): sdx.metrics.mean_class_accuracy (numpy) vs scikit-learn's
   balanced_accuracy_score.

Example::

    OMP_NUM_THREADS=2 python bench/bench_metrics.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_curve, roc_auc_score
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's sdx, not an installed one

from sdx import metrics as M
from sdx.bench import probe
from sdx.bench.data import ImageSet
from sdx.data.builder import load_steeldefectx


def best_of(rounds: int, *fns):
    """Best wall time of each function over ``rounds`` interleaved calls, and each one's last result."""
    times, results = [[] for _ in fns], [None] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - start)
    return [min(t) for t in times], results


def sklearn_pixel_metrics(scores, targets) -> dict:
    auroc = roc_auc_score(targets, scores)
    precision, recall, _ = precision_recall_curve(targets, scores)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=precision + recall > 0)
    return {"pixel_auroc": 100 * auroc, "f1_max": 100 * float(f1[:-1].max())}


def pixel_part(data_dir: str, n_small: int, rounds: int) -> list[dict]:
    masks = [m for m in ImageSet.from_dataset("test", load_steeldefectx(data_dir)["test"]).masks() if m is not None]
    targets = np.concatenate([m.reshape(-1) for m in masks])
    scores = (np.random.default_rng(0).normal(size=targets.size) + 0.5 * targets).astype(np.float32)
    rows = []
    for n in (min(n_small, targets.size), targets.size):
        s, y = scores[:n], targets[:n]
        (t_ours, t_lib), (ours, lib) = best_of(rounds, partial(M.localization_metrics, s, y),
                                               partial(sklearn_pixel_metrics, s, y))
        rows.append({"pixels": n, "images_with_mask": len(masks), "ours_s": t_ours, "sklearn_s": t_lib,
                     "sklearn_over_ours": t_lib / t_ours,
                     "auroc_diff": abs(ours["pixel_auroc"] - lib["pixel_auroc"]),
                     "f1_max_diff": abs(ours["f1_max"] - lib["f1_max"])})
    return rows


def joint_lbfgs_grid(x, y, Cs, max_iter: int = 100):
    """The previous fit: sum over C of C-scaled multinomial L2 objectives, one L-BFGS-B run, analytic gradient."""
    classes, yi = np.unique(y, return_inverse=True)
    X = np.asarray(x, dtype=np.float64)
    G, D, K = len(Cs), X.shape[1], len(classes)
    onehot = np.eye(K)[yi]
    inv_c, n_w = 1.0 / np.asarray(Cs, dtype=np.float64), G * D * K

    def loss_grad(theta):
        W, b = theta[:n_w].reshape(G, D, K), theta[n_w:].reshape(G, K)
        z = np.matmul(X, W) + b[:, None, :]
        z -= z.max(axis=2, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
        loss = -(logp * onehot).sum() + 0.5 * float((inv_c * (W ** 2).sum(axis=(1, 2))).sum())
        d = np.exp(logp) - onehot
        return loss, np.concatenate([(np.matmul(X.T, d) + inv_c[:, None, None] * W).ravel(), d.sum(axis=1).ravel()])

    with threadpool_limits(1):
        res = minimize(loss_grad, np.zeros(n_w + G * K), jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "gtol": 1e-6})
    W, b = res.x[:n_w].reshape(G, D, K), res.x[n_w:].reshape(G, K)
    return lambda xt: classes[np.argmax(np.einsum("nd,gdk->gnk", xt, W) + b[:, None, :], axis=2)]


def probe_problems(dim: int, shots, n_classes: int = 13, seeds=(1, 2, 3)):
    rng = np.random.default_rng(dim)
    centers = rng.normal(size=(n_classes, dim))
    xt = centers[np.repeat(np.arange(n_classes), 20)] + rng.normal(scale=2.0, size=(20 * n_classes, dim))
    xt /= np.linalg.norm(xt, axis=1, keepdims=True)
    for k in shots:
        for _ in seeds:
            y = np.repeat(np.arange(n_classes), k)
            x = centers[y] + rng.normal(scale=2.0, size=(len(y), dim))
            yield x / np.linalg.norm(x, axis=1, keepdims=True), y, xt


def fit_ours(problems, grid):
    return [[probe.fit_logistic(x, y, C)[0].predict(xt) for C in grid] for x, y, xt in problems]


def fit_joint(problems, grid):
    return [list(joint_lbfgs_grid(x, y, grid)(xt)) for x, y, xt in problems]


def fit_default_threads(problems, grid):
    return [[LogisticRegression(C=C, max_iter=probe.MAX_ITER, tol=probe.TOL).fit(x, y).predict(xt) for C in grid]
            for x, y, xt in problems]


def probe_part(dims, shots, rounds: int) -> list[dict]:
    grid = probe.LP_C_GRID
    warnings.simplefilter("ignore")  # ConvergenceWarning of the default-pool variant and the reference fits
    rows = []
    for dim in dims:
        problems = list(probe_problems(dim, shots))
        ref = [[LogisticRegression(C=C, max_iter=20000, tol=1e-12).fit(x, y).predict(xt) for C in grid]
               for x, y, xt in problems]
        (t_ours, t_joint, t_pool), preds = best_of(rounds, partial(fit_ours, problems, grid),
                                                   partial(fit_joint, problems, grid),
                                                   partial(fit_default_threads, problems, grid))
        differ = [sum(int((p[i][g] != ref[i][g]).sum()) for i in range(len(problems)) for g in range(len(grid)))
                  for p in preds]
        rows.append({"dim": dim, "fits": len(problems) * len(grid), "predictions": sum(len(p[2]) for p in problems)
                     * len(grid), "ours_s": t_ours, "joint_lbfgs_s": t_joint, "default_threads_s": t_pool,
                     "ours_over_joint": t_ours / t_joint, "default_threads_over_ours": t_pool / t_ours,
                     "differ_from_converged": dict(zip(("ours", "joint_lbfgs", "default_threads"), differ))})
    return rows


def accuracy_part(rounds: int, calls: int = 615, n: int = 220, n_classes: int = 13) -> dict:
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, n_classes, n), rng.integers(0, n_classes, n)) for _ in range(calls)]
    (t_ours, t_lib), (ours, lib) = best_of(rounds, lambda: [M.accuracy(t, p) for t, p in pairs],
                                           lambda: [100 * accuracy_score(t, p) for t, p in pairs])
    return {"calls": calls, "labels": n, "ours_s": t_ours, "sklearn_s": t_lib, "sklearn_over_ours": t_lib / t_ours,
            "max_diff": float(np.max(np.abs(np.subtract(ours, lib))))}


def macc_part(data_dir: str, rounds: int, calls: int = 75) -> dict:
    labels = np.asarray(load_steeldefectx(data_dir)["test"]["label"])
    rng = np.random.default_rng(0)
    preds = [rng.choice(labels, labels.size) for _ in range(calls)]
    warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
    (t_ours, t_lib), (ours, lib) = best_of(rounds, lambda: [M.mean_class_accuracy(labels, p) for p in preds],
                                           lambda: [100 * balanced_accuracy_score(labels, p) for p in preds])
    return {"calls": calls, "labels": int(labels.size), "classes": int(np.unique(labels).size), "ours_s": t_ours,
            "sklearn_s": t_lib, "sklearn_over_ours": t_lib / t_ours,
            "max_diff": float(np.max(np.abs(np.subtract(ours, lib))))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = ROOT.parent / "shared" / "data" / "steeldefectx-real-subset"
    p.add_argument("--data_dir", default=str(default_data) if default_data.is_dir() else "synthetic")
    p.add_argument("--pixels", type=int, default=2_000_000, help="size of the smaller pixel problem")
    p.add_argument("--dims", default="128,512", help="embedding sizes of the probe problems")
    p.add_argument("--shots", default="1,2,4,8,16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", default="pixels,probe,accuracy,macc", help="which comparisons to run")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    out = {}
    if "pixels" in parts:
        out["pixel_metrics"] = pixel_part(args.data_dir, args.pixels, args.rounds)
    if "probe" in parts:
        out["linear_probe"] = probe_part([int(d) for d in args.dims.split(",")],
                                         [int(k) for k in args.shots.split(",")], args.rounds)
    if "accuracy" in parts:
        out["selection_accuracy"] = accuracy_part(args.rounds)
    if "macc" in parts:
        out["fewshot_macc"] = macc_part(args.data_dir, args.rounds)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
