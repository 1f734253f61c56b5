"""Likely label issues: out-of-fold probabilities of a linear head on embeddings, ranked by cleanlab.

Confident learning (Northcutt et al. 2021) needs *out-of-sample* predicted probabilities: a model that saw
an image's label while training predicts that label back and hides the error. So every image gets its
probabilities from a multinomial logistic regression fitted on the other folds of a seeded stratified
k-fold split, on L2-normalised then standardised embeddings (the standardisation fitted on the training
folds only). cleanlab then does the rest: ``cleanlab.filter.find_label_issues`` decides which images are
flagged (its default ``prune_by_noise_rate``: per pair of classes, as many images as the estimated joint of
given and true labels says are off-diagonal) and ``cleanlab.rank.get_label_quality_scores`` scores every
image (lower: the given label is less likely right).

The L2 strength matters more than anything else here: with noisy labels a weakly regularised head is
over-confident in both directions and confident learning flags too many images (simulated on flowers'
embeddings with 5% of the labels moved: at scikit-learn's default C=1 it flagged 377 images for 150 errors,
precision 0.36; at the strength chosen as below, 194, precision 0.66). The strength is therefore chosen from
:data:`L2_GRID` by the out-of-fold log loss against the *given* labels, a proper score that needs no clean
labels. ``benchmarks/audit_noise.py`` measures the whole check on real planted errors.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["FOLDS", "L2_GRID", "RANK_BY", "OutOfFold", "LabelIssues", "out_of_fold_probs", "find_label_issues",
           "issue_rows"]

logger = logging.getLogger(__name__)

FOLDS = 5
# L2 strength per training row (objective: mean cross-entropy + l2/2 ||W||^2; scikit-learn's C = 1 / (l2 rows)),
# so one grid means the same for 100 and 10,000 images. Half-decade steps; the strengths chosen on flowers (0.1
# with 5% of the labels moved, 0.03 without) lie inside it.
L2_GRID = tuple(float(v) for v in np.logspace(-2.5, 0.5, 7))
# cleanlab's ranking score. "self_confidence" (the probability of the given label) also ranks images that fit
# no class at all low, which "normalized_margin" (given minus best other) can miss; in the simulation above both
# ranked the moved labels alike (at C=0.01, 0.78 and 0.73 of the top 150 were moved).
RANK_BY = "self_confidence"
MAX_ITER = 2000
# The fits run with one BLAS thread: a (2,400 x 1,280) x 5-class L-BFGS step is too small for threads to pay
# for their synchronisation, and on a busy 2-core machine they cost far more (one flowers fold: 0.3 s with
# one thread, 2.2 s with two, while other jobs ran).
BLAS_THREADS = 1
# Standardisation divides each feature by its training-fold std, but by no less than this share of the median
# feature's: at small input sizes many embedding features are (nearly) always zero, and a held-out image where
# one is not would get a z-score in the thousands and a probability of 1e-24 for its true class. On the 64 px
# synthetic test folder the floor takes the out-of-fold log loss from 0.96 to 0.15; on flowers (224 px, no
# feature below 0.23 of the median) it moved one image out of the flagged list of the simulation above.
STD_FLOOR = 0.3


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold class probabilities and how they were made."""

    probs: np.ndarray  # (n, classes), every row predicted by a head that never saw that image
    folds: int
    l2: float  # the chosen per-row L2 strength
    log_loss: dict[float, float]  # out-of-fold log loss against the given labels, per strength tried
    seed: int


@dataclass(frozen=True)
class LabelIssues:
    """cleanlab's verdict on every image: scores for all, the flagged ones ranked (most suspect first)."""

    scores: np.ndarray  # (n,) label quality in [0, 1], lower = the given label less likely right
    suggested: np.ndarray  # (n,) argmax of the out-of-fold probabilities
    flagged: np.ndarray  # indices flagged by find_label_issues, most suspect first
    oof: OutOfFold

    def ranking(self) -> np.ndarray:
        """Every index, lowest label quality first (ties: index order): the list a reviewer reads down."""
        return np.argsort(self.scores, kind="stable")


def _log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-15, 1.0))))


class _Fold:
    """One fold's standardised rows and its head, refitted from the previous strength's solution.

    The grid is scanned from the strongest L2 down and each fit starts from the last one's weights
    (``warm_start``): neighbouring strengths have close optima, so L-BFGS needs fewer iterations than
    from zero.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, n_classes: int) -> None:
        from sklearn.linear_model import LogisticRegression

        mean = x[train].mean(axis=0)
        std = np.maximum(x[train].std(axis=0), STD_FLOOR * np.median(x[train].std(axis=0)) + 1e-12)
        self.train_x, self.test_x = (x[train] - mean) / std, (x[test] - mean) / std
        self.train_y, self.test, self.n_classes = y[train], test, n_classes
        self.model = LogisticRegression(max_iter=MAX_ITER, warm_start=True)

    def probs(self, l2: float) -> np.ndarray:
        """Probabilities of the held-out rows at strength ``l2`` (classes absent from the fold get 0)."""
        from sklearn.exceptions import ConvergenceWarning

        self.model.C = 1.0 / (l2 * len(self.train_y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # probabilities are still usable; logged below
            self.model.fit(self.train_x, self.train_y)
        if self.model.n_iter_.max() >= MAX_ITER:
            logger.info("label check: the head did not converge in %d iterations (l2 %.3g)", MAX_ITER, l2)
        out = np.zeros((len(self.test), self.n_classes))
        out[:, self.model.classes_] = self.model.predict_proba(self.test_x)
        return out


def out_of_fold_probs(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, *, folds: int = FOLDS,
                      seed: int = 0, grid: Sequence[float] = L2_GRID) -> OutOfFold:
    """Out-of-fold probabilities of a logistic-regression head, its L2 strength chosen by out-of-fold log loss.

    Args:
        embeddings: (n, dim) image embeddings.
        labels: (n,) given labels in ``0 .. n_classes - 1``.
        folds: stratified folds; lowered to the smallest class's size (each fold needs every class once).
        seed: shuffles the folds.
        grid: per-row L2 strengths to try (one value: no choice), tried from the strongest down; the scan
            stops at the first strength whose log loss is worse than the best so far (the loss is
            U-shaped in the strength, and the weak end is where the solver needs the most iterations).

    Raises:
        ValueError: a class has fewer than 2 images (no fold could hold it out and still train on it).
    """
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes)
    present = counts[counts > 0]
    folds = int(min(folds, present.min()))
    if folds < 2:
        raise ValueError("every class needs at least 2 images for out-of-fold predictions")
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    parts = [_Fold(x, y, train, test, n_classes)
             for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)]
    best: tuple[float, float, np.ndarray] | None = None
    losses: dict[float, float] = {}
    for l2 in sorted(grid, reverse=True):
        probs = np.zeros((len(y), n_classes))
        with threadpool_limits(limits=BLAS_THREADS):
            for part in parts:
                probs[part.test] = part.probs(l2)
        losses[l2] = _log_loss(y, probs)
        if best is not None and losses[l2] > best[0]:
            break
        best = (losses[l2], l2, probs)
    assert best is not None
    return OutOfFold(probs=best[2], folds=folds, l2=best[1], log_loss=losses, seed=seed)


def find_label_issues(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, *, folds: int = FOLDS,
                      seed: int = 0, rank_by: str = RANK_BY, grid: Sequence[float] = L2_GRID) -> LabelIssues:
    """Rank likely mislabelled images: out-of-fold probabilities, then cleanlab's confident learning.

    ``n_jobs=1``: cleanlab would otherwise fork one process per core, which costs more than it saves on
    a few thousand images and competes with whatever else the machine runs.
    """
    from cleanlab.filter import find_label_issues as cleanlab_find
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(labels, dtype=np.int64)
    oof = out_of_fold_probs(embeddings, y, n_classes, folds=folds, seed=seed, grid=grid)
    flagged = cleanlab_find(y, oof.probs, return_indices_ranked_by=rank_by, n_jobs=1)
    scores = get_label_quality_scores(y, oof.probs, method=rank_by)
    return LabelIssues(scores=np.asarray(scores, dtype=np.float64), suggested=oof.probs.argmax(axis=1),
                       flagged=np.asarray(flagged, dtype=np.int64), oof=oof)


def issue_rows(issues: LabelIssues, labels: np.ndarray, classes: Sequence[str], paths: Sequence[str],
               splits: Sequence[str]) -> list[dict[str, Any]]:
    """The flagged images as report rows, most suspect first; ``rank_among_all`` is the image's place in the
    label-quality ranking of every image (1 = the lowest score), out of ``images``."""
    probs = issues.oof.probs
    place = np.empty(len(issues.scores), dtype=np.int64)
    place[issues.ranking()] = np.arange(1, len(issues.scores) + 1)
    rows = []
    for rank, i in enumerate(issues.flagged.tolist(), 1):
        given, suggested = int(labels[i]), int(issues.suggested[i])
        rows.append({"rank": rank, "rank_among_all": int(place[i]), "images": len(place),
                     "path": paths[i], "split": splits[i], "given": classes[given],
                     "suggested": classes[suggested], "score": round(float(issues.scores[i]), 4),
                     "given_prob": round(float(probs[i, given]), 4),
                     "suggested_prob": round(float(probs[i, suggested]), 4)})
    return rows
