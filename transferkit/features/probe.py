"""A converged linear probe: multinomial logistic regression on standardised frozen embeddings.

This is how linear probes are fitted in the transfer literature (Kornblith et al. 2019; the CLIP
linear-probe protocol; the "LP" of LP-FT, Kumar et al. 2022): standardise the features, fit an
L2-regularised multinomial logistic regression to convergence with L-BFGS, and choose the L2
strength on a selection split from a log grid. Epochs of AdamW with label smoothing and dropout on
raw features stop wherever the schedule ends, with a regularisation nobody chose on held-out data
(0.96-0.99 train accuracy after 10 epochs in ``benchmarks/linear_probe.py``, where the probe fits).

Why scikit-learn's ``LogisticRegression(solver="lbfgs")`` rather than ``torch.optim.LBFGS``:
its stopping rule (projected-gradient tolerance plus ``n_iter_``) tells whether the fit
converged, it works in float64 (the weakly regularised end of the grid is ill-conditioned), it
leaves the intercept unpenalised, it supports class weights directly, and it is deterministic on
the CPU for a fixed thread count. Its price is a float64 copy of the training rows, which bounds
the rows it can take (:data:`PROBE_MAX_BYTES`); larger sets train with the streaming mini-batch
path instead (``transferkit.features.headfit``).

Standardisation is folded into the linear layer, so the saved model is a plain ``Linear`` on raw
embeddings: with z = (x - mean) / std and logits W z + b,

    W' = W / std,    b' = b - W' mean,    logits = W' x + b'.

Label smoothing and dropout do not apply here: the L2 strength, chosen on held-out data, is the
probe's only regulariser (both exist to stop a mini-batch optimiser short of over-fitting, which a
regularised convex optimum does not need).

>>> fit = fit_linear_probe(train_x, train_y, selection=(val_x, val_y))
>>> fit.l2, fit.logits(test_x).argmax(1)
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits
from torch import nn

__all__ = ["PROBE_MAX_BYTES", "L2_GRID", "SCALINGS", "CV_BELOW", "FOLDS", "SELECT_RULE", "ProbeFit", "fit_linear_probe",
           "fold_standardisation", "probe_fits_in_memory"]

# The solver works on a float64 copy of the standardised training rows (rows x dim x 8 bytes); above
# this size a full-batch fit would not fit the memory the toolkit promises (the 1M-row cache trains
# under 2 GB, about 1 GB of which is torch itself), so larger sets use the streaming mini-batch path.
# At 1280-d this is 104,857 rows (views count as rows).
PROBE_MAX_BYTES = 1 << 30

# L2 strength per training row (objective: mean cross-entropy + l2/2 ||W||^2), half-decade steps.
# Per-row rather than scikit-learn's C (= 1 / (l2 x rows)) so one grid means the same for 100 and
# 100,000 rows. At 1e-6 the fits still converge within MAX_ITER on the benchmark sets; at 1 the selection
# score had fallen on every benchmark set (flowers 0.896 against 0.920 at the best strength), so the optimum
# lies inside the grid.
L2_GRID = tuple(float(v) for v in np.logspace(-6, 0, 13))

MAX_ITER = 1000
TOL = 1e-6  # L-BFGS projected-gradient tolerance on the mean loss (scikit-learn's 1e-4 stops early at small l2)
# The strength is chosen by the lowest held-out log loss (NLL); the caller's score breaks ties. Accuracy,
# and balanced accuracy more so, is a step function of the strength on a few hundred images, while the log
# loss is the proper score the probe itself minimises and is smooth in the strength. (The figures that first
# prompted this rule were read on report splits; benchmarks/defaults_cv.py re-derives it on cross-validation.)
SELECT_RULE = "nll"
RULES = ("nll", "score")
SELECT_BY = {"nll": "lowest held-out log loss (NLL); ties: the score, then the stronger L2",
             "score": "highest held-out score; ties: the log loss (NLL), then the stronger L2"}

# A selection split with fewer images than this does not choose the strength alone: stratified k-fold
# cross-validation over train + selection does (every image of both scored once, out of fold), and the probe
# is refitted on train only. Provisional value; benchmarks/defaults_cv.py derives it.
CV_BELOW = 200
FOLDS = 5

# Feature scalings: "feature" standardises every feature (the textbook probe, the default); "global" divides
# all by one scale, keeping the embedding's own geometry, in which L2 shrinks low-variance directions hardest.
# Passing both lets the selection split choose. Measured on the benchmark's report splits (224 px), neither
# won everywhere and choosing on the selection split picked the worse one on 2 of 3 sets, so the default is
# the standardised probe alone; both fold into the Linear the same way.
SCALINGS = ("feature",)
_MIN_STD = 1e-6  # a constant feature gets std 1 (it carries no information; dividing by ~0 would explode)


def probe_fits_in_memory(rows: int, dim: int, max_bytes: int | None = None) -> bool:
    """True when a full-batch fit on ``rows`` x ``dim`` embeddings stays within :data:`PROBE_MAX_BYTES`."""
    return rows * dim * 8 <= (PROBE_MAX_BYTES if max_bytes is None else max_bytes)


def fold_standardisation(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W', b') with ``W' x + b' == W ((x - mean) / std) + b`` for every x (see the module docstring)."""
    folded = weight / std[None, :]
    return folded, bias - folded @ mean


@dataclass
class ProbeFit:
    """The fitted probe: folded weights on raw embeddings, the chosen L2 strength and how it was chosen."""

    weight: np.ndarray  # (classes, dim) float64, folded: applies to raw embeddings
    bias: np.ndarray  # (classes,)
    mean: np.ndarray  # the standardisation that was folded in (kept for tests and inspection)
    std: np.ndarray
    l2: float  # chosen strength per row
    scaling: str  # "feature" (standardised) or "global" (one scale for all features)
    C: float  # the same in scikit-learn's convention, 1 / (l2 x rows)
    grid: list[dict[str, Any]]  # per candidate: l2, C, held-out score and NLL (per fold too), iterations, converged
    selected_on: str  # "selection split (n=...)" or "k-fold cross-validation on train (+ selection)"
    train_rows: int
    train_loss: float  # mean cross-entropy on the training rows at the chosen l2 (no penalty)
    train_accuracy: float
    seconds: float
    estimator: LogisticRegression = field(repr=False)  # fitted on standardised rows (unfolded)
    rule: str = "nll"  # what chose the strength (SELECT_RULE)
    folds: int = 0  # cross-validation folds that chose it (0: a held-out selection split did)
    converged: bool = True  # the final fit: L-BFGS met its tolerance (no ConvergenceWarning)
    iterations: int = 0
    stopped: str = ""  # the solver's reason when it did not converge
    max_iter: int = 1000

    @property
    def convergence_note(self) -> str | None:
        """None when the final fit converged, else what to tell the user (the run's line and report say it)."""
        if self.converged:
            return None
        if self.iterations >= self.max_iter:
            return f"did not converge in {self.max_iter} iterations"
        return f"did not converge (the solver stopped after {self.iterations} iterations: {self.stopped})"

    @property
    def selection_score(self) -> float:
        """The chosen candidate's score (the caller's metric) on the selection split (or cross-validated on train)."""
        return next(c["score"] for c in self.grid if c["l2"] == self.l2 and c["scaling"] == self.scaling)

    def describe(self) -> str:
        """One line for the run: what was fitted, how its strength was chosen, and whether it converged."""
        what = "converged linear probe" if self.converged else f"linear probe that {self.convergence_note}"
        by = "log loss" if self.rule == "nll" else "score"
        return (f"{what} (L-BFGS logistic regression on {self.train_rows} standardised rows, l2 {self.l2:.3g} "
                f"chosen by {by} on the {self.selected_on})")

    def logits(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        return x @ self.weight.T + self.bias

    def predict_proba(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        z = self.logits(features)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def load_into(self, linear: nn.Linear) -> None:
        """Copy the folded weights into ``linear`` (cast to its dtype)."""
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(self.weight).to(linear.weight))
            linear.bias.copy_(torch.from_numpy(self.bias).to(linear.bias))

    def linear(self) -> nn.Linear:
        layer = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        self.load_into(layer)
        return layer

    def record(self) -> dict[str, Any]:
        """What the run folder keeps: enough to see why this l2 was chosen."""
        return {"solver": "lbfgs (scikit-learn LogisticRegression, multinomial)",
                "l2": self.l2, "C": self.C, "scaling": self.scaling, "selected_by": SELECT_BY[self.rule],
                "selected_on": self.selected_on, "folds": self.folds, "train_rows": self.train_rows,
                "converged": self.converged, "iterations": self.iterations, "max_iter": self.max_iter,
                **({"convergence": self.convergence_note} if not self.converged else {}),
                "train_loss": self.train_loss, "train_accuracy": self.train_accuracy, "fit_s": round(self.seconds, 3),
                "grid": self.grid}


Score = Callable[[np.ndarray, np.ndarray], float]


def _accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(accuracy_score(labels, probs.argmax(axis=1)))


def _nll(labels: np.ndarray, probs: np.ndarray, classes: np.ndarray, class_weight: Any = None) -> float:
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


def _expand(probs: np.ndarray, present: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all ``n_classes`` (a class absent from the training rows gets 0)."""
    if len(present) == n_classes:
        return probs
    full = np.zeros((len(probs), n_classes))
    full[:, present] = probs
    return full


class _Standardised:
    """Training rows as one float64 copy, centred and scaled in place (the only large allocation).

    ``use("feature")``: every feature divided by its own std (standardisation). ``use("global")``:
    all divided by one number, the root-mean-square std, which keeps the features' relative scales.
    """

    def __init__(self, features: np.ndarray) -> None:
        x = np.array(features, dtype=np.float64)  # a copy: the caller's rows stay untouched
        self.mean = x.mean(axis=0)
        x -= self.mean
        feature_std = np.sqrt(np.einsum("ij,ij->j", x, x) / len(x))  # no temporary of the matrix's size
        feature_std[feature_std < _MIN_STD] = 1.0
        self.stds = {"feature": feature_std, "global": np.full_like(feature_std, np.sqrt((feature_std ** 2).mean()))}
        self.std = np.ones_like(feature_std)
        self.x = x

    def use(self, scaling: str) -> None:
        target = self.stds[scaling]
        if (self.std == 1.0).all():
            self.x /= target  # the first scaling: exactly (x - mean) / std
        else:
            self.x *= self.std / target
        self.std = target

    def apply(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.mean) / self.std


@dataclass
class _Solved:
    """One solver run: the model at one strength and whether L-BFGS converged."""

    l2: float
    model: LogisticRegression
    iterations: int
    converged: bool
    stopped: str  # why the solver stopped short ("" when it converged)


def _stop_reason(message: str) -> str:
    """scikit-learn's ConvergenceWarning text -> scipy's own reason (its second line), e.g. the iteration limit."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else "no reason given")


def _solve(x: np.ndarray, y: np.ndarray, l2: float, class_weight: Any) -> _Solved:
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
            stopped = _stop_reason(str(w.message))
        else:  # anything else is the caller's to see
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return _Solved(l2, model, int(np.max(model.n_iter_)), not stopped, stopped)


def _sweep(x: np.ndarray, y: np.ndarray, grid: Sequence[float], class_weight: Any) -> list[_Solved]:
    """One fit per l2 (strongest first), each from zero.

    No warm start along the grid: the solver stops on the gradient of the *new* objective, and at
    the weak end a warm start from the neighbouring optimum already meets the tolerance, so it would
    return the neighbour's weights after 0 iterations (observed). Cold starts make every candidate
    the same function of (rows, l2) whatever else is on the grid. One BLAS thread: the matrix products
    are small, and on a shared 2-core machine two threads made each iteration 5x slower (measured);
    it also keeps the fit bit-reproducible across machines with different core counts.
    """
    with threadpool_limits(1):
        return [_solve(x, y, l2, class_weight) for l2 in sorted(grid, reverse=True)]


def fit_linear_probe(
    features: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    selection: tuple[np.ndarray, Sequence[int] | np.ndarray] | None = None,
    *,
    n_classes: int | None = None,
    l2_grid: Sequence[float] = L2_GRID,
    class_weight: str | Mapping[int, float] | None = None,
    score: Score | None = None,
    folds: int = FOLDS,
    scalings: Sequence[str] = SCALINGS,
    groups: Sequence[int] | np.ndarray | None = None,
    cv_below: int = CV_BELOW,
    rule: str = SELECT_RULE,
) -> ProbeFit:
    """Fit the converged linear probe and choose its L2 strength (and feature scaling) on held-out rows.

    Args:
        features: (rows, dim) training embeddings, any float dtype (augmented views are extra rows).
        labels: (rows,) class indices.
        selection: (features, labels) of the split that chooses the L2 strength; a test split must never
            be passed. With at least ``cv_below`` images the strength is chosen on it. With fewer, by
            stratified ``folds``-fold cross-validation over train + selection (one held-out score per
            image of both, instead of a choice decided by one or two of a few dozen images; see
            :data:`CV_BELOW`); the final probe is then refitted on the training rows only, so the
            selection split stays held out for what it chooses afterwards (epochs of a later phase, the
            calibration temperature, logit adjustment). ``None``: cross-validation on the training
            rows, refitted on all of them (callers without a held-out split, e.g. the recommender).
        n_classes: width of the output (default: max label + 1); a class without training rows
            gets a zero weight row and a very negative bias.
        l2_grid: candidate strengths per row (see :data:`L2_GRID`).
        class_weight: ``None``, ``"balanced"`` or {class: weight}, as scikit-learn takes it.
        score: ``score(labels, probs) -> float``, higher is better (default accuracy): recorded for
            every candidate (per fold too) and the tie-break of the log-loss rule (see :data:`SELECT_BY`).
        folds: cross-validation folds (fewer when the smallest class has fewer images).
        scalings: candidate scalings, chosen with the strength (see :data:`SCALINGS`).
        groups: one id per training row; rows sharing an id (cached views of one image) stay in one fold.
        cv_below: selection images below which the strength is cross-validated (:data:`CV_BELOW`).
        rule: ``"nll"`` (:data:`SELECT_RULE`) or ``"score"`` (the score first, the log loss breaks ties).

    Returns:
        A :class:`ProbeFit` whose ``weight``/``bias`` apply to raw (unstandardised) embeddings.
    """
    started = time.perf_counter()
    y = np.asarray(labels, dtype=np.int64)
    n_classes = int(n_classes if n_classes is not None else y.max() + 1)
    score = score or _accuracy
    if len(np.unique(y)) < 2:
        raise ValueError("a linear probe needs training rows of at least two classes")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    data = _Standardised(features)
    n_sel = 0 if selection is None else len(selection[1])
    holdout = selection is not None and n_sel >= cv_below
    train_groups = np.arange(len(y)) if groups is None else np.asarray(groups, dtype=np.int64)
    candidates: list[dict[str, Any]] = []
    fits: list[_Solved] = []
    used_folds = 0
    for scaling in scalings:
        data.use(scaling)
        if holdout:
            found, solved = _score_on_split(data, y, selection, l2_grid, class_weight, score, n_classes)
            fits += solved
        else:
            x, pool_y, pool_groups = data.x, y, train_groups
            if n_sel:  # the selection images join the pool as one more group each
                x = np.vstack([data.x, data.apply(selection[0])])
                pool_y = np.concatenate([y, np.asarray(selection[1], dtype=np.int64)])
                pool_groups = np.concatenate([train_groups, train_groups.max() + 1 + np.arange(n_sel)])
            found, used_folds = _score_by_folds(x, pool_y, pool_groups, l2_grid, class_weight, score, n_classes, folds)
        candidates += [{"scaling": scaling, **c} for c in found]
    best = max(range(len(candidates)), key=lambda i: _rank(candidates[i], rule))
    l2, scaling = candidates[best]["l2"], candidates[best]["scaling"]
    data.use(scaling)
    if holdout:
        where, final = f"selection split (n={n_sel})", fits[best]
    else:
        pooled = (f" + selection ({len(y) + n_sel} rows, as the selection split has {n_sel} < {cv_below} images; "
                  "refitted on train)") if n_sel else ""
        where = f"{used_folds}-fold cross-validation on train{pooled}"
        with threadpool_limits(1):
            final = _solve(data.x, y, l2, class_weight)  # refitted on the training rows alone
    weight, bias = _full_width(final.model, n_classes)
    folded_w, folded_b = fold_standardisation(weight, bias, data.mean, data.std)
    train_probs = _expand(final.model.predict_proba(data.x), final.model.classes_, n_classes)
    return ProbeFit(
        weight=folded_w, bias=folded_b, mean=data.mean, std=data.std, l2=l2, C=1.0 / (l2 * len(y)), scaling=scaling,
        grid=sorted(candidates, key=lambda c: (c["scaling"], c["l2"])), selected_on=where, train_rows=len(y),
        train_loss=_nll(y, train_probs, np.arange(n_classes)), train_accuracy=_accuracy(y, train_probs),
        seconds=time.perf_counter() - started, estimator=final.model, rule=rule, folds=0 if holdout else used_folds,
        converged=final.converged, iterations=final.iterations, stopped=final.stopped, max_iter=MAX_ITER,
    )


def _rank(candidate: dict[str, Any], rule: str) -> tuple:
    """Higher is better: the rule's criterion, the other one, then the stronger L2 and per-feature scaling."""
    nll, sc = -candidate["nll"], candidate["score"]
    first = (nll, sc) if rule == "nll" else (sc, nll)
    return (*first, candidate["l2"], candidate["scaling"] == "feature")


def _candidate(l2: float, rows: int, sel_y: np.ndarray, probs: np.ndarray, score: Score, iterations: int,
               converged: bool, class_weight: Any = None) -> dict[str, Any]:
    return {"l2": l2, "C": 1.0 / (l2 * rows), "score": float(score(sel_y, probs)),
            "nll": _nll(sel_y, probs, np.arange(probs.shape[1]), class_weight), "iterations": iterations,
            "converged": converged}


def _score_on_split(data: _Standardised, y: np.ndarray, selection, grid, class_weight, score, n_classes):
    sel_x, sel_y = data.apply(selection[0]), np.asarray(selection[1], dtype=np.int64)
    fits = _sweep(data.x, y, grid, class_weight)
    candidates = []
    for fit in fits:
        probs = _expand(fit.model.predict_proba(sel_x), fit.model.classes_, n_classes)
        candidates.append(_candidate(fit.l2, len(y), sel_y, probs, score, fit.iterations, fit.converged, class_weight))
    return candidates, fits


def _fold_splits(y: np.ndarray, groups: np.ndarray, folds: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
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


def _score_by_folds(x: np.ndarray, y: np.ndarray, groups: np.ndarray, grid, class_weight, score, n_classes, folds):
    """Per candidate: the pooled out-of-fold NLL and score (every row scored once, by a fit that did not see
    it) and the same per fold, with the folds' iteration counts and convergence."""
    splits, folds = _fold_splits(y, groups, folds)
    probs = {l2: np.zeros((len(y), n_classes)) for l2 in grid}
    per_fold: dict[float, list[dict[str, Any]]] = {l2: [] for l2 in grid}
    classes = np.arange(n_classes)
    for fit_rows, held_rows in splits:
        for fit in _sweep(x[fit_rows], y[fit_rows], grid, class_weight):
            p = _expand(fit.model.predict_proba(x[held_rows]), fit.model.classes_, n_classes)
            probs[fit.l2][held_rows] = p
            per_fold[fit.l2].append({"nll": _nll(y[held_rows], p, classes, class_weight),
                                     "score": float(score(y[held_rows], p)), "iterations": fit.iterations,
                                     "converged": fit.converged})
    candidates = []
    for l2 in sorted(grid, reverse=True):
        runs = per_fold[l2]
        c = _candidate(l2, len(y), y, probs[l2], score, max(r["iterations"] for r in runs),
                       all(r["converged"] for r in runs), class_weight)
        c.update(fold_nll=[r["nll"] for r in runs], fold_score=[r["score"] for r in runs])
        candidates.append(c)
    return candidates, folds


def _full_width(model: LogisticRegression, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, dim) weights and biases in label order; absent classes can never win the argmax."""
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # scikit-learn stores a binary problem as one row: logits (-z/2, z/2) give the same softmax
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((n_classes, coef.shape[1]))
    bias = np.full(n_classes, -1e4)
    weight[model.classes_], bias[model.classes_] = coef, intercept
    return weight, bias
