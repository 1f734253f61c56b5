"""L-BFGS fits of the linear probe and their held-out scores (used by :mod:`transferkit.features.probe`).

One fit (:func:`solve`) records whether it converged: scikit-learn's ConvergenceWarning, raised when L-BFGS
stops at the iteration limit and also when its line search fails before it, is caught and recorded instead of
printed. A sweep fits every strength of a grid from zero; candidates are scored on a held-out split
(:func:`score_on_split`) or by stratified k-fold cross-validation (:func:`score_by_folds`, which keeps every
fold's figures).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

__all__ = ["MAX_ITER", "TOL", "Score", "Solved", "solve", "sweep", "score_on_split", "score_by_folds", "fold_splits",
           "accuracy", "nll", "expand"]

MAX_ITER = 1000
TOL = 1e-6  # L-BFGS projected-gradient tolerance on the mean loss (scikit-learn's 1e-4 stops early at small l2)

Score = Callable[[np.ndarray, np.ndarray], float]


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(accuracy_score(labels, probs.argmax(axis=1)))


def nll(labels: np.ndarray, probs: np.ndarray, classes: np.ndarray, class_weight: Any = None) -> float:
    """Mean log loss; with class weights the weighted mean (the objective the weighted probe minimises, so
    on imbalanced data the strength is chosen for the rare classes too, not for the majority alone)."""
    column = np.searchsorted(classes, labels)
    losses = -np.log(np.clip(probs[np.arange(len(labels)), column], 1e-12, 1.0))
    if class_weight == "balanced":  # scikit-learn's "balanced", on these labels
        present, counts = np.unique(labels, return_counts=True)
        class_weight = {int(c): len(labels) / (len(present) * n) for c, n in zip(present, counts)}
    if not isinstance(class_weight, Mapping):
        return float(losses.mean())
    w = np.array([class_weight.get(int(c), 1.0) for c in labels], dtype=np.float64)
    return float((w * losses).sum() / w.sum())


def expand(probs: np.ndarray, present: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all ``n_classes`` (a class absent from the training rows gets 0)."""
    if len(present) == n_classes:
        return probs
    full = np.zeros((len(probs), n_classes))
    full[:, present] = probs
    return full


@dataclass
class Solved:
    """One solver run: the model at one strength and whether L-BFGS converged."""

    l2: float
    model: LogisticRegression
    iterations: int
    converged: bool
    stopped: str  # why the solver stopped short ("" when it converged)


def stop_reason(message: str) -> str:
    """scikit-learn's ConvergenceWarning text -> scipy's own reason (its second line), e.g. the iteration limit."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else "no reason given")


def solve(x: np.ndarray, y: np.ndarray, l2: float, class_weight: Any) -> Solved:
    """One fit from zero. Converged means scikit-learn raised no ConvergenceWarning: L-BFGS stops short at
    the iteration limit, but also when its line search fails (before the limit), so ``n_iter_ < max_iter``
    alone is not the test. The warning is recorded here instead of printed (the run reports it)."""
    model = LogisticRegression(C=1.0 / (l2 * len(x)), solver="lbfgs", max_iter=MAX_ITER, tol=TOL, class_weight=class_weight)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y)
    stopped = ""
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            stopped = stop_reason(str(w.message))
        else:  # anything else is the caller's to see
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return Solved(l2, model, int(np.max(model.n_iter_)), not stopped, stopped)


def sweep(x: np.ndarray, y: np.ndarray, grid: Sequence[float], class_weight: Any) -> list[Solved]:
    """One fit per l2 (strongest first), each from zero.

    No warm start along the grid: the solver stops on the gradient of the *new* objective, and at
    the weak end a warm start from the neighbouring optimum already meets the tolerance, so it would
    return the neighbour's weights after 0 iterations (observed). Cold starts make every candidate
    the same function of (rows, l2) whatever else is on the grid. One BLAS thread: the matrix products
    are small, and on a shared 2-core machine two threads made each iteration 5x slower (measured);
    it also keeps the fit bit-reproducible across machines with different core counts.
    """
    with threadpool_limits(1):
        return [solve(x, y, l2, class_weight) for l2 in sorted(grid, reverse=True)]


def candidate(l2: float, rows: int, sel_y: np.ndarray, probs: np.ndarray, score: Score, iterations: int,
               converged: bool, class_weight: Any = None) -> dict[str, Any]:
    return {"l2": l2, "C": 1.0 / (l2 * rows), "score": float(score(sel_y, probs)),
            "nll": nll(sel_y, probs, np.arange(probs.shape[1]), class_weight), "iterations": iterations,
            "converged": converged}


def score_on_split(x: np.ndarray, y: np.ndarray, sel_x: np.ndarray, sel_y: np.ndarray, grid: Sequence[float],
                   class_weight: Any, score: Score, n_classes: int) -> tuple[list[dict[str, Any]], list[Solved]]:
    """Per candidate: its NLL and score on the held-out split (``sel_x`` standardised like ``x``), and the fits."""
    sel_y = np.asarray(sel_y, dtype=np.int64)
    fits = sweep(x, y, grid, class_weight)
    candidates = []
    for fit in fits:
        probs = expand(fit.model.predict_proba(sel_x), fit.model.classes_, n_classes)
        candidates.append(candidate(fit.l2, len(y), sel_y, probs, score, fit.iterations, fit.converged, class_weight))
    return candidates, fits


def fold_splits(y: np.ndarray, groups: np.ndarray, folds: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Stratified folds (seeded) that keep each group (an image's views) together; fewer folds than the
    smallest class has images would leave a fold without that class."""
    first = np.unique(groups, return_index=True)[1]
    counts = np.bincount(y[first])
    folds = max(2, min(folds, int(counts[counts > 0].min())))
    if len(first) == len(groups):
        splitter = StratifiedKFold(folds, shuffle=True, random_state=0)
        return list(splitter.split(np.zeros(len(y)), y)), folds
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=0)
    return list(splitter.split(np.zeros(len(y)), y, groups)), folds


def score_by_folds(x: np.ndarray, y: np.ndarray, groups: np.ndarray, grid: Sequence[float], class_weight: Any,
                   score: Score, n_classes: int, folds: int) -> tuple[list[dict[str, Any]], int]:
    """Per candidate: the pooled out-of-fold NLL and score (every row scored once, by a fit that did not see
    it) and the same per fold, with the folds' iteration counts and convergence."""
    splits, folds = fold_splits(y, groups, folds)
    probs = {l2: np.zeros((len(y), n_classes)) for l2 in grid}
    per_fold: dict[float, list[dict[str, Any]]] = {l2: [] for l2 in grid}
    classes = np.arange(n_classes)
    for fit_rows, held_rows in splits:
        for fit in sweep(x[fit_rows], y[fit_rows], grid, class_weight):
            p = expand(fit.model.predict_proba(x[held_rows]), fit.model.classes_, n_classes)
            probs[fit.l2][held_rows] = p
            per_fold[fit.l2].append({"nll": nll(y[held_rows], p, classes, class_weight),
                                     "score": float(score(y[held_rows], p)), "iterations": fit.iterations,
                                     "converged": fit.converged})
    candidates = []
    for l2 in sorted(grid, reverse=True):
        runs = per_fold[l2]
        c = candidate(l2, len(y), y, probs[l2], score, max(r["iterations"] for r in runs),
                       all(r["converged"] for r in runs), class_weight)
        c.update(fold_nll=[r["nll"] for r in runs], fold_score=[r["score"] for r in runs])
        candidates.append(c)
    return candidates, folds
