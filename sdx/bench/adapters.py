"""Adapters trained on cached, L2-normalised CLIP image features (nothing is encoded here): the CLIP-Adapter
(Gao et al.), Tip-Adapter and Tip-Adapter-F (Zhang et al.), every hyper-parameter selected on a validation set.
One CLIP-Adapter trainer serves the few-shot grid (task 3) and the Tx-Ty adapter rows (task 2). The recipes and
where they differ from the released code: docs/benchmark.md ("Adapter recipes")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sdx import metrics as M
from sdx.bench.models import single_thread
from sdx.models.clip import ClipAdapter
from sdx.train.losses import class_text_loss, contrastive_loss, scale_from_logit_scale

ZS_SCALE = 100.0  # the zero-shot term of Tip-Adapter(-F): 100 * f W^T, as in the released code
TIP_ALPHA_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
TIP_BETA_GRID = (1.0, 2.0, 3.5, 5.5, 7.0, 10.0)
LOSSES = ("ce", "bidirectional", "captions")


@dataclass(frozen=True)
class AdapterRecipe:
    """How a bank of CLIP-Adapters (one per residual ratio) is trained on cached features.

    loss: "ce" = cross-entropy of the images over the class texts (the released CLIP-Adapter code);
    "bidirectional" = image->class and class->image cross-entropy (sdx.train.losses.class_text_loss, the paper's
    task-2 objective with class-level text); "captions" = class-aware symmetric InfoNCE against each image's own
    caption (sdx.train.losses.contrastive_loss, sample-level text)."""

    ratios: tuple[float, ...] = (0.2, 0.4, 0.6)  # 0.2: the released code; 0.6: the paper, fine-grained data
    reduction: int = 4
    epochs: int = 50
    batch_size: int | None = None   # None: the whole training set in one batch
    optimizer: str = "adamw"        # "adamw" (eps 1e-4, weight decay 0.01) or "adam"
    lr: float = 1e-2
    schedule: str = "cosine"        # "cosine" over all steps, or "constant"
    loss: str = "ce"


# few-shot (task 3): one full batch of the support per step (at most a few hundred cached vectors), AdamW with
# Tip-Adapter-F's eps and cosine schedule, lr 1e-2 (1e-3 moved a fresh adapter too little in 50 steps: 23 % vs
# 91 % test accuracy on separable clusters whose class texts it had to learn); epoch and ratio chosen on validation
FEWSHOT_RECIPE = AdapterRecipe()
# Tx-Ty rows (task 2): the paper's adapter recipe (Adam 1e-4, 20 epochs, constant) as train_clip.py --recipe paper,
# batch 32; ratio and epoch chosen on validation
TXTY_RECIPE = AdapterRecipe(epochs=20, batch_size=32, optimizer="adam", lr=1e-4, schedule="constant",
                            loss="bidirectional")
TIP_F_EPOCHS, TIP_F_BATCH, TIP_F_LR, TIP_F_EPS = 20, 256, 1e-3, 1e-4


@dataclass
class AdapterFit:
    """The kept CLIP-Adapter, its ratio and epoch (selected on validation) and the validation accuracy."""

    adapter: ClipAdapter
    ratio: float
    epoch: int
    val_acc: float

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Adapted, re-normalised features of cached (normalised) features ``x``."""
        with torch.no_grad(), single_thread():
            return F.normalize(self.adapter(_t(x)), dim=-1).numpy()


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)


def _optimizer(params, recipe: AdapterRecipe, steps: int):
    if recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=recipe.lr, eps=1e-4)
    elif recipe.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=recipe.lr)
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}: use adamw or adam")
    if recipe.schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    if recipe.schedule == "constant":
        return opt, None
    raise ValueError(f"unknown schedule {recipe.schedule!r}: use cosine or constant")


class AdapterBank(torch.nn.Module):
    """M CLIP-Adapters of one shape as stacked weights, each with its own ratio and input: adapter m computes
    exactly what ``export(m)`` (a sdx.models.clip.ClipAdapter) computes (tests check it). Training the ratio grid
    of every seed of a k as one bank takes one set of batched kernels per step instead of one per adapter: on
    these tiny matrices the launches, not the arithmetic, are the cost (the seeds of a k as one bank: 1.2x to 1.4x
    faster than one seed at a time in four runs of bench/bench_fewshot.py)."""

    def __init__(self, adapters: Sequence[ClipAdapter]):
        super().__init__()
        self.dim, self.reduction = adapters[0].embed_dim, adapters[0].reduction
        self.ratios = tuple(a.alpha for a in adapters)
        self.w1 = torch.nn.Parameter(torch.stack([a.fc[0].weight.detach().T for a in adapters]))  # [M, D, H]
        self.w2 = torch.nn.Parameter(torch.stack([a.fc[2].weight.detach().T for a in adapters]))  # [M, H, D]
        self.register_buffer("ratio", torch.tensor(self.ratios).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[M, B, D] -> [M, B, D]: ratio * ReLU(ReLU(x W1) W2) + (1 - ratio) * x per adapter."""
        hidden = torch.relu(torch.bmm(x, self.w1))
        return self.ratio * torch.relu(torch.bmm(hidden, self.w2)) + (1.0 - self.ratio) * x

    def export(self, m: int, state: tuple[torch.Tensor, torch.Tensor] | None = None) -> ClipAdapter:
        """Adapter m (or the weights ``state`` = (w1, w2) saved for it) as a ClipAdapter."""
        w1, w2 = state if state is not None else (self.w1[m], self.w2[m])
        out = ClipAdapter(self.dim, self.reduction, self.ratios[m])
        with torch.no_grad():
            out.fc[0].weight.copy_(w1.T)
            out.fc[2].weight.copy_(w2.T)
        return out.eval()


@dataclass
class Group:
    """One CLIP-Adapter training set (cached normalised features ``x``, class positions ``y``, ``captions`` for
    the "captions" loss), the validation set its selections are made on, and its seed (initialisation, order)."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    seed: int
    captions: np.ndarray | None = None


def _loss(recipe: AdapterRecipe, out: torch.Tensor, y: torch.Tensor, class_text, captions, logit_scale):
    """The sum over the bank's adapters of each one's mean loss on its batch (``out`` [M, B, D], ``y`` [M, B],
    ``captions`` [M, B, D])."""
    if recipe.loss == "ce":
        logits = scale_from_logit_scale(logit_scale) * F.normalize(out, dim=-1) @ class_text.T
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / out.shape[1]
    if recipe.loss == "bidirectional":
        return sum(class_text_loss(o, class_text, t, logit_scale, gather=False) for o, t in zip(out, y))
    if recipe.loss == "captions":
        return sum(contrastive_loss(o, c, logit_scale, labels=t, gather=False) for o, t, c in zip(out, y, captions))
    raise ValueError(f"unknown adapter loss {recipe.loss!r}: use one of {', '.join(LOSSES)}")


def fit_clip_adapters(groups: Sequence[Group], class_text: np.ndarray, *, logit_scale: float,
                      recipe: AdapterRecipe = FEWSHOT_RECIPE, select_text: np.ndarray | None = None
                      ) -> list[AdapterFit]:
    """One CLIP-Adapter per group: for each group, one adapter per ratio of ``recipe.ratios`` is trained on the
    group's cached features against ``class_text`` (rows = class positions) or its captions; after every epoch
    each is scored on the group's validation set (argmax over ``select_text``, default ``class_text``) and the
    (ratio, epoch) with the best accuracy is kept (ties: the earlier epoch, then the first ratio in grid order).

    Groups of equal sizes train together as one AdapterBank (independent adapters, summed losses, one
    optimizer: the same result as training each alone); others one by one."""
    if len({(len(g.x), len(g.x_val)) for g in groups}) > 1:
        return [fit for g in groups for fit in fit_clip_adapters([g], class_text, logit_scale=logit_scale,
                                                                  recipe=recipe, select_text=select_text)]
    with single_thread():
        return _fit_bank(groups, class_text, logit_scale, recipe, select_text)


def _init_bank(groups: Sequence[Group], dim: int, recipe: AdapterRecipe) -> AdapterBank:
    adapters = []
    for g in groups:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(g.seed)
            adapters += [ClipAdapter(dim, recipe.reduction, ratio) for ratio in recipe.ratios]
    return AdapterBank(adapters)


def _fit_bank(groups, class_text, logit_scale, recipe, select_text) -> list[AdapterFit]:
    n_r = len(recipe.ratios)
    rep = lambda a: torch.repeat_interleave(_t(a) if a.dtype.kind == "f" else torch.as_tensor(a), n_r, dim=0)
    x, y = rep(np.stack([g.x for g in groups])), rep(np.stack([g.y for g in groups])).long()        # [M, n, ...]
    cap = rep(np.stack([g.captions for g in groups])) if recipe.loss == "captions" else None
    xv, yv = rep(np.stack([g.x_val for g in groups])), np.repeat(np.stack([g.y_val for g in groups]), n_r, axis=0)
    cls = _t(class_text)
    sel = cls if select_text is None else _t(select_text)
    n = x.shape[1]
    batch = recipe.batch_size or n
    steps_per_epoch = math.ceil(n / batch)
    bank = _init_bank(groups, x.shape[2], recipe)
    orders = [torch.Generator().manual_seed(g.seed) for g in groups]
    opt, sched = _optimizer(bank.parameters(), recipe, recipe.epochs * steps_per_epoch)
    rows = torch.arange(len(x)).view(-1, 1)
    best: list[tuple[float, int, tuple | None]] = [(-1.0, 0, None)] * len(x)
    for epoch in range(1, recipe.epochs + 1):
        perm = torch.repeat_interleave(torch.stack([torch.randperm(n, generator=o) for o in orders]), n_r, dim=0)
        for start in range(0, n, batch):
            idx = perm[:, start:start + batch]
            loss = _loss(recipe, bank(x[rows, idx]), y[rows, idx], cls, None if cap is None else cap[rows, idx],
                         logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        with torch.no_grad():
            pred = (bank(xv) @ sel.T).argmax(-1).numpy()
        for m, acc in enumerate(M.accuracy(t, p) for t, p in zip(yv, pred)):
            if acc > best[m][0]:
                best[m] = (acc, epoch, (bank.w1[m].detach().clone(), bank.w2[m].detach().clone()))
    fits = []
    for gi in range(len(groups)):
        m = gi * n_r + int(np.argmax([b[0] for b in best[gi * n_r:(gi + 1) * n_r]]))
        fits.append(AdapterFit(adapter=bank.export(m, best[m][2]), ratio=bank.ratios[m], epoch=best[m][1],
                               val_acc=best[m][0]))
    return fits


@dataclass
class TipFit:
    """Tip-Adapter(-F): cache keys, the selected alpha / beta (and epoch for -F) and the validation accuracy."""

    keys: np.ndarray
    alpha: float
    beta: float
    val_acc: float
    epoch: int | None = None

    def predict(self, x: np.ndarray, values: np.ndarray, class_text: np.ndarray) -> np.ndarray:
        """Class positions of ``x``: argmax of 100 f W^T + alpha exp(-beta (1 - f K^T)) L."""
        return np.argmax(tip_logits(x, self.keys, values, class_text, self.alpha, self.beta), axis=1)


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(y), n_classes), dtype=np.float32)
    out[np.arange(len(y)), np.asarray(y, dtype=np.int64)] = 1.0
    return out


def tip_logits(x, keys, values, class_text, alpha: float, beta: float):
    """Tip-Adapter logits (numpy or torch alike): 100 f W^T + alpha exp(-beta (1 - f K^T)) L."""
    cache = (-beta * (1.0 - x @ keys.T))
    cache = (np.exp(cache) if isinstance(cache, np.ndarray) else cache.exp()) @ values
    return ZS_SCALE * x @ class_text.T + alpha * cache


def search_alpha_beta(keys: np.ndarray, values: np.ndarray, class_text: np.ndarray, x_val: np.ndarray,
                      y_val: np.ndarray) -> tuple[float, float, float]:
    """(alpha, beta, validation accuracy): the best pair of TIP_ALPHA_GRID x TIP_BETA_GRID (ties keep the first in
    beta-major grid order)."""
    zs, aff = ZS_SCALE * x_val @ class_text.T, x_val @ keys.T
    best = (-1.0, TIP_ALPHA_GRID[0], TIP_BETA_GRID[0])
    for beta in TIP_BETA_GRID:
        cache = np.exp(-beta * (1.0 - aff)) @ values
        for alpha in TIP_ALPHA_GRID:
            acc = M.accuracy(y_val, np.argmax(zs + alpha * cache, axis=1))
            if acc > best[0]:
                best = (acc, alpha, beta)
    return best[1], best[2], best[0]


def tip_adapter(xs: np.ndarray, values: np.ndarray, class_text: np.ndarray, x_val: np.ndarray,
                y_val: np.ndarray) -> TipFit:
    """Training-free Tip-Adapter: keys = the support features; (alpha, beta) selected on validation."""
    alpha, beta, acc = search_alpha_beta(xs, values, class_text, x_val, y_val)
    return TipFit(keys=np.asarray(xs, dtype=np.float32), alpha=alpha, beta=beta, val_acc=acc)


def tip_adapter_f(xs: np.ndarray, ys: np.ndarray, values: np.ndarray, class_text: np.ndarray, x_val: np.ndarray,
                  y_val: np.ndarray, *, init_alpha: float, init_beta: float, seed: int,
                  epochs: int = TIP_F_EPOCHS) -> TipFit:
    """Tip-Adapter-F: the keys (initialised from the support features) fine-tuned with cross-entropy on the
    support, AdamW lr 1e-3 eps 1e-4, cosine over all steps, batch 256, alpha / beta fixed at their initial values;
    the epoch with the best VALIDATION accuracy is kept (the released script picks it on test), then (alpha, beta)
    are searched on validation with those keys."""
    with single_thread():
        return _tip_adapter_f(xs, ys, values, class_text, x_val, y_val, init_alpha, init_beta, seed, epochs)


def _tip_adapter_f(xs, ys, values, class_text, x_val, y_val, init_alpha, init_beta, seed, epochs) -> TipFit:
    keys = torch.nn.Parameter(_t(xs).clone())
    x_t, y_t, val_t, w = _t(xs), torch.as_tensor(np.asarray(ys), dtype=torch.long), _t(values), _t(class_text)
    xv = _t(x_val)
    opt = torch.optim.AdamW([keys], lr=TIP_F_LR, eps=TIP_F_EPS)
    steps = epochs * math.ceil(len(x_t) / TIP_F_BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    order = torch.Generator().manual_seed(seed)
    best = (-1.0, 0, keys.detach().clone())
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(x_t), generator=order)
        for start in range(0, len(x_t), TIP_F_BATCH):
            idx = perm[start:start + TIP_F_BATCH]
            loss = F.cross_entropy(tip_logits(x_t[idx], keys, val_t, w, init_alpha, init_beta), y_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            acc = M.accuracy(y_val, tip_logits(xv, keys, val_t, w, init_alpha, init_beta).argmax(1).numpy())
        if acc > best[0]:
            best = (acc, epoch, keys.detach().clone())
    tuned = best[2].numpy()
    alpha, beta, acc = search_alpha_beta(tuned, values, class_text, x_val, y_val)
    return TipFit(keys=tuned, alpha=alpha, beta=beta, val_acc=acc, epoch=best[1])


def predict_positions(fit: AdapterFit, x: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    """Class positions of cached features ``x`` through a fitted CLIP-Adapter (argmax over ``class_text``)."""
    return np.argmax(fit.transform(x) @ np.asarray(class_text).T, axis=1)
