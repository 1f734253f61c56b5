"""The run report's figures, each returned as a PNG data URI (see :mod:`transferkit.report.style`).

scikit-learn draws the confusion matrices and computes the ROC curves; the rest is plain matplotlib.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from sklearn import metrics as skm

from transferkit.report.style import COLORS, fig_to_uri, figure

__all__ = ["learning_curves", "plan_chart", "confusion_matrices", "roc_curves", "reliability_diagram"]

METRIC_LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "roc_auc": "ROC AUC",
    "nll": "NLL",
}


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _mark_best(ax, best_epoch: int | None) -> None:
    if best_epoch:
        ax.axvline(best_epoch, color="#555555", linestyle=":", linewidth=1.2, label=f"best epoch ({best_epoch})")


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", **kwargs)


def learning_curves(rows: Sequence[Mapping[str, Any]], best_epoch: int | None = None) -> str:
    """Loss (train vs selection-split NLL), metrics (train vs selection split) and learning rates per epoch."""
    with figure(ncols=3, width=4.6, height=3.5) as (fig, axes):
        loss_ax, metric_ax, lr_ax = axes[0]
        for key, label, style in (("train_loss", "train loss (smoothed CE)", "-"), ("selection_nll", "selection NLL", "-")):
            x, y = _series(rows, key)
            loss_ax.plot(x, y, style, marker="o", markersize=4, label=label)
        loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy (nats)")
        _mark_best(loss_ax, best_epoch)
        _legend(loss_ax)
        for key, label, style in (  # the validation metrics often coincide: line styles keep them apart
            ("train_accuracy", "train accuracy", "-"),
            ("selection_accuracy", "selection accuracy", "-"),
            ("selection_balanced_accuracy", "selection balanced accuracy", "--"),
            ("selection_macro_f1", "selection macro F1", ":"),
        ):
            x, y = _series(rows, key)
            if y:
                metric_ax.plot(x, y, style, marker="o", markersize=4, label=label)
        metric_ax.set(title="Accuracy", xlabel="epoch", ylabel="fraction correct")
        _mark_best(metric_ax, best_epoch)
        _legend(metric_ax)
        _lr_panel(lr_ax, rows)
        for ax in axes[0]:
            ax.xaxis.get_major_locator().set_params(integer=True)
        return fig_to_uri(fig)


def _lr_panel(ax, rows: Sequence[Mapping[str, Any]]) -> None:
    """Learning rate per layer group at the end of each epoch; frozen groups (lr 0) are not drawn.

    Groups with identical schedules share one line (fine-tuning gives all backbone groups the same rate,
    and nine coinciding lines with nine legend entries hide each other).
    """
    groups: list[str] = []
    for r in rows:
        for g in (r.get("lr") or {}):
            if g not in groups:
                groups.append(g)
    lines: dict[tuple, list[str]] = {}
    for group in groups:
        points = tuple((int(r["epoch"]), float(r["lr"][group])) for r in rows if (r.get("lr") or {}).get(group))
        if points:
            lines.setdefault(points, []).append(group)
    for i, (points, names) in enumerate(lines.items()):
        label = names[0] if len(names) == 1 else f"{names[0]} … {names[-1]} ({len(names)} groups)"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", color=COLORS[i % len(COLORS)], label=label)
    if lines:
        ax.set_yscale("log")
        _legend(ax, fontsize=8)
    ax.set(title="Learning rate per layer group", xlabel="epoch", ylabel="learning rate (end of epoch)")


def plan_chart(plan: Mapping[str, Any]) -> str | None:
    """The strategy's plan: which layer groups train in which epoch, at what learning-rate scale."""
    groups, epochs = list(plan.get("groups") or []), list(plan.get("epochs") or [])
    if not groups or not epochs:
        return None
    scales = np.array([[float(e.get(g, 0.0)) for e in epochs] for g in groups])
    with figure(width=min(1.2 + 0.45 * len(epochs), 11), height=0.9 + 0.3 * len(groups)) as (fig, axes):
        ax = axes[0, 0]
        image = ax.imshow(scales, aspect="auto", cmap="Blues", vmin=0, vmax=max(1.0, scales.max()))
        ax.set_yticks(range(len(groups)), groups)
        ax.set_xticks(range(len(epochs)), [str(i + 1) for i in range(len(epochs))])
        ax.set(xlabel="epoch", ylabel="layer group", title="Training plan (lr scale; 0 = frozen)")
        ax.grid(False)
        fig.colorbar(image, ax=ax, label="lr scale", fraction=0.05)
        return fig_to_uri(fig)


def confusion_matrices(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """Row-normalised (per true class: recall on the diagonal) first, on the left, then the counts.

    The normalised matrix leads because with imbalanced classes the counts are dominated by the large
    classes: a rare class missed entirely is a faint row of small numbers in counts, a pale diagonal cell
    when each row sums to 1.
    """
    cm = np.asarray(matrix, dtype=np.int64)
    n = len(classes)
    side = min(3.2 + 0.4 * n, 10)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    show_values = n <= 15  # beyond that the numbers overlap; the colours still read
    with figure(ncols=2, width=side, height=side * 0.85) as (fig, axes):
        for ax, values, fmt, title in (
            (axes[0, 0], normalised, ".2f", "Normalised by true class (rows sum to 1)"),
            (axes[0, 1], cm, "d", "Confusion matrix (counts)"),
        ):
            display = skm.ConfusionMatrixDisplay(values, display_labels=list(classes))
            display.plot(ax=ax, cmap="Blues", values_format=fmt, colorbar=False, include_values=show_values,
                         xticks_rotation=45 if n > 4 else "horizontal")
            ax.set(title=title, xlabel="predicted class", ylabel="true class")
            ax.grid(False)
        return fig_to_uri(fig)


def roc_curves(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> tuple[str | None, dict[str, float]]:
    """ROC of the positive class (binary) or one-vs-rest per class; returns (figure, {curve: AUC})."""
    y, p = np.asarray(labels), np.asarray(probs)
    if len(y) == 0 or len(np.unique(y)) < 2:
        return None, {}
    pairs = [(1, f"{classes[1]} vs {classes[0]}")] if len(classes) == 2 else [(c, f"{name} vs rest") for c, name in enumerate(classes)]
    aucs: dict[str, float] = {}
    with figure(width=5.0, height=4.4) as (fig, axes):
        ax = axes[0, 0]
        crowded = len(pairs) > 10  # beyond ten curves a legend is unreadable: thin lines, macro AUC in the title
        for i, (c, name) in enumerate(pairs):
            positive = y == c
            if positive.all() or not positive.any():
                continue  # no curve without both positives and negatives
            fpr, tpr, _ = skm.roc_curve(positive, p[:, c])
            aucs[name] = float(skm.auc(fpr, tpr))
            if crowded:
                ax.plot(fpr, tpr, color=COLORS[0], alpha=0.35, linewidth=0.8)
            else:
                ax.plot(fpr, tpr, color=COLORS[i % len(COLORS)], linewidth=1.8, label=f"{name} (AUC {aucs[name]:.3f})")
        ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1, label="chance")
        title = "ROC curve" if len(classes) == 2 else "ROC curves (one-vs-rest)"
        if crowded and aucs:
            title += f"\n{len(aucs)} classes, mean AUC {np.mean(list(aucs.values())):.3f}"
        ax.set(title=title, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        ax.set_aspect("equal")
        ax.legend(loc="lower right", fontsize=8 if len(pairs) > 6 else 9)
        return fig_to_uri(fig), aucs


def reliability_diagram(calibration: Mapping[str, Any], before: Mapping[str, Any] | None = None) -> str | None:
    """Accuracy vs confidence per confidence bin (bars), the diagonal of perfect calibration, and ECE.

    ``before``: the same test images before temperature scaling, drawn as a line of points (accuracy at each
    bin's mean confidence) so both calibrations are read off one chart.
    """
    bins = list(calibration.get("bins") or [])
    if not bins:
        return None
    lo = np.array([b["lo"] for b in bins])
    width = np.array([b["hi"] - b["lo"] for b in bins])
    acc = np.array([b["accuracy"] for b in bins])
    conf = np.array([b["confidence"] for b in bins])
    count = np.array([b["count"] for b in bins])
    with figure(nrows=2, width=5.2, height=2.4, gridspec_kw={"height_ratios": [3, 1]}, sharex=True) as (fig, axes):
        ax, hist = axes[0, 0], axes[1, 0]
        ax.bar(lo, acc, width=width, align="edge", color=COLORS[0], edgecolor="white", label="accuracy in bin")
        # hatched outline only: filled with alpha it darkens the accuracy bar where confidence < accuracy
        ax.bar(lo, conf - acc, bottom=acc, width=width, align="edge", facecolor="none", edgecolor=COLORS[1],
               hatch="///", linewidth=1.0, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], linestyle="--", color="#555555", linewidth=1, label="perfect calibration")
        title = f"Reliability diagram (ECE {float(calibration.get('ece', 0.0)):.3f})"
        old_bins = [b for b in (before or {}).get("bins") or [] if b["count"]]
        if old_bins:
            ax.plot([b["confidence"] for b in old_bins], [b["accuracy"] for b in old_bins], marker="o", markersize=3,
                    color=COLORS[2 % len(COLORS)], linewidth=1, label="before temperature scaling")
            title = (f"Reliability: ECE {float(before.get('ece', 0.0)):.3f} before, "  # type: ignore[union-attr]
                     f"{float(calibration.get('ece', 0.0)):.3f} after temperature scaling")
        ax.set(title=title, ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="upper left")
        hist.bar(lo, count, width=width, align="edge", color="#888888", edgecolor="white")
        hist.set(xlabel="confidence (top-class probability)", ylabel="images")
        hist.yaxis.get_major_locator().set_params(integer=True)
        fig.subplots_adjust(hspace=0.08)
        return fig_to_uri(fig)
