"""Bootstrap intervals and paired differences: right point values, class counts kept, honest coverage."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import probs_with_argmax
from transferkit.metrics.classification import summary_metrics
from transferkit.metrics.intervals import (
    bootstrap_intervals,
    paired_difference,
    resampled_metrics,
    seed_image_interval,
    stratified_resamples,
    verdict,
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


def test_nominal_95_interval_covers_the_true_accuracy_at_least_90_percent_of_the_time():
    # EVALUATION.md's coverage check: labels/predictions drawn with a known accuracy, 200 draws
    rng = np.random.default_rng(123)
    truth, n, covered = 0.85, 150, 0
    for draw in range(200):
        y = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < truth, y, 1 - y)
        lo, hi = bootstrap_intervals(y, _probs_from(pred, 2, rng), 2, n_resamples=1000, seed=draw,
                                     metrics=("accuracy",))["accuracy"]
        covered += lo <= truth <= hi
    assert covered / 200 >= 0.90, covered / 200


def test_paired_difference_verdicts():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    seeds_a, seeds_b, seeds_c = [], [], []
    for _ in range(3):
        right_b = rng.random(400) < 0.75
        right_a = right_b | (rng.random(400) < 0.6)  # a is right wherever b is, and on most of the rest
        seeds_a.append(_probs_from(np.where(right_a, y, 1 - y), 2, rng))
        seeds_b.append(_probs_from(np.where(right_b, y, 1 - y), 2, rng))
        seeds_c.append(seeds_b[-1].copy())
    better = paired_difference(y, seeds_a, seeds_b, 2)
    assert better["verdict"] == "better" and better["difference"] > 0.1 and better["ci95"][0] > 0
    assert paired_difference(y, seeds_b, seeds_a, 2)["verdict"] == "worse"
    same = paired_difference(y, seeds_b, seeds_c, 2)
    assert same["difference"] == 0 and same["verdict"] == "no clear difference"
    assert verdict(None) == "no clear difference" and verdict([-0.01, 0.02]) == "no clear difference"


def test_seed_image_interval_of_one_run_matches_the_image_bootstrap_and_widens_with_seed_spread():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 300)
    run = _probs_from(np.where(rng.random(300) < 0.8, y, 1 - y), 2, rng)
    one = seed_image_interval(y, [run], 2, n_resamples=1000, seed=4)
    assert one["mean"] == pytest.approx(summary_metrics(y, run, 2)["accuracy"])
    lo, hi = one["ci95"]
    ref_lo, ref_hi = bootstrap_intervals(y, run, 2, n_resamples=1000, seed=4, metrics=("accuracy",))["accuracy"]
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi), abs=0.02)
    worse = _probs_from(np.where(rng.random(300) < 0.6, y, 1 - y), 2, rng)
    spread = seed_image_interval(y, [run, worse], 2, n_resamples=1000, seed=4)["ci95"]
    assert spread[1] - spread[0] > hi - lo  # disagreeing seeds add their own uncertainty


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
