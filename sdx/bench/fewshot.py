"""Task 3, zero- and few-shot: zero-shot per prompt level; for k shots x seeds, support sets drawn from train
with the builder's own rule, then a linear probe and the training-free Tip-Adapter, each with its
hyper-parameters selected on validation; mean +- std over seeds per k."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from sdx import metrics as M
from sdx.bench import probe
from sdx.bench.data import column
from sdx.bench.models import BenchClip
from sdx.data.builder import shot_indices

if TYPE_CHECKING:
    from sdx.bench.tasks import Benchmark

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
TIP_ALPHA_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
TIP_BETA_GRID = (1.0, 2.0, 3.5, 5.5, 7.0, 10.0)
ZS_SCALE = 100.0  # CLIP's logit scale on the zero-shot term of Tip-Adapter


def support_sets(train_ds, shots: Sequence[int], seeds: Sequence[int]) -> dict[tuple[int, int], list[int]]:
    """{(k, seed): rows of ``train_ds``} of the builder's k-shot draw (sdx.data.builder.shot_indices, the rule of
    load_steeldefectx(shots=k, seed=seed); nested across k for one seed)."""
    names, labels = column(train_ds, "image_name"), [int(x) for x in column(train_ds, "label")]
    return {(k, seed): sorted(shot_indices(labels, names, k, seed)[0]) for seed in seeds for k in shots}


def checked_supports(bench: Benchmark) -> dict[tuple[int, int], list[int]]:
    """The support sets of the run, each checked disjoint from validation and test and recorded in the results."""
    train = bench.ds["train"]
    train_names = column(train, "image_name")
    held = set(column(bench.ds["validation"], "image_name")) | set(column(bench.ds["test"], "image_name"))
    supports = support_sets(train, bench.shots, bench.seeds)
    for (k, seed), rows in supports.items():
        names = [train_names[r] for r in rows]
        leak = sorted(set(names) & held)
        if leak:
            raise RuntimeError(f"support set k={k} seed={seed} contains validation/test images: {leak[:5]}")
        bench.support_sets.append({"k": k, "seed": seed, "split": "train", "image_names": names})
    return supports


@dataclass
class EvalSplits:
    """What every support set of one model is evaluated on: candidate classes, validation and test embeddings,
    labels and zero-shot (T0 prompt) logits."""

    classes: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    zs_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    zs_test: np.ndarray


def tip_adapter(xs: np.ndarray, ys: np.ndarray, ev: EvalSplits) -> dict:
    """Tip-Adapter (training-free): logits = zero-shot + alpha * exp(-beta (1 - f F_s^T)) L_s, with F_s / L_s the
    support embeddings / one-hot labels; (alpha, beta) chosen by validation accuracy over TIP_BETA_GRID x
    TIP_ALPHA_GRID (ties keep the first in grid order). Returns the test prediction, alpha, beta, val_acc."""
    pos = {int(c): i for i, c in enumerate(ev.classes)}
    onehot = np.zeros((len(ys), len(ev.classes)), dtype=np.float32)
    onehot[np.arange(len(ys)), [pos[int(y)] for y in ys]] = 1.0
    aff_val = ev.x_val @ xs.T
    best = None
    for beta in TIP_BETA_GRID:
        cache_val = np.exp(-beta * (1.0 - aff_val)) @ onehot
        for alpha in TIP_ALPHA_GRID:
            acc = M.accuracy(ev.y_val, ev.classes[np.argmax(ev.zs_val + alpha * cache_val, axis=1)])
            if best is None or acc > best[0]:
                best = (acc, alpha, beta)
    acc, alpha, beta = best
    cache_test = np.exp(-beta * (1.0 - ev.x_test @ xs.T)) @ onehot
    return {"pred": ev.classes[np.argmax(ev.zs_test + alpha * cache_test, axis=1)], "alpha": alpha, "beta": beta,
            "val_acc": acc}


def _one_support(bench: Benchmark, enc: BenchClip, k: int, seed: int, xs, ys, ev: EvalSplits) -> dict[str, dict]:
    """Both methods on one support set: {method: run record}; selections are recorded on the benchmark."""
    out = {}
    sel = {"task": "task3", "model": enc.label, "k": k, "seed": seed}
    if len(np.unique(ys)) >= 2:
        fit = probe.linear_probe(xs, ys, ev.x_val, ev.y_val)
        out["linear_probe"] = {"seed": seed, **M.classification_metrics(ev.y_test, probe.predict(fit, ev.x_test)),
                               "C": fit.C, "val_acc": fit.val_acc, "converged": fit.converged}
        bench.select(**sel, method="linear_probe", name="C", value=fit.C, grid=list(probe.LP_C_GRID),
                     score=fit.val_acc, metric="acc")
    tip = tip_adapter(xs, ys, ev)
    out["tip_adapter"] = {"seed": seed, **M.classification_metrics(ev.y_test, tip["pred"]),
                          "alpha": tip["alpha"], "beta": tip["beta"], "val_acc": tip["val_acc"]}
    for name, grid in (("alpha", TIP_ALPHA_GRID), ("beta", TIP_BETA_GRID)):
        bench.select(**sel, method="tip_adapter", name=name, value=tip[name], grid=list(grid),
                     score=tip["val_acc"], metric="acc")
    return out


def summarize(runs: dict[str, dict[int, list[dict]]]) -> dict:
    """{method: {str(k): acc / mAcc mean and std over seeds, the seeds, the runs}}."""
    out: dict[str, dict] = {}
    for method, per_k in runs.items():
        out[method] = {}
        for k in sorted(per_k):
            (am, asd), (mm, msd) = M.mean_std([r["acc"] for r in per_k[k]]), M.mean_std([r["macc"] for r in per_k[k]])
            out[method][str(k)] = {"acc_mean": am, "acc_std": asd, "macc_mean": mm, "macc_std": msd,
                                   "seeds": [r["seed"] for r in per_k[k]], "runs": per_k[k]}
    return out


def few_shot(bench: Benchmark, enc: BenchClip, supports: dict[tuple[int, int], list[int]]) -> dict:
    test, val, train = bench.split("test"), bench.split("validation"), bench.split("train")
    union_rows = sorted({r for rows in supports.values() for r in rows})
    union_emb = bench.cache.images(enc, train, union_rows)
    row_pos = {r: i for i, r in enumerate(union_rows)}
    cands = np.asarray(bench.candidates())
    w_t0, _ = bench.zero_shot.class_embeddings(enc, "t0", cands)
    x_test, x_val = bench.cache.images(enc, test), bench.cache.images(enc, val)
    ev = EvalSplits(classes=cands, x_val=x_val, y_val=val.labels, zs_val=ZS_SCALE * x_val @ w_t0.T,
                    x_test=x_test, y_test=test.labels, zs_test=ZS_SCALE * x_test @ w_t0.T)
    runs: dict[str, dict[int, list[dict]]] = {"linear_probe": {}, "tip_adapter": {}}
    for (k, seed), rows in tqdm(sorted(supports.items()), desc=f"few-shot [{enc.label}]",
                                disable=not bench.progress, leave=False):
        xs, ys = union_emb[[row_pos[r] for r in rows]], train.labels[rows]
        for method, record in _one_support(bench, enc, k, seed, xs, ys, ev).items():
            runs[method].setdefault(k, []).append(record)
    return summarize(runs)


def run(bench: Benchmark) -> dict:
    test, val = bench.split("test"), bench.split("validation")
    cands = bench.candidates()
    supports = checked_supports(bench)
    out = {}
    for enc in bench.encoders():
        img = bench.cache.images(enc, test)
        res: dict[str, Any] = {"zero_shot": {lv: bench.zero_shot.evaluate(enc, img, test.labels, lv, cands)
                                             for lv in bench.levels}}
        if supports and len(val.keys) == 0:  # nothing to select on: never select on test
            res["few_shot_skipped"] = ("the validation split is empty (validation_fraction 0): C, alpha and beta "
                                       "can only be selected on validation")
        elif supports:
            res["few_shot"] = few_shot(bench, enc, supports)
        out[enc.label] = res
    return out
