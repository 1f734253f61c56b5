"""Classification metrics from predicted probabilities (scikit-learn does the arithmetic)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn import metrics as skm

from transferkit.metrics.intervals import METHODS, metric_intervals, per_class_intervals

__all__ = ["summary_metrics", "detailed_metrics", "expected_calibration_error", "format_metric", "format_per_class"]


def _roc_auc(labels: np.ndarray, probs: np.ndarray, n_classes: int) -> float | None:
    """Binary AUC of the positive class, or macro one-vs-rest AUC; None when undefined."""
    present = np.unique(labels)
    if len(present) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if n_classes == 2:
                return float(skm.roc_auc_score(labels, probs[:, 1]))
            if len(present) < n_classes:
                # one-vs-rest over the classes that occur; absent classes have no positives
                scores = [skm.roc_auc_score(labels == c, probs[:, c]) for c in present]
                return float(np.mean(scores))
            return float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
        except ValueError:
            return None


def summary_metrics(labels: Sequence[int], probs: np.ndarray, n_classes: int) -> dict[str, float | None]:
    """accuracy, balanced_accuracy, macro_f1, roc_auc (binary or macro one-vs-rest), log loss."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        return {"accuracy": None, "balanced_accuracy": None, "macro_f1": None, "roc_auc": None}
    pred = p.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out: dict[str, float | None] = {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
            "macro_f1": float(skm.f1_score(y, pred, average="macro", labels=list(range(n_classes)), zero_division=0)),
            "roc_auc": _roc_auc(y, p, n_classes),
        }
    nll = -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean()
    out["nll"] = float(nll) if math.isfinite(nll) else None
    return out


def expected_calibration_error(labels: Sequence[int], probs: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """ECE with equal-width confidence bins, plus the per-bin table for a reliability diagram."""
    y = np.asarray(labels)
    p = np.asarray(probs)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            acc, mean_conf = float(correct[mask].mean()), float(conf[mask].mean())
            ece += mask.mean() * abs(acc - mean_conf)
            table.append({"lo": float(lo), "hi": float(hi), "count": int(mask.sum()), "accuracy": acc, "confidence": mean_conf})
    return {"ece": float(ece), "bins": table}


def detailed_metrics(labels: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Summary + per-class precision/recall/F1/support + confusion matrix + calibration.

    ``per_class[name]`` is ``{"precision", "recall", "f1", "support", "ci95"}``; ``ci95`` holds
    ``{"precision": [low, high] | None, "recall": ..., "f1": ...}``. None: undefined (a class never predicted
    has no precision, an absent class no recall), while the point value keeps scikit-learn's
    ``zero_division=0`` convention. ``ci_methods`` names each interval's method and ``ci_notes`` says where a
    summary interval is missing or fell back (:mod:`transferkit.metrics.intervals`).
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    n = len(classes)
    pred = p.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=list(range(n)), zero_division=0
    )
    intervals = per_class_intervals(y, p, n)
    summary_ci, notes = metric_intervals(y, p, n, n_resamples=1000, seed=0)
    per_class = {
        c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i]),
            "ci95": intervals[i]}
        for i, c in enumerate(classes)
    }
    return {
        "metrics": summary_metrics(y, p, n),
        "ci95": summary_ci,
        "ci_methods": dict(METHODS),
        "ci_notes": notes,
        "per_class": per_class,
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=list(range(n))).tolist(),
        "classes": list(classes),
        "calibration": expected_calibration_error(y, p),
        "n": int(len(y)),
    }


def format_metric(value: float | None, interval: Sequence[float] | None = None, digits: int = 3) -> str:
    """``0.961 [0.935, 0.984]``: a value with its 95% interval (``n/a`` when undefined)."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text if interval is None else f"{text} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def format_per_class(details: Mapping[str, Any], digits: int = 3) -> str:
    """Per-class table for the terminal: class, n, recall, precision and F1, each with its 95% interval.

    ``details`` is what :func:`detailed_metrics` returns (``test_metrics.json``, ``evaluation.json``). Rows run
    from the lowest recall up, so a rare class the model misses is the first line read; classes with no
    test images (no recall) come last. Results without per-class intervals (older runs) print values only.
    """
    rows = list((details.get("per_class") or {}).items())
    order = sorted(range(len(rows)), key=lambda i: (rows[i][1].get("support", 0) == 0, rows[i][1].get("recall", 0.0), i))
    lines = []
    for i in order:
        name, row = rows[i]
        ci = row.get("ci95") or {}
        recall = row.get("recall") if row.get("support", 0) else None
        lines.append((str(name), str(row.get("support", "?")), format_metric(recall, ci.get("recall"), digits),
                      format_metric(row.get("precision"), ci.get("precision"), digits),
                      format_metric(row.get("f1"), ci.get("f1"), digits)))
    header = ("class", "n", "recall [95% CI]", "precision [95% CI]", "F1 [95% CI]")
    widths = [max(len(r[j]) for r in [header, *lines]) for j in range(len(header))]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  " + "  ".join(f"{v:<{w}}" for v, w in zip(r[2:], widths[2:]))
                     .rstrip() for r in [header, *lines])
