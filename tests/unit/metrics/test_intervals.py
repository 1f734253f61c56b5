"""Intervals of test figures: right point values, class counts kept in resamples, seeds as their own level.
(Coverage in the hard regimes: test_interval_coverage.py; paired verdicts: test_paired.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import probs_with_argmax
from transferkit.metrics.classification import summary_metrics
from transferkit.metrics.intervals import (
    bootstrap_intervals,
    metric_intervals,
    resampled_metrics,
    seed_image_interval,
    stratified_resamples,
)


_probs_from = probs_with_argmax


@pytest.mark.parametrize("k, absent_pred", [(2, False), (4, False), (4, True)])
def test_point_values_equal_summary_metrics(k: int, absent_pred: bool):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, k, 300))
    if absent_pred:
        pred[pred == k - 1] = 0  # one class is never predicted: its precision/F1 are 0
    probs = _probs_from(pred, k, rng)
    full = resampled_metrics(y, probs, np.arange(len(y))[None, :], k)
    expected = summary_metrics(y, probs, k)
    for name, values in full.items():
        assert values[0] == pytest.approx(expected[name], abs=1e-12), name


def test_resamples_keep_every_class_count_and_draw_only_within_a_class():
    y = np.array([0] * 50 + [1] * 7 + [2] * 3)
    index = stratified_resamples(y, 500, seed=3)
    assert index.shape == (500, 60)
    assert (y[index] == y[None, :]).all()  # position i is always refilled from i's own class
    assert len(np.unique(index[:, 57:])) == 3  # the 3-image class is resampled among its own 3 images


def test_intervals_are_seeded_and_contain_the_point_value():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    probs = _probs_from(np.where(rng.random(200) < 0.8, y, (y + 1) % 3), 3, rng)
    a, b = bootstrap_intervals(y, probs, 3, seed=7), bootstrap_intervals(y, probs, 3, seed=7)
    assert a == b
    point = summary_metrics(y, probs, 3)
    for name, (lo, hi) in a.items():
        assert lo <= point[name] <= hi, name
    lo, hi = a["accuracy"]
    assert 0.08 < hi - lo < 0.14  # about 2 x 1.96 x sqrt(0.8 x 0.2 / 200) = 0.11


def test_seed_image_interval_lists_every_seed_and_counts_distinct_models():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 300)
    run = _probs_from(np.where(rng.random(300) < 0.8, y, 1 - y), 2, rng)
    one = seed_image_interval(y, [run], 2)
    assert one["mean"] == pytest.approx(summary_metrics(y, run, 2)["accuracy"])
    assert one["ci95"] == pytest.approx(bootstrap_intervals(y, run, 2, metrics=("accuracy",))["accuracy"])
    same = seed_image_interval(y, [run, run.copy(), run.copy()], 2)  # a deterministic method: one model, 3 seeds
    assert same["distinct_models"] == 1 and same["n_seeds"] == 3 and same["ci95"] == one["ci95"]
    worse = _probs_from(np.where(rng.random(300) < 0.6, y, 1 - y), 2, rng)
    spread = seed_image_interval(y, [run, worse], 2)
    assert spread["distinct_models"] == 2 and spread["per_seed"] == pytest.approx(
        [summary_metrics(y, r, 2)["accuracy"] for r in (run, worse)])
    assert spread["ci95"][0] <= spread["mean"] <= spread["ci95"][1]
    balanced = seed_image_interval(y, [run, worse], 2, "balanced_accuracy")
    assert balanced["ci95"][0] <= balanced["mean"] <= balanced["ci95"][1]


def test_the_method_of_every_interval_is_named_and_degenerate_bootstraps_say_why():
    y = np.r_[np.zeros(30, int), np.ones(20, int)]
    perfect = np.eye(2)[y] * 0.9 + 0.05
    intervals, notes = metric_intervals(y, perfect, 2)
    assert intervals["accuracy"][1] == 1.0 and intervals["accuracy"][0] < 0.95  # never [1.000, 1.000]
    assert intervals["balanced_accuracy"][0] < 0.95 and intervals["macro_f1"][0] < 0.95
    assert intervals["roc_auc"] is None and "cannot bound" in notes["roc_auc"]  # said, not silently [1, 1]
    assert "Bonferroni" in notes["macro_f1"]


def test_every_printed_metric_carries_its_interval_and_n(tiny_split_folder, tmp_path):
    import json
    import re

    from typer.testing import CliRunner

    from transferkit.cli import app

    run = tmp_path / "run"
    args = ["train", str(tiny_split_folder), "--epochs", "1", "--input-size", "32", "--batch-size", "8",
            "--workers", "0", "--out", str(run)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"test: accuracy \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\], .*n=8", result.output), result.output
    summary = json.loads((run / "summary.json").read_text())
    lo, hi = summary["ci95"]["accuracy"]
    assert lo <= summary["metrics"]["accuracy"] <= hi and summary["metrics_split"] == "test"
    evaluated = CliRunner().invoke(app, ["evaluate", str(run), str(tiny_split_folder / "val")])
    assert evaluated.exit_code == 0, evaluated.output
    assert re.search(r"8 images: accuracy \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", evaluated.output), evaluated.output
    assert "ci95" in json.loads((run / "evaluation.json").read_text())
