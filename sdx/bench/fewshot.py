"""Task 3, zero- and few-shot: zero-shot per prompt level; for k shots x seeds, support sets drawn from train with
the builder's own rule, then five methods on the cached image embeddings (zero-shot with the model's own text
level, the linear probe, Tip-Adapter, Tip-Adapter-F and the CLIP-Adapter of sdx.bench.adapters), every
hyper-parameter selected on validation (the carve-out, or an N-shot draw from it); mean +- std over seeds per k."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from sdx import metrics as M
from sdx.bench import adapters as A
from sdx.bench import probe
from sdx.bench.data import column
from sdx.bench.models import BenchClip
from sdx.data.builder import shot_indices
from sdx.data.levels import LEVELS
from sdx.models.clip import get_logit_scale

if TYPE_CHECKING:
    from sdx.bench.tasks import Benchmark

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
METHODS = ("zero_shot", "linear_probe", "tip_adapter", "tip_adapter_f", "clip_adapter")


def draws(names: Sequence[str], labels: Sequence[int], ks: Sequence[int], seeds: Sequence[int]
          ) -> dict[tuple[int, int], list[int]]:
    """{(k, seed): rows} of the builder's k-shot draw (sdx.data.builder.shot_indices, the rule of
    load_steeldefectx(shots=k, seed=seed); nested across k for one seed) over a split given by its image names and
    labels."""
    labels = [int(x) for x in labels]
    return {(k, seed): sorted(shot_indices(labels, list(names), k, seed)[0]) for seed in seeds for k in ks}


def support_sets(train_ds, shots: Sequence[int], seeds: Sequence[int]) -> dict[tuple[int, int], list[int]]:
    """{(k, seed): rows of ``train_ds``} of the builder's k-shot draw (nested across k for one seed)."""
    return draws(column(train_ds, "image_name"), column(train_ds, "label"), shots, seeds)


def support_union(supports: dict[tuple[int, int], list[int]]) -> list[int]:
    """The train rows of every support set, sorted (each image encoded once for the whole grid)."""
    return sorted({r for rows in supports.values() for r in rows})


def validation_sets(bench: Benchmark) -> dict[int, list[int]] | None:
    """{seed: rows of the validation split} of the strict protocol (--fewshot_validation N: the builder's N-shot
    draw from validation, per seed); None for the default protocol (the whole carve-out)."""
    if not bench.fewshot_validation:
        return None
    val = bench.split("validation")
    drawn = draws(val.image_names, val.labels.tolist(), [bench.fewshot_validation], bench.seeds)
    return {seed: rows for (_, seed), rows in drawn.items()}


def checked_supports(bench: Benchmark) -> dict[tuple[int, int], list[int]]:
    """The support sets of the run, each checked disjoint from the validation images its selections use and from
    test, and recorded in the results (with those validation images under the strict protocol). Disjoint by name;
    an image whose bytes equal a held-out image's under another name (a fault of the data) is recorded in
    ``same_bytes_as_held_out`` (the support's) or the validation record's ``same_bytes_as_test``."""
    train = bench.ds["train"]
    train_names = column(train, "image_name")
    val, test = bench.split("validation"), set(column(bench.ds["test"], "image_name"))
    val_sets = validation_sets(bench)
    held = set(column(bench.ds["validation"], "image_name")) | test
    supports = support_sets(train, bench.shots, bench.seeds)
    train_keys, test_keys = (bench.split("train").keys, set(bench.split("test").keys)) if supports else ([], set())
    for (k, seed), rows in supports.items():
        names = [train_names[r] for r in rows]
        val_rows = val_sets[seed] if val_sets else range(len(val.keys))
        val_names = [val.image_names[r] for r in val_rows]
        leak = sorted(set(names) & held) + sorted(set(val_names) & (test | set(names)))
        if leak:
            raise RuntimeError(f"support set k={k} seed={seed} overlaps validation/test images: {leak[:5]}")
        held_keys = test_keys | {val.keys[r] for r in val_rows}
        record = {"k": k, "seed": seed, "split": "train", "image_names": names,
                  "same_bytes_as_held_out": [train_names[r] for r in rows if train_keys[r] in held_keys],
                  "validation": {"split": "validation", "images": len(val_names),
                                 "same_bytes_as_test": [val.image_names[r] for r in val_rows
                                                        if val.keys[r] in test_keys]}}
        if val_sets:
            record["validation"]["image_names"] = val_names
        bench.support_sets.append(record)
    return supports


def text_level(enc: BenchClip) -> tuple[str, str]:
    """(level, why): the class texts of the zero-shot terms and the CLIP-Adapter classifier are those of the
    model's own training level (T0-T4); T0 for a model without one (unknown, or trained on mixed levels)."""
    if enc.level in LEVELS:
        return enc.level, f"the model's training level ({enc.level.upper()})"
    return "t0", f"T0: the model has no single training level ({enc.level or 'unknown'})"


@dataclass
class Context:
    """What every cell of one model shares: candidate classes, the class text of the model's level, the
    validation and test embeddings (labels as class ids) and the model's logit scale."""

    classes: np.ndarray
    text: np.ndarray
    text_info: dict
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    logit_scale: float

    def positions(self, labels) -> np.ndarray:
        pos = {int(c): i for i, c in enumerate(self.classes)}
        return np.asarray([pos[int(y)] for y in labels], dtype=np.int64)

    def scores(self, pred_positions: np.ndarray) -> dict:
        return score(self.y_test, self.classes[pred_positions])


def score(y_true: np.ndarray, pred: np.ndarray) -> dict:
    """Test Acc and mAcc of one few-shot run (macro-F1 left out: its scikit-learn call was a tenth of the grid's
    time, and the few-shot report shows Acc and mAcc only)."""
    return {"acc": M.accuracy(y_true, pred), "macc": M.mean_class_accuracy(y_true, pred), "n": int(len(y_true))}


def context(bench: Benchmark, enc: BenchClip) -> Context:
    cands = np.asarray(bench.candidates())
    level, why = text_level(enc)
    text, info = bench.zero_shot.class_embeddings(enc, level, cands)
    if text is None:  # a sample level without any caption: T0, said so
        level, why = "t0", f"T0: {info.get('unavailable')}"
        text, info = bench.zero_shot.class_embeddings(enc, "t0", cands)
    val, test = bench.split("validation"), bench.split("test")
    return Context(classes=cands, text=text, text_info={"level": level, "why": why, "source": info.get("source")},
                   x_val=bench.cache.images(enc, val), y_val=val.labels, x_test=bench.cache.images(enc, test),
                   y_test=test.labels, logit_scale=float(get_logit_scale(enc.base).detach()))


@dataclass
class Cell:
    """One (k, seed): the support embeddings and labels, and the validation rows its selections use."""

    k: int
    seed: int
    xs: np.ndarray
    ys: np.ndarray
    val_rows: np.ndarray


def _select(bench: Benchmark, enc: BenchClip, cell: Cell, method: str, score: float, **chosen) -> None:
    """Record the selections of one method on one cell: ``chosen`` = {name: (value, grid)}."""
    for name, (value, grid) in chosen.items():
        bench.select(task="task3", model=enc.label, k=cell.k, seed=cell.seed, method=method, name=name,
                     value=value, grid=list(grid), score=score, metric="acc", validation_images=len(cell.val_rows))


def _probe_and_tip(bench: Benchmark, enc: BenchClip, ctx: Context, cell: Cell) -> dict[str, dict]:
    """Linear probe, Tip-Adapter and Tip-Adapter-F on one cell: {method: run record}."""
    out, base = {}, {"seed": cell.seed}
    x_val, y_val = ctx.x_val[cell.val_rows], ctx.y_val[cell.val_rows]
    if len(np.unique(cell.ys)) >= 2:
        fit = probe.linear_probe(cell.xs, cell.ys, x_val, y_val)
        out["linear_probe"] = {**base, **score(ctx.y_test, probe.predict(fit, ctx.x_test)),
                               "C": fit.C, "val_acc": fit.val_acc, "converged": fit.converged}
        _select(bench, enc, cell, "linear_probe", fit.val_acc, C=(fit.C, probe.LP_C_GRID))
    ys, yv = ctx.positions(cell.ys), ctx.positions(y_val)
    values = A.one_hot(ys, len(ctx.classes))
    tip = A.tip_adapter(cell.xs, values, ctx.text, x_val, yv)
    tip_f = A.tip_adapter_f(cell.xs, ys, values, ctx.text, x_val, yv, init_alpha=tip.alpha, init_beta=tip.beta,
                            seed=cell.seed)
    for method, fit in (("tip_adapter", tip), ("tip_adapter_f", tip_f)):
        chosen = {"alpha": (fit.alpha, A.TIP_ALPHA_GRID), "beta": (fit.beta, A.TIP_BETA_GRID)}
        if fit.epoch:
            chosen["epoch"] = (fit.epoch, range(1, A.TIP_F_EPOCHS + 1))
        out[method] = {**base, **ctx.scores(fit.predict(ctx.x_test, values, ctx.text)),
                       **{name: value for name, (value, _) in chosen.items()}, "val_acc": fit.val_acc}
        _select(bench, enc, cell, method, fit.val_acc, **chosen)
    return out


def _clip_adapters(bench: Benchmark, enc: BenchClip, ctx: Context, cells: list[Cell]) -> list[dict]:
    """The CLIP-Adapter of every cell of one k (trained together: sdx.bench.adapters.fit_clip_adapters)."""
    groups = [A.Group(x=c.xs, y=ctx.positions(c.ys), x_val=ctx.x_val[c.val_rows],
                      y_val=ctx.positions(ctx.y_val[c.val_rows]), seed=c.seed) for c in cells]
    fits = A.fit_clip_adapters(groups, ctx.text, logit_scale=ctx.logit_scale)
    out = []
    for cell, fit in zip(cells, fits):
        pred = A.predict_positions(fit, ctx.x_test, ctx.text)
        out.append({"seed": cell.seed, **ctx.scores(pred), "ratio": fit.ratio, "epoch": fit.epoch,
                    "val_acc": fit.val_acc})
        _select(bench, enc, cell, "clip_adapter", fit.val_acc, ratio=(fit.ratio, A.FEWSHOT_RECIPE.ratios),
                epoch=(fit.epoch, range(1, A.FEWSHOT_RECIPE.epochs + 1)))
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


def few_shot(bench: Benchmark, enc: BenchClip, supports: dict[tuple[int, int], list[int]]) -> tuple[dict, dict]:
    """(the five methods' summaries, the text used) for one model over every (k, seed)."""
    train = bench.split("train")
    ctx = context(bench, enc)
    union_rows = support_union(supports)
    union_emb = bench.cache.images(enc, train, union_rows)
    row_pos = {r: i for i, r in enumerate(union_rows)}
    val_sets = validation_sets(bench)
    zero_shot = ctx.scores(np.argmax(ctx.x_test @ ctx.text.T, axis=1))
    runs: dict[str, dict[int, list[dict]]] = {m: {} for m in METHODS}
    for k in tqdm(bench.shots, desc=f"few-shot [{enc.label}]", disable=not bench.progress, leave=False):
        cells = [Cell(k=k, seed=s, xs=union_emb[[row_pos[r] for r in supports[(k, s)]]],
                      ys=train.labels[supports[(k, s)]],
                      val_rows=np.asarray(val_sets[s] if val_sets else np.arange(len(ctx.y_val))))
                 for s in bench.seeds]
        # the probe's and Tip-Adapter's numpy products are small: Tip-Adapter's search and test predictions over 15
        # cells ran 1.4-4.1x faster on one BLAS thread in three interleaved rounds (load 9 on 2 cores)
        with probe.one_blas_thread():
            for cell in cells:
                runs["zero_shot"].setdefault(k, []).append({"seed": cell.seed, **zero_shot})
                for method, record in _probe_and_tip(bench, enc, ctx, cell).items():
                    runs[method].setdefault(k, []).append(record)
        runs["clip_adapter"][k] = _clip_adapters(bench, enc, ctx, cells)
    return summarize({m: r for m, r in runs.items() if r}), ctx.text_info


def protocol(bench: Benchmark) -> dict:
    """How the few-shot selections were made (for the report)."""
    if bench.fewshot_validation:
        return {"validation": f"{bench.fewshot_validation}-shot draw", "strict": True,
                "text": (f"every hyper-parameter selected on {bench.fewshot_validation} validation images per class "
                         "(the builder's draw from the validation split, per seed, disjoint from the support)")}
    return {"validation": "carve-out", "strict": False,
            "text": "every hyper-parameter selected on the whole validation split (the carve-out of official train)"}


def run(bench: Benchmark) -> dict:
    test, val = bench.split("test"), bench.split("validation")
    cands = bench.candidates()
    supports = checked_supports(bench)
    grid = [(val, None), (bench.split("train"), support_union(supports))] if supports and len(val.keys) else []
    out: dict[str, Any] = {}
    for enc in bench.encoders():
        img = bench.cache.images_of(enc, [(test, None), *grid])[0]  # the images the task needs, as one pass
        res: dict[str, Any] = {"zero_shot": {lv: bench.zero_shot.evaluate(enc, img, test.labels, lv, cands)
                                             for lv in bench.levels}}
        if supports and len(val.keys) == 0:  # nothing to select on: never select on test
            res["few_shot_skipped"] = ("the validation split is empty (validation_fraction 0): C, alpha, beta, "
                                       "ratio and epochs can only be selected on validation")
        elif supports:
            res["few_shot"], res["few_shot_text"] = few_shot(bench, enc, supports)
            res["few_shot_protocol"] = protocol(bench)
        out[enc.label] = res
    return out
