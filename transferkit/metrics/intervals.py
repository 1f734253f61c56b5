"""Uncertainty of test metrics: stratified bootstrap intervals, and paired differences between two models.

Why by hand: ``scipy.stats.bootstrap`` resamples the whole sample. Here every resample keeps each class's
count (a stratified bootstrap, as in ``EVALUATION.md``): with a few rare-class images an unstratified
resample often drops a class, and then balanced accuracy, macro-F1 and ROC-AUC change meaning or become
undefined. The metrics of all resamples are computed at once from an index matrix (a confusion matrix per
resample through one ``bincount``, ROC-AUC through ranks, the Mann-Whitney form), which is what makes
1,000+ resamples cost milliseconds; ``scipy.stats.rankdata`` ranks with ties averaged, as scikit-learn's
``roc_auc_score`` counts them. The point estimates equal ``summary_metrics`` (tested).

:func:`per_class_intervals` gives each class's precision, recall and F1 an interval from the same resamples
(same seed, same index matrix) as :func:`bootstrap_intervals`, so the per-class and summary intervals of a
run describe one bootstrap. A class's count is fixed in every resample, so its recall interval is the
uncertainty of that class alone; precision is undefined in a resample where the class is never predicted.

Intervals are percentile intervals (Efron & Tibshirani 1993). Paired comparisons (the same test images,
the same seeds for both models) use a two-level bootstrap: seeds are resampled with replacement and,
within each replicate, the test images (stratified, the same images for both models), following
Bouthillier et al. 2021. The verdict reads the interval of the difference: above 0 "better", below 0
"worse", otherwise "no clear difference".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "INTERVAL_METRICS",
    "stratified_resamples",
    "resampled_metrics",
    "bootstrap_intervals",
    "PER_CLASS_METRICS",
    "per_class_intervals",
    "resampled_per_class",
    "paired_difference",
    "seed_image_interval",
    "verdict",
]

INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
PER_CLASS_METRICS = ("precision", "recall", "f1")
_CHUNK_CELLS = 4_000_000  # resamples x images (and resamples x classes^2) handled at once: bounds memory


def _chunk_rows(n_images: int, n_classes: int) -> int:
    """Resamples per chunk: keeps both the index slice and the per-resample confusion matrices near
    ``_CHUNK_CELLS`` cells (many classes make the confusion matrices the larger of the two)."""
    return max(1, _CHUNK_CELLS // max(1, n_images, n_classes * n_classes))


def stratified_resamples(labels: Sequence[int], n_resamples: int, seed: int) -> np.ndarray:
    """``n_resamples x n`` indices into ``labels``; each row draws, with replacement, as many images of
    every class as the class has (a class's images are only ever replaced by images of the same class)."""
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, len(y)), dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        out[:, members] = members[rng.integers(0, len(members), size=(n_resamples, len(members)))]
    return out


def _auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Per row: ROC-AUC of ``scores`` for the boolean ``positive`` (Mann-Whitney U over average ranks)."""
    from scipy.stats import rankdata  # scipy.stats takes ~0.5 s to import; only ROC-AUC needs it

    n_pos = positive.sum(axis=1).astype(np.float64)
    n_neg = positive.shape[1] - n_pos
    ranks = rankdata(scores, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def resampled_metrics(labels: Sequence[int], probs: np.ndarray, index: np.ndarray, n_classes: int,
                      metrics: Sequence[str] = INTERVAL_METRICS) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1 and ROC-AUC of every resample (one row of ``index`` each).

    Definitions follow :func:`transferkit.metrics.classification.summary_metrics`: macro-F1 over all
    ``n_classes`` labels (an absent class counts 0), balanced accuracy over the classes present, ROC-AUC of
    the positive class (binary) or the mean one-vs-rest AUC over the classes present. ``metrics`` names the
    ones wanted (ROC-AUC, which ranks every resample, is the costly one).
    """
    y_all = np.asarray(labels, dtype=np.int64)
    p_all = np.asarray(probs, dtype=np.float64)
    pred_all = p_all.argmax(axis=1)
    chunk = _chunk_rows(index.shape[1], n_classes)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for start in range(0, index.shape[0], chunk):
        idx = index[start:start + chunk]
        for name, values in _metrics_of(y_all, p_all, pred_all, idx, n_classes, "roc_auc" in metrics).items():
            if name in parts:
                parts[name].append(values)
    return {name: np.concatenate(values) for name, values in parts.items()}


def _counts(y_all: np.ndarray, pred_all: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per resample (row of ``idx``) and class: true positives, support and times predicted (``rows x k``
    each), read off a confusion matrix per resample built by one ``bincount``."""
    rows = idx.shape[0]
    flat = (np.arange(rows)[:, None] * k * k + y_all[idx] * k + pred_all[idx]).ravel()
    cm = np.bincount(flat, minlength=rows * k * k).reshape(rows, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    return tp, cm.sum(axis=2), cm.sum(axis=1)


def _metrics_of(y_all: np.ndarray, p_all: np.ndarray, pred_all: np.ndarray, idx: np.ndarray, k: int,
                want_auc: bool) -> dict[str, np.ndarray]:
    rows = idx.shape[0]
    y = y_all[idx]
    tp, support, predicted = _counts(y_all, pred_all, idx, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    present = np.unique(y_all)
    if not want_auc:
        auc = np.full(rows, np.nan)
    elif k == 2:
        auc = _auc(p_all[:, 1][idx], y == 1) if len(present) == 2 else np.full(rows, np.nan)
    elif len(present) >= 2:
        auc = np.mean([_auc(p_all[:, c][idx], y == c) for c in present], axis=0)
    else:
        auc = np.full(rows, np.nan)
    return {
        "accuracy": tp.sum(axis=1) / idx.shape[1],
        "balanced_accuracy": np.nanmean(recall[:, present], axis=1),
        "macro_f1": f1.mean(axis=1),
        "roc_auc": auc,
    }


def bootstrap_intervals(labels: Sequence[int], probs: np.ndarray, n_classes: int, n_resamples: int = 1000,
                        seed: int = 0, confidence: float = 0.95,
                        metrics: Sequence[str] = INTERVAL_METRICS) -> dict[str, list[float] | None]:
    """{metric: [low, high]} percentile intervals from a stratified bootstrap (None where undefined)."""
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        return {m: None for m in metrics}
    values = resampled_metrics(y, probs, stratified_resamples(y, n_resamples, seed), n_classes, metrics)
    return {name: _percentile(v, confidence) for name, v in values.items()}


def resampled_per_class(labels: Sequence[int], probs: np.ndarray, index: np.ndarray,
                        n_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of every class in every resample: ``{metric: resamples x n_classes}``.

    Definitions follow scikit-learn's ``precision_recall_fscore_support(..., zero_division=0)`` where a value
    is defined; where it is not, the value is nan rather than 0 (so an interval is not drawn towards a
    convention): precision of a class not predicted in the resample, recall of a class with no images.
    F1 is ``2 tp / (support + predicted)``, 0 when both are 0, as scikit-learn and macro-F1 count it.
    """
    y_all = np.asarray(labels, dtype=np.int64)
    pred_all = np.asarray(probs, dtype=np.float64).argmax(axis=1)
    chunk = _chunk_rows(index.shape[1], n_classes)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in PER_CLASS_METRICS}
    for start in range(0, index.shape[0], chunk):
        tp, support, predicted = _counts(y_all, pred_all, index[start:start + chunk], n_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            parts["precision"].append(np.where(predicted > 0, tp / predicted, np.nan))
            parts["recall"].append(np.where(support > 0, tp / support, np.nan))
            parts["f1"].append(np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0))
    return {name: np.concatenate(values) for name, values in parts.items()}


def per_class_intervals(labels: Sequence[int], probs: np.ndarray, n_classes: int, n_resamples: int = 1000,
                        seed: int = 0, confidence: float = 0.95) -> list[dict[str, list[float] | None]]:
    """One ``{"precision": [low, high] | None, "recall": ..., "f1": ...}`` per class index.

    Percentile intervals from the same stratified resamples as :func:`bootstrap_intervals` with the same
    ``seed``. None where the figure is undefined in more than 10% of the resamples: precision of a class the
    model (almost) never predicts, recall of a class absent from ``labels``.
    """
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        return [{m: None for m in PER_CLASS_METRICS} for _ in range(n_classes)]
    values = resampled_per_class(y, probs, stratified_resamples(y, n_resamples, seed), n_classes)
    return [{m: _percentile(values[m][:, c], confidence) for m in PER_CLASS_METRICS} for c in range(n_classes)]


def _percentile(values: np.ndarray, confidence: float) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if finite.size < 0.9 * values.size:  # undefined in most resamples (e.g. ROC-AUC with one class)
        return None
    tail = 100 * (1 - confidence) / 2
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def verdict(interval: Sequence[float] | None) -> str:
    """'better' / 'worse' when the interval of a difference excludes 0, else 'no clear difference'."""
    if interval is None:
        return "no clear difference"
    if interval[0] > 0:
        return "better"
    if interval[1] < 0:
        return "worse"
    return "no clear difference"


def _two_level(per_seed: np.ndarray, seed: int) -> np.ndarray:
    """Replicates of the mean over seeds: ``per_seed`` is seeds x image-resamples; each replicate draws the
    seeds with replacement and averages their values on that replicate's image resample."""
    n_seeds, n_resamples = per_seed.shape
    picks = np.random.default_rng(seed + 1).integers(0, n_seeds, size=(n_resamples, n_seeds))
    return per_seed[picks, np.arange(n_resamples)[:, None]].mean(axis=1)


def _per_seed(labels: np.ndarray, runs: Sequence[np.ndarray], index: np.ndarray, n_classes: int, metric: str) -> np.ndarray:
    return np.stack([resampled_metrics(labels, probs, index, n_classes, (metric,))[metric] for probs in runs])


def seed_image_interval(labels: Sequence[int], runs: Sequence[np.ndarray], n_classes: int, metric: str = "accuracy",
                        n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict[str, object]:
    """Mean ``metric`` over runs (seeds) on the same test images, with a seed-and-image bootstrap interval."""
    if not runs:
        raise ValueError("seed_image_interval needs at least one run")
    y = np.asarray(labels, dtype=np.int64)
    full = np.arange(len(y))[None, :]
    point = float(np.mean(_per_seed(y, runs, full, n_classes, metric)))
    replicate = _two_level(_per_seed(y, runs, stratified_resamples(y, n_resamples, seed), n_classes, metric), seed)
    return {"metric": metric, "mean": point, "ci95": _percentile(replicate, confidence), "n_images": int(len(y)),
            "n_seeds": len(runs), "n_resamples": n_resamples}


def paired_difference(labels: Sequence[int], probs_a: Sequence[np.ndarray], probs_b: Sequence[np.ndarray], n_classes: int,
                      metric: str = "accuracy", n_resamples: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, object]:
    """Difference ``metric(a) - metric(b)`` over paired runs (``probs_a[i]`` and ``probs_b[i]`` share seed i and
    the test images ``labels``): the mean over seeds, its interval from the two-level bootstrap, the verdict."""
    if len(probs_a) != len(probs_b) or not probs_a:
        raise ValueError("paired_difference needs the same number (>= 1) of runs for both models, paired by seed")
    y = np.asarray(labels, dtype=np.int64)
    full = np.arange(len(y))[None, :]
    point = float(np.mean(_per_seed(y, probs_a, full, n_classes, metric) - _per_seed(y, probs_b, full, n_classes, metric)))
    index = stratified_resamples(y, n_resamples, seed)
    diffs = _per_seed(y, probs_a, index, n_classes, metric) - _per_seed(y, probs_b, index, n_classes, metric)
    interval = _percentile(_two_level(diffs, seed), confidence)
    return {"metric": metric, "difference": point, "ci95": interval, "verdict": verdict(interval),
            "n_images": int(len(y)), "n_seeds": len(probs_a), "n_resamples": n_resamples}
