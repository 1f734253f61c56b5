"""A converged linear probe: multinomial logistic regression on centred and scaled frozen embeddings.

This is how linear probes are fitted in the transfer literature (Kornblith et al. 2019; the CLIP
linear-probe protocol; the "LP" of LP-FT, Kumar et al. 2022): centre and scale the features, fit an
L2-regularised multinomial logistic regression to convergence with L-BFGS, and choose the L2
strength on held-out data from a log grid (the selection split, or cross-validation over train +
selection when the selection split is small: :data:`CV_BELOW`). Epochs of AdamW with label smoothing and dropout on
raw features stop wherever the schedule ends, with a regularisation nobody chose on held-out data
(0.96-0.99 train accuracy after 10 epochs in ``benchmarks/linear_probe.py``, where the probe fits).

Why scikit-learn's ``LogisticRegression(solver="lbfgs")`` rather than ``torch.optim.LBFGS``:
its stopping rule (projected-gradient tolerance plus ``n_iter_``) tells whether the fit
converged, it works in float64 (the weakly regularised end of the grid is ill-conditioned), it
leaves the intercept unpenalised, it supports class weights directly, and it is deterministic on
the CPU for a fixed thread count. Its price is a float64 copy of the training rows, which bounds
the rows it can take (:data:`PROBE_MAX_BYTES`); larger sets train with the streaming mini-batch
path instead (``transferkit.features.headfit``).

The scaling (one scale for all features by default, :data:`SCALINGS`) is folded into the linear layer, so the
saved model is a plain ``Linear`` on raw embeddings: with z = (x - mean) / std and logits W z + b,

    W' = W / std,    b' = b - W' mean,    logits = W' x + b'.

Label smoothing and dropout do not apply here: the L2 strength, chosen on held-out data, is the
probe's only regulariser (both exist to stop a mini-batch optimiser short of over-fitting, which a
regularised convex optimum does not need).

>>> fit = fit_linear_probe(train_x, train_y, selection=(val_x, val_y))
>>> fit.l2, fit.logits(test_x).argmax(1)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import nn

from transferkit.features import lbfgs
from transferkit.features.lbfgs import Score, accuracy as _accuracy, expand as _expand, nll as _nll
from transferkit.features.lbfgs import score_by_folds, score_on_split, solve
# the solver's settings and helpers, under the names they had here (benchmarks/defaults_cv.py uses them); patch
# transferkit.features.lbfgs, not these copies, to change the solver
from transferkit.features.lbfgs import MAX_ITER, TOL, fold_splits as _fold_splits, sweep as _sweep  # noqa: F401

__all__ = ["PROBE_MAX_BYTES", "L2_GRID", "SCALINGS", "CV_BELOW", "FOLDS", "SELECT_RULE", "ProbeFit", "fit_linear_probe",
           "fold_standardisation", "probe_fits_in_memory"]

# The solver works on a float64 copy of the standardised training rows (rows x dim x 8 bytes); above
# this size a full-batch fit would not fit the memory the toolkit promises (the 1M-row cache trains
# under 2 GB, about 1 GB of which is torch itself), so larger sets use the streaming mini-batch path.
# At 1280-d this is 104,857 rows (views count as rows).
PROBE_MAX_BYTES = 1 << 30

# L2 strength per training row (objective: mean cross-entropy + l2/2 ||W||^2), half-decade steps.
# Per-row rather than scikit-learn's C (= 1 / (l2 x rows)) so one grid means the same for 100 and
# 100,000 rows. Every fold of every benchmark pool converges within MAX_ITER at every strength (1e-6
# included; per-feature scaling, and the global scale checked once by hand), and the pools' out-of-fold
# log loss is lowest inside the grid (hymenoptera and flowers at 3e-2, imbalanced flowers at 1e-1, NEU at
# 1e-4; at 1 flowers' is 0.436 against 0.233; benchmarks/results/defaults_cv.md). With one global scale
# NEU's choice reached the weak end (1e-6) in 2 of 5 outer folds.
L2_GRID = tuple(float(v) for v in np.logspace(-6, 0, 13))

# The strength is chosen by the lowest held-out log loss (NLL), the proper score the probe minimises and
# smooth in the strength; the caller's score (accuracy, balanced accuracy on imbalanced data) breaks ties.
# Re-derived by nested cross-validation on train + selection of hymenoptera, flowers, imbalanced flowers and NEU
# (`.venv/bin/python benchmarks/defaults_cv.py`, benchmarks/results/defaults_cv.md;
# paired 95% intervals over the pools' images): choosing by the score instead raised the held-out NLL on
# flowers (+0.029 [+0.019, +0.037]) and imbalanced flowers (+0.116 [+0.072, +0.163]), with no accuracy gain
# anywhere (flowers -0.003 [-0.008, +0.002]), and changed nothing clear on hymenoptera and NEU. Kept.
SELECT_RULE = "nll"
RULES = ("nll", "score")
SELECT_BY = {"nll": "lowest held-out log loss (NLL); ties: the score, then the stronger L2",
             "score": "highest held-out score; ties: the log loss (NLL), then the stronger L2"}

# A selection split with fewer images than this does not choose the strength alone: stratified k-fold
# cross-validation over train + selection does (every image of both scored once, out of fold; the fold
# scores go into head_fit). Derived in benchmarks/defaults_cv.py by simulating selection splits of n pool
# images: from n = 300 on, on every set, the strength a split chooses costs at most 0.5 accuracy points
# and max(0.01, 5%) of the log loss against the pool's own choice in 90% of draws; below it the log-loss
# cost exceeds that on flowers (n = 150: 0.015 nats) and imbalanced flowers (n = 200: 0.049). In nested
# cross-validation the rule's choice at imbalanced flowers' 113 selection images beat the split alone by
# 0.039 [0.032, 0.046] nats. Its price is time: 5 folds + 1 refit instead of one sweep (timed once by hand on
# flowers' 2,100 training rows: 35 s instead of 7 s, shared 2 cores).
CV_BELOW = 300
FOLDS = 5

# Feature scalings (centred first): "global" divides all features by one scale, the root-mean-square std,
# keeping the embedding's own geometry; "feature" standardises every feature (the textbook probe). Passing
# both lets the held-out data choose. Re-derived by nested cross-validation (benchmarks/results/defaults_cv.md):
# one global scale lowered NEU's held-out log loss (-0.0053 [-0.0098, -0.0014]) and was not worse anywhere
# (hymenoptera -0.017 [-0.038, +0.001], flowers -0.003 [-0.012, +0.006], imbalanced flowers -0.009
# [-0.021, +0.004]; accuracy +0.1 to +2.1 points, no interval excluding 0). Choosing between the two passed
# the same rule with equal or worse figures at twice the fits, so the default is the global scale alone (the
# rows the figures under "Measured results" were made with used "feature" until the benchmarks are re-run).
# Both fold into the Linear the same way.
SCALINGS = ("global",)
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
    refit_on: str = "train"  # the rows of the final fit: "train" or "train + selection"

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
        rows = "standardised" if self.scaling == "feature" else "centred, globally scaled"
        return (f"{what} (L-BFGS logistic regression on {self.train_rows} {rows} rows, l2 {self.l2:.3g} "
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
                "selected_on": self.selected_on, "folds": self.folds, "refit_on": self.refit_on, "train_rows": self.train_rows,
                "converged": self.converged, "iterations": self.iterations, "max_iter": self.max_iter,
                **({"convergence": self.convergence_note} if not self.converged else {}),
                "train_loss": self.train_loss, "train_accuracy": self.train_accuracy, "fit_s": round(self.seconds, 3),
                "grid": self.grid}


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
    refit_with_selection: bool = False,
) -> ProbeFit:
    """Fit the converged linear probe and choose its L2 strength (and feature scaling) on held-out rows.

    Args:
        features: (rows, dim) training embeddings, any float dtype (augmented views are extra rows).
        labels: (rows,) class indices.
        selection: (features, labels) of the split that chooses the L2 strength; a test split must never
            be passed. With at least ``cv_below`` images the strength is chosen on it. With fewer, by
            stratified ``folds``-fold cross-validation over train + selection (one held-out score per
            image of both, instead of a choice decided by one or two of a few dozen images; see
            :data:`CV_BELOW`). ``None``: cross-validation on the training rows (callers without a
            held-out split, e.g. the recommender).
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
        refit_with_selection: the chosen probe is fitted on train + selection rows instead of train alone.
            Only for a caller that uses the selection split for nothing afterwards (in a run it also chooses
            the epoch of a later phase, the calibration temperature and the logit adjustment, which need it
            held out); the selection split's figures are then in-sample.

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
    fits: list[lbfgs.Solved] = []
    used_folds = 0
    for scaling in scalings:
        data.use(scaling)
        if holdout:
            found, solved = score_on_split(data.x, y, data.apply(selection[0]), selection[1], l2_grid, class_weight,
                                           score, n_classes)
            fits += solved
        else:
            x, pool_y, pool_groups = data.x, y, train_groups
            if n_sel:  # the selection images join the pool as one more group each
                x = np.vstack([data.x, data.apply(selection[0])])
                pool_y = np.concatenate([y, np.asarray(selection[1], dtype=np.int64)])
                pool_groups = np.concatenate([train_groups, train_groups.max() + 1 + np.arange(n_sel)])
            found, used_folds = score_by_folds(x, pool_y, pool_groups, l2_grid, class_weight, score, n_classes, folds)
        candidates += [{"scaling": scaling, **c} for c in found]
    best = max(range(len(candidates)), key=lambda i: _rank(candidates[i], rule))
    l2, scaling = candidates[best]["l2"], candidates[best]["scaling"]
    data.use(scaling)
    where = f"selection split (n={n_sel})" if holdout else f"{used_folds}-fold cross-validation on train" + (
        f" + selection ({len(y) + n_sel} rows, as the selection split has {n_sel} < {cv_below} images)" if n_sel else "")
    fit_x, fit_y = data.x, y
    if refit_with_selection and n_sel:
        fit_x = np.vstack([data.x, data.apply(selection[0])])  # standardised by the training rows' statistics
        fit_y = np.concatenate([y, np.asarray(selection[1], dtype=np.int64)])
    if holdout and len(fit_y) == len(y):
        final = fits[best]  # fitted on train already
    else:
        with threadpool_limits(1):
            final = solve(fit_x, fit_y, l2, class_weight)
    if n_sel and (len(fit_y) > len(y) or not holdout):
        where += "; refitted on train + selection" if len(fit_y) > len(y) else "; refitted on train"
    weight, bias = _full_width(final.model, n_classes)
    folded_w, folded_b = fold_standardisation(weight, bias, data.mean, data.std)
    train_probs = _expand(final.model.predict_proba(fit_x), final.model.classes_, n_classes)
    return ProbeFit(
        weight=folded_w, bias=folded_b, mean=data.mean, std=data.std, l2=l2, C=1.0 / (l2 * len(fit_y)), scaling=scaling,
        grid=sorted(candidates, key=lambda c: (c["scaling"], c["l2"])), selected_on=where, train_rows=len(fit_y),
        train_loss=_nll(fit_y, train_probs, np.arange(n_classes)), train_accuracy=_accuracy(fit_y, train_probs),
        seconds=time.perf_counter() - started, estimator=final.model, rule=rule, folds=0 if holdout else used_folds,
        converged=final.converged, iterations=final.iterations, stopped=final.stopped, max_iter=lbfgs.MAX_ITER,
        refit_on="train + selection" if len(fit_y) > len(y) else "train",
    )


def _rank(candidate: dict[str, Any], rule: str) -> tuple:
    """Higher is better: the rule's criterion, the other one, then the stronger L2 and per-feature scaling."""
    nll, sc = -candidate["nll"], candidate["score"]
    first = (nll, sc) if rule == "nll" else (sc, nll)
    return (*first, candidate["l2"], candidate["scaling"] == "feature")


def _full_width(model: LogisticRegression, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, dim) weights and biases in label order; absent classes can never win the argmax."""
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # scikit-learn stores a binary problem as one row: logits (-z/2, z/2) give the same softmax
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((n_classes, coef.shape[1]))
    bias = np.full(n_classes, -1e4)
    weight[model.classes_], bias[model.classes_] = coef, intercept
    return weight, bias
