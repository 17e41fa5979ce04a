"""The linear probe of task 3: multinomial L2 logistic regression (scikit-learn) on normalised image
embeddings, one fit per C of the grid, C chosen by validation accuracy."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import ThreadpoolController

from sdx import metrics as M

LP_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
MAX_ITER = 100  # scikit-learn's default
TOL = 1e-6
# the process's thread-pool libraries found once: a threadpool_limits call scans them anew (3 ms each with torch
# loaded, 0.35 s of a 6.5 s few-shot grid in a profile)
_POOLS = ThreadpoolController()


def one_blas_thread():
    """Context manager: BLAS (and OpenMP) on one thread. Small matrices: one BLAS thread is 4.4x faster than the
    default pool at 512 dims (bench/bench_metrics.py)."""
    return _POOLS.limit(limits=1)


@dataclass
class ProbeFit:
    model: LogisticRegression
    C: float
    val_acc: float
    converged: bool


def fit_logistic(x: np.ndarray, y: np.ndarray, C: float) -> tuple[LogisticRegression, bool]:
    """(LogisticRegression(C) fitted on ``x``, ``y``, whether L-BFGS converged within MAX_ITER iterations).

    Objective C * sum_i CE_i + 0.5 ||W||^2 (bias not penalised); multinomial for three or more classes, the
    binary model for two. A fit stopped at MAX_ITER is used as it is and reported as not converged."""
    model = LogisticRegression(C=C, max_iter=MAX_ITER, tol=TOL)
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # k = 1 has one support image per class by design, not a regression target
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        model.fit(np.asarray(x, dtype=np.float64), np.asarray(y))
    return model, bool(np.max(model.n_iter_) < MAX_ITER)


def linear_probe(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                 grid: Sequence[float] = LP_C_GRID) -> ProbeFit:
    """The fit whose C gives the best validation accuracy (ties keep the first C in grid order)."""
    best = None
    for C in grid:
        model, converged = fit_logistic(x, y, C)
        acc = M.accuracy(y_val, model.predict(np.asarray(x_val, dtype=np.float64)))
        if best is None or acc > best.val_acc:
            best = ProbeFit(model=model, C=C, val_acc=acc, converged=converged)
    return best


def predict(fit: ProbeFit, x: np.ndarray) -> np.ndarray:
    return fit.model.predict(np.asarray(x, dtype=np.float64))
