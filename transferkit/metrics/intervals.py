"""Uncertainty of test metrics: intervals built for each kind of figure, chosen for their coverage at the edges.

Which interval for which figure (95% unless asked otherwise):

- **Proportions** -- accuracy, a class's recall (correct / images of the class), a class's precision (correct /
  times predicted): the Clopper-Pearson interval (``scipy.stats.beta`` quantiles; Brown, Cai & DasGupta 2001).
  Why not Wilson or Jeffreys: their coverage dips well below 95% next to 0 and 1, exactly where small test sets
  of good models sit. Exact binomial coverage, minimum over true values 0.5-0.999 (``tests/unit/metrics/
  test_interval_coverage.py`` recomputes these): n = 4: Wilson 0.83, Jeffreys 0.87, Wilson with continuity
  correction 0.95, Clopper-Pearson 0.975; n = 264: 0.90 / 0.91 / 0.95 / 0.95. Clopper-Pearson never covers less
  than 95%, and at n >= 150 its expected width is that of Wilson with continuity correction (0.130 vs 0.130 at
  n = 153). Non-integer counts (a per-image score averaged over seeds) use the same beta quantiles.
- **Balanced accuracy** -- the mean recall over the classes present: the class counts are fixed by the test
  split and the classes' recalls are independent binomials, so their Clopper-Pearson limits are combined by
  MOVER (method of variance estimates recovery; Zou & Donner 2008, Newcombe 2011): for theta = mean_c r_c,
  ``lo = theta - sqrt(sum_c ((r_c - l_c) / K)^2)``, ``hi = theta + sqrt(sum_c ((u_c - r_c) / K)^2)``. Exact
  coverage with classes of 9 and 4 images, over a grid of true recalls: at least 0.952 (MOVER on Wilson limits:
  0.90).
- **A class's F1** -- F1 is the harmonic mean of precision and recall and rises with both, so when both lie in
  their intervals at level 1 - alpha/2 (Bonferroni), F1 lies between the harmonic means of the lower and of the
  upper limits: a conservative interval that does not degenerate for a perfect 4-image class.
- **Macro-F1 and ROC-AUC** (composites without a proportion form): a stratified bootstrap (every class keeps
  its count in every resample; the classes are scipy's separate samples, which it resamples independently) with
  BCa limits (``scipy.stats.bootstrap``, 1,000 resamples, seed 0; percentile limits above 5,000 images, where
  BCa's jackknife costs more than it corrects). When every resample gives the same value (a perfect model) the
  bootstrap cannot bound the figure: macro-F1 then takes the Bonferroni bound over all the classes' precisions
  and recalls; ROC-AUC has no interval and says why. Resamples where a figure is undefined are never dropped
  silently: the interval is withheld and ``notes`` says how many there were.

:func:`stratified_resamples` and :func:`resampled_metrics` compute every resample's metrics at once from an
index matrix (a confusion matrix per resample through one ``bincount``, ROC-AUC through ranks); the point
estimates equal ``summary_metrics`` (tested). Paired comparisons of two models live in
:mod:`transferkit.metrics.paired`.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

__all__ = [
    "INTERVAL_METRICS",
    "PER_CLASS_METRICS",
    "METHODS",
    "proportion_interval",
    "mover_mean_interval",
    "stratified_resamples",
    "resampled_metrics",
    "resampled_per_class",
    "metric_intervals",
    "bootstrap_intervals",
    "per_class_intervals",
    "seed_image_interval",
    "distinct_models",
]

INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
PER_CLASS_METRICS = ("precision", "recall", "f1")
METHODS = {
    "accuracy": "Clopper-Pearson",
    "balanced_accuracy": "MOVER over the classes' Clopper-Pearson recall limits",
    "macro_f1": "stratified bootstrap, BCa (Bonferroni precision/recall bound when every resample is equal)",
    "roc_auc": "stratified bootstrap, BCa",
    "precision": "Clopper-Pearson (correct / times predicted)",
    "recall": "Clopper-Pearson (correct / images of the class)",
    "f1": "Bonferroni bound from the precision and recall limits at 97.5%",
}
BCA_MAX_IMAGES = 5000  # above this, percentile limits: BCa's jackknife evaluates the statistic once per image
_CHUNK_CELLS = 4_000_000  # resamples x images (and resamples x classes^2) handled at once: bounds memory


# --- proportions ---------------------------------------------------------------------------------------------


def proportion_interval(successes: Any, trials: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson limits for ``successes`` out of ``trials`` (arrays broadcast; counts may be non-integer).

    Where ``trials`` is 0 the limits are nan (nothing was observed).
    """
    from scipy.stats import beta  # scipy.stats takes ~0.5 s to import: only when an interval is asked for

    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    tail = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k <= 0, 0.0, beta.ppf(tail, np.maximum(k, 1e-12), np.maximum(n - k + 1, 1e-12)))
        hi = np.where(k >= n, 1.0, beta.ppf(1 - tail, k + 1, np.maximum(n - k, 1e-12)))
    empty = n <= 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def mover_mean_interval(values: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> list[float]:
    """MOVER limits of the mean of independent estimates ``values`` with limits ``lows``/``highs`` (Zou & Donner 2008)."""
    v, lo, hi = (np.asarray(x, dtype=np.float64) for x in (values, lows, highs))
    k = len(v)
    theta = float(v.mean())
    low = theta - float(np.sqrt((((v - lo) / k) ** 2).sum()))
    high = theta + float(np.sqrt((((hi - v) / k) ** 2).sum()))
    return [max(0.0, low), min(1.0, high)]


def _pair(lo: Any, hi: Any) -> list[float] | None:
    lo, hi = float(lo), float(hi)
    return None if not (np.isfinite(lo) and np.isfinite(hi)) else [lo, hi]


def _harmonic(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(p + r > 0, 2 * p * r / (p + r), 0.0)


# --- resampling (vectorised over resamples) ------------------------------------------------------------------


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
    from scipy.stats import rankdata

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
    the positive class (binary) or the mean one-vs-rest AUC over the classes present.
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


def resampled_per_class(labels: Sequence[int], probs: np.ndarray, index: np.ndarray,
                        n_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of every class in every resample: ``{metric: resamples x n_classes}``
    (nan where undefined: precision of a class not predicted, recall of a class with no images)."""
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


# --- the intervals of one model's test figures ---------------------------------------------------------------


def _class_counts(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    return np.diagonal(cm).astype(np.float64), cm.sum(axis=1).astype(np.float64), cm.sum(axis=0).astype(np.float64)


def _balanced_interval(tp: np.ndarray, support: np.ndarray, confidence: float) -> list[float] | None:
    present = support > 0
    if not present.any():
        return None
    lo, hi = proportion_interval(tp[present], support[present], confidence)
    return mover_mean_interval(tp[present] / support[present], lo, hi)


def _f1_bound(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class: F1 limits from precision and recall limits at ``confidence`` each (nan where no images).
    A class never predicted has precision anywhere in [0, 1]."""
    r_lo, r_hi = proportion_interval(tp, support, confidence)
    p_lo, p_hi = proportion_interval(tp, predicted, confidence)
    p_lo, p_hi = np.where(predicted > 0, p_lo, 0.0), np.where(predicted > 0, p_hi, 1.0)
    return _harmonic(p_lo, r_lo), _harmonic(p_hi, r_hi)


def _bootstrap(labels: np.ndarray, probs: np.ndarray, k: int, metric: str, n_resamples: int, seed: int,
               confidence: float) -> tuple[list[float] | None, str | None]:
    """Stratified BCa limits of ``metric`` (scipy.stats.bootstrap, the classes as separate samples), or
    (None, why) when the resamples are all equal or some are undefined."""
    from scipy.stats import bootstrap

    samples = [np.flatnonzero(labels == c) for c in np.unique(labels)]

    def statistic(*parts: np.ndarray, axis: int = -1) -> np.ndarray:
        lead = np.broadcast_shapes(*(p.shape[:-1] for p in parts))
        joined = np.concatenate([np.broadcast_to(p, lead + p.shape[-1:]) for p in parts], axis=-1)
        flat = joined.reshape(-1, joined.shape[-1])
        return resampled_metrics(labels, probs, flat, k, (metric,))[metric].reshape(lead)

    values = resampled_metrics(labels, probs, stratified_resamples(labels, n_resamples, seed), k, (metric,))[metric]
    undefined = int((~np.isfinite(values)).sum())
    if undefined:
        return None, f"undefined in {undefined} of {n_resamples} stratified resamples; no interval"
    if np.ptp(values) == 0:
        return None, f"every resample gives {float(values[0]):.3f}: a bootstrap cannot bound it"
    method = "BCa" if len(labels) <= BCA_MAX_IMAGES else "percentile"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate or nan limits are checked below, not printed
        result = bootstrap(tuple(samples), statistic, n_resamples=n_resamples, confidence_level=confidence,
                           method=method, vectorized=True, random_state=np.random.default_rng(seed), batch=200)
    interval = _pair(result.confidence_interval.low, result.confidence_interval.high)
    return (interval, None) if interval else (None, f"the {method} limits are undefined; no interval")


def metric_intervals(labels: Sequence[int], probs: np.ndarray, n_classes: int, n_resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95,
                     metrics: Sequence[str] = INTERVAL_METRICS) -> tuple[dict[str, list[float] | None], dict[str, str]]:
    """({metric: [low, high] | None}, {metric: why there is no interval or which fallback was used}).

    The method of each metric is :data:`METHODS`' entry (see the module docstring for why).
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        return {m: None for m in metrics}, {m: "no images" for m in metrics}
    tp, support, predicted = _class_counts(y, p.argmax(axis=1), n_classes)
    out: dict[str, list[float] | None] = {}
    notes: dict[str, str] = {}
    for metric in metrics:
        if metric == "accuracy":
            out[metric] = _pair(*proportion_interval(tp.sum(), len(y), confidence))
        elif metric == "balanced_accuracy":
            out[metric] = _balanced_interval(tp, support, confidence)
        else:
            out[metric], note = _bootstrap(y, p, n_classes, metric, n_resamples, seed, confidence)
            if metric == "macro_f1" and out[metric] is None and note and note.startswith("every resample"):
                level = 1 - (1 - confidence) / (2 * n_classes)  # every class's precision and recall at once
                lo, hi = _f1_bound(tp, support, predicted, level)
                out[metric] = [float(np.nan_to_num(lo).mean()), float(np.where(support + predicted > 0, hi, 0).mean())]
                note = f"{note}; Bonferroni bound over the {n_classes} classes' precision and recall limits instead"
            if note:
                notes[metric] = note
    return out, notes


def bootstrap_intervals(labels: Sequence[int], probs: np.ndarray, n_classes: int, n_resamples: int = 1000,
                        seed: int = 0, confidence: float = 0.95,
                        metrics: Sequence[str] = INTERVAL_METRICS) -> dict[str, list[float] | None]:
    """The limits of :func:`metric_intervals` without the notes (kept for callers of the old name)."""
    return metric_intervals(labels, probs, n_classes, n_resamples, seed, confidence, metrics)[0]


def per_class_intervals(labels: Sequence[int], probs: np.ndarray, n_classes: int, n_resamples: int = 1000,
                        seed: int = 0, confidence: float = 0.95) -> list[dict[str, list[float] | None]]:
    """One ``{"precision": [low, high] | None, "recall": ..., "f1": ...}`` per class index.

    Recall and precision: Clopper-Pearson on the class's counts (None: no images of the class / never
    predicted). F1: the Bonferroni bound from both at ``1 - alpha/2`` (None without images of the class).
    ``n_resamples`` and ``seed`` are unused (no resampling); they are kept for callers of the old signature.
    """
    del n_resamples, seed
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        return [{m: None for m in PER_CLASS_METRICS} for _ in range(n_classes)]
    tp, support, predicted = _class_counts(y, np.asarray(probs).argmax(axis=1), n_classes)
    r_lo, r_hi = proportion_interval(tp, support, confidence)
    p_lo, p_hi = proportion_interval(tp, predicted, confidence)
    f_lo, f_hi = _f1_bound(tp, support, predicted, 1 - (1 - confidence) / 2)
    return [{"precision": _pair(p_lo[c], p_hi[c]) if predicted[c] else None,
             "recall": _pair(r_lo[c], r_hi[c]) if support[c] else None,
             "f1": _pair(f_lo[c], f_hi[c]) if support[c] else None} for c in range(n_classes)]


# --- a row of several seeds on the same test images ----------------------------------------------------------


def seed_image_interval(labels: Sequence[int], runs: Sequence[np.ndarray], n_classes: int, metric: str = "accuracy",
                        n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict[str, object]:
    """Mean ``metric`` over runs (seeds) on the same test images, its interval over images, and every seed's value.

    Accuracy and balanced accuracy: each image's correctness is averaged over the runs (a score in [0, 1]) and
    the mean score gets the Clopper-Pearson (balanced: MOVER) interval with the images as trials -- a score in
    [0, 1] with a given mean varies no more than a 0/1 outcome, so this is conservative for the image
    sampling. Seeds are their own level: ``per_seed`` lists every run's value and ``distinct_models`` counts the
    runs whose predictions differ (a deterministic method gives one model for every seed: 1). Other metrics:
    the percentile interval of a two-level bootstrap (seeds, then stratified images).
    """
    if not runs:
        raise ValueError("seed_image_interval needs at least one run")
    y = np.asarray(labels, dtype=np.int64)
    probs = [np.asarray(r, dtype=np.float64) for r in runs]
    full = np.arange(len(y))[None, :]
    per_seed = [float(resampled_metrics(y, p, full, n_classes, (metric,))[metric][0]) for p in probs]
    out: dict[str, object] = {"metric": metric, "mean": float(np.mean(per_seed)), "per_seed": per_seed,
                              "distinct_models": distinct_models(probs), "n_images": int(len(y)),
                              "n_seeds": len(probs)}
    if metric in ("accuracy", "balanced_accuracy"):
        score = np.mean([p.argmax(axis=1) == y for p in probs], axis=0)
        if metric == "accuracy":
            interval = _pair(*proportion_interval(score.sum(), len(y), confidence))
        else:
            classes = np.unique(y)
            sums = np.array([score[y == c].sum() for c in classes])
            sizes = np.array([(y == c).sum() for c in classes], dtype=np.float64)
            lo, hi = proportion_interval(sums, sizes, confidence)
            interval = mover_mean_interval(sums / sizes, lo, hi)
        out.update(ci95=interval, method=METHODS[metric] + " on per-image scores averaged over the seeds")
        return out
    index = stratified_resamples(y, n_resamples, seed)
    table = np.stack([resampled_metrics(y, p, index, n_classes, (metric,))[metric] for p in probs])
    picks = np.random.default_rng(seed + 1).integers(0, len(probs), size=(n_resamples, len(probs)))
    replicate = table[picks, np.arange(n_resamples)[:, None]].mean(axis=1)
    finite = replicate[np.isfinite(replicate)]
    tail = 100 * (1 - confidence) / 2
    interval = None if finite.size < replicate.size else [float(np.percentile(finite, tail)),
                                                         float(np.percentile(finite, 100 - tail))]
    out.update(ci95=interval, method="two-level bootstrap (seeds, then stratified images), percentile",
               n_resamples=n_resamples)
    return out


def distinct_models(runs: Sequence[np.ndarray]) -> int:
    """How many of ``runs`` differ in their probabilities (bit for bit): seeds of a deterministic method give 1."""
    seen: list[np.ndarray] = []
    for r in runs:
        if not any(r.shape == s.shape and np.array_equal(r, s) for s in seen):
            seen.append(r)
    return len(seen)
