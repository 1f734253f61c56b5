"""Per-class evidence: precision/recall/F1 intervals per class, in detailed_metrics and on the terminal."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import probs_with_argmax
from transferkit.metrics.classification import detailed_metrics, format_per_class
from transferkit.metrics.intervals import (
    PER_CLASS_METRICS,
    per_class_intervals,
    resampled_metrics,
    resampled_per_class,
    stratified_resamples,
)


_probs_from = probs_with_argmax


def _simulate(rng: np.random.Generator, rare_recall: float = 0.5, n_rare: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """3 classes (80, 60, ``n_rare`` images); the rare class 2 is found with probability ``rare_recall``
    (misses go to class 0 or 1), the others are right 90% of the time."""
    y = np.r_[np.zeros(80, int), np.ones(60, int), np.full(n_rare, 2)]
    pred = y.copy()
    missed = (y == 2) & (rng.random(len(y)) >= rare_recall)
    pred[missed] = rng.integers(0, 2, missed.sum())
    wrong = (y < 2) & (rng.random(len(y)) < 0.1)
    pred[wrong] = (y[wrong] + 1) % 3
    return y, _probs_from(pred, 3, rng)


def test_intervals_hold_the_truth_and_the_sklearn_point_values():
    y, probs = _simulate(np.random.default_rng(0))
    result = per_class_intervals(y, probs, 3)
    assert len(result) == 3 and all(set(r) == set(PER_CLASS_METRICS) for r in result)
    lo, hi = result[2]["recall"]
    assert lo <= 0.5 <= hi and 0.2 < hi - lo < 0.4  # about 2 x 1.96 x sqrt(0.25 / 40) = 0.31
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y, probs.argmax(1), labels=[0, 1, 2], zero_division=0)
    for c in range(3):
        for name, point in (("precision", precision[c]), ("recall", recall[c]), ("f1", f1[c])):
            low, high = result[c][name]
            assert low <= point <= high, (c, name)


def test_full_sample_values_match_sklearn_and_the_summary_bootstrap():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 4, 300))
    pred[pred == 3] = 0  # class 3 is never predicted
    probs = _probs_from(pred, 4, rng)
    full = resampled_per_class(y, probs, np.arange(len(y))[None, :], 4)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2, 3], zero_division=0)
    np.testing.assert_allclose(full["recall"][0], recall)
    np.testing.assert_allclose(full["f1"][0], f1)
    np.testing.assert_allclose(full["precision"][0, :3], precision[:3])
    assert np.isnan(full["precision"][0, 3])  # undefined, not scikit-learn's zero_division 0
    # the same resamples as the summary intervals: their per-class means are balanced accuracy and macro-F1
    index = stratified_resamples(y, 200, seed=0)
    per_class, summary = resampled_per_class(y, probs, index, 4), resampled_metrics(y, probs, index, 4, ("balanced_accuracy", "macro_f1"))
    np.testing.assert_allclose(per_class["recall"].mean(axis=1), summary["balanced_accuracy"])
    np.testing.assert_allclose(per_class["f1"].mean(axis=1), summary["macro_f1"])


def test_undefined_figures_are_none_and_absent_classes_follow_sklearn_for_f1():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(50, int), np.ones(30, int), np.full(10, 2)]
    pred = np.where(y == 2, 0, y)  # class 2 is never predicted; class 3 has no images and is never predicted
    result = per_class_intervals(y, _probs_from(pred, 4, rng), 4)
    # 0 of 10 found: recall is not known to be exactly 0, only to be below the Clopper-Pearson limit
    assert result[2]["precision"] is None and result[2]["recall"] == [0.0, pytest.approx(0.3085, abs=1e-3)]
    assert result[2]["f1"][0] == 0.0 and 0 < result[2]["f1"][1] < 1  # precision unknown: anywhere in [0, 1]
    assert result[3] == {"precision": None, "recall": None, "f1": None}  # no images: nothing to estimate
    # 30 of 30 right and never wrongly predicted: the intervals reach 1 but are not [1.0, 1.0]
    assert result[1]["recall"] == [pytest.approx(0.8843, abs=1e-3), 1.0] and result[1]["precision"][1] == 1.0
    assert result[1]["f1"][0] < result[1]["recall"][0] and result[1]["f1"][1] == 1.0
    assert per_class_intervals([], np.zeros((0, 2)), 2) == [{m: None for m in PER_CLASS_METRICS}] * 2


def test_intervals_are_deterministic():
    y, probs = _simulate(np.random.default_rng(3))
    assert per_class_intervals(y, probs, 3, seed=5) == per_class_intervals(y, probs, 3, seed=6)  # no resampling


def test_nominal_95_interval_covers_a_rare_class_recall_at_least_93_percent_of_the_time():
    rng = np.random.default_rng(123)
    truth, covered = 0.5, 0
    for draw in range(200):
        y, probs = _simulate(rng, truth, n_rare=40)
        lo, hi = per_class_intervals(y, probs, 3, n_resamples=1000, seed=draw)[2]["recall"]
        covered += lo <= truth <= hi
    assert covered / 200 >= 0.93, covered / 200


def test_fast_enough_for_every_run():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 6, 500)
    probs = _probs_from(np.where(rng.random(500) < 0.8, y, rng.integers(0, 6, 500)), 6, rng)
    per_class_intervals(y, probs, 6)  # warm-up
    started = time.perf_counter()
    per_class_intervals(y, probs, 6, n_resamples=1000)
    assert time.perf_counter() - started < 1.0  # ~0.02 s on an idle core; generous for a busy machine


# --- detailed_metrics and the terminal table ------------------------------------------------------------------


def test_detailed_metrics_keeps_every_key_and_adds_per_class_intervals():
    y, probs = _simulate(np.random.default_rng(6))
    classes = ["cat", "dog", "rare bird"]
    details = detailed_metrics(y, probs, classes)
    assert set(details) == {"metrics", "ci95", "ci_methods", "ci_notes", "per_class", "confusion_matrix", "classes",
                            "calibration", "n"}
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, probs.argmax(1), labels=[0, 1, 2], zero_division=0)
    intervals = per_class_intervals(y, probs, 3, n_resamples=1000, seed=0)
    for i, name in enumerate(classes):
        row = details["per_class"][name]
        assert set(row) == {"precision", "recall", "f1", "support", "ci95"}
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i]))
        assert row["ci95"] == intervals[i]
    assert json.loads(json.dumps(details))["per_class"]["rare bird"]["ci95"] == intervals[2]  # JSON as written


def test_format_per_class_puts_the_lowest_recall_first_with_intervals():
    rng = np.random.default_rng(7)
    y, probs = _simulate(rng, rare_recall=0.3)
    details = detailed_metrics(y, probs, ["cat", "dog", "rare bird"])
    text = format_per_class(details)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["class", "n"] and "recall" in lines[0] and "F1" in lines[0]
    assert len(lines) == 4 and lines[1].startswith("rare bird")
    row = details["per_class"]["rare bird"]
    lo, hi = row["ci95"]["recall"]
    assert f"{row['recall']:.3f} [{lo:.3f}, {hi:.3f}]" in lines[1] and " 40 " in lines[1]
    recalls = [details["per_class"][line.split("  ")[0].strip()]["recall"] for line in lines[1:]]
    assert recalls == sorted(recalls)
    assert f"{row['recall']:.2f} [{lo:.2f}, {hi:.2f}]" in format_per_class(details, digits=2).splitlines()[1]


def test_format_per_class_reads_older_results_and_puts_absent_classes_last():
    old = {"per_class": {"a": {"precision": 0.5, "recall": 1.0, "f1": 0.67, "support": 2},
                         "b": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
                         "c": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 4}}}
    lines = format_per_class(old, digits=2).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["c", "a", "b"]
    assert "0.50" in lines[1] and "[" not in "".join(lines[1:]) and "n/a" in lines[3]
