"""How the probe's L2 strength is chosen, and what a run says about it.

A selection split below ``CV_BELOW`` images does not choose alone: k-fold cross-validation over train +
selection does, the fold scores are recorded, and the probe is refitted on train only. A fit that did not
converge (scikit-learn's ConvergenceWarning, at the iteration limit or before it) is recorded as such and
said in the run's line, summary.json and the report.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

import transferkit as tk
import transferkit.features.lbfgs as lbfgs
import transferkit.features.probe as probe
from conftest import TINY, make_image_folder
from transferkit.features.probe import fit_linear_probe


def _blobs(n: int, dim: int = 30, classes: int = 3, seed: int = 0, scale: float = 0.5):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 1, (classes, dim))
    y = np.arange(n) % classes  # every class in every split
    x = centres[y] * scale + rng.normal(0, 1, (n, dim))
    return (x * np.geomspace(0.1, 10, dim) + 2.0).astype(np.float32), y


def test_a_small_selection_split_chooses_by_cross_validation_over_train_and_selection():
    x, y = _blobs(150)
    sel = _blobs(30, seed=1)
    assert len(sel[1]) < probe.CV_BELOW
    fit = fit_linear_probe(x, y, sel)
    assert fit.selected_on.startswith("5-fold cross-validation on train + selection (180 rows") and fit.folds == 5
    for c in fit.grid:  # every candidate's fold scores are kept
        assert len(c["fold_nll"]) == len(c["fold_score"]) == 5
        assert min(c["fold_nll"]) <= c["nll"] <= max(c["fold_nll"])
    chosen = next(c for c in fit.grid if c["l2"] == fit.l2)
    assert chosen["nll"] == min(c["nll"] for c in fit.grid)
    record = fit.record()
    assert record["folds"] == 5 and record["grid"][0]["fold_nll"] and "cross-validation" in record["selected_on"]
    # the probe itself is fitted on the training rows alone (the selection split stays held out)
    z = (x.astype(np.float64) - fit.mean) / fit.std
    alone = LogisticRegression(C=1.0 / (fit.l2 * len(y)), max_iter=lbfgs.MAX_ITER, tol=lbfgs.TOL).fit(z, y)
    np.testing.assert_allclose(fit.predict_proba(x), alone.predict_proba(z), atol=1e-6)
    assert fit.train_rows == 150


def test_a_large_selection_split_chooses_alone():
    x, y = _blobs(150)
    fit = fit_linear_probe(x, y, _blobs(probe.CV_BELOW, seed=1))
    assert fit.selected_on == f"selection split (n={probe.CV_BELOW})" and fit.folds == 0
    assert "fold_nll" not in fit.grid[0]


def test_cached_views_of_one_image_stay_in_one_fold():
    y = np.tile(np.arange(40) % 2, 3)  # 3 views of 40 images, view by view
    groups = np.tile(np.arange(40), 3)
    splits, folds = probe._fold_splits(y, groups, 5)
    assert folds == 5
    for fit_rows, held_rows in splits:
        assert not set(groups[fit_rows]) & set(groups[held_rows])


class _LineSearchFails(LogisticRegression):
    """L-BFGS stopping short before the iteration limit (as a failed line search does): scikit-learn warns."""

    def fit(self, X, y, sample_weight=None):
        super().fit(X, y, sample_weight)
        warnings.warn("lbfgs failed to converge after 7 iteration(s) (status=2):\nABNORMAL: line search failed\n",
                      ConvergenceWarning)
        return self


def test_a_convergence_warning_before_the_iteration_limit_is_not_convergence(monkeypatch):
    monkeypatch.setattr(lbfgs, "LogisticRegression", _LineSearchFails)
    x, y = _blobs(90)
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        fit = fit_linear_probe(x, y, _blobs(probe.CV_BELOW, seed=1), l2_grid=(1e-2, 1e-1))
    assert not [w for w in leaked if issubclass(w.category, ConvergenceWarning)]  # recorded, not printed
    assert all(c["iterations"] < lbfgs.MAX_ITER for c in fit.grid)
    assert not any(c["converged"] for c in fit.grid) and not fit.converged
    assert fit.convergence_note.startswith("did not converge (the solver stopped after")
    assert "line search failed" in fit.convergence_note
    assert fit.describe().startswith("linear probe that did not converge")


def test_a_run_says_how_the_strength_was_chosen_and_that_the_probe_did_not_converge(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(lbfgs, "MAX_ITER", 2)
    data = tmp_path / "data"
    make_image_folder(data / "train", {"a": 10, "b": 10}, seed=1)
    make_image_folder(data / "val", {"a": 4, "b": 4}, seed=2)
    make_image_folder(data / "test", {"a": 5, "b": 5}, seed=3)
    result = tk.train(data, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), **dict(TINY, quiet=False))
    said = capsys.readouterr()
    said = said.out + said.err
    head = result.summary["head_fit"]
    assert head["method"] == "probe" and head["converged"] is False and head["max_iter"] == 2
    assert head["convergence"] == "did not converge in 2 iterations"
    assert head["selected_on"].startswith(f"{head['folds']}-fold cross-validation on train + selection (28 rows")
    assert all(len(c["fold_nll"]) == head["folds"] for c in head["grid"])
    assert "linear probe that did not converge in 2 iterations" in said and "cross-validation on train + selection" in said
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["head_fit"]["converged"] is False and line["head_fit"]["grid"][0]["fold_score"]
    report = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "did not converge in 2 iterations" in report and "cross-validation on train + selection" in report


@pytest.mark.parametrize("case", ["feature-extraction", "lp-ft", "calibrated"])
def test_the_probe_is_refitted_on_train_and_selection_only_when_the_selection_split_chooses_nothing_after_it(
        case: str, tmp_path: Path, monkeypatch):
    import transferkit.engine.calibration as calibration

    data = tmp_path / "data"
    make_image_folder(data / "train", {"a": 10, "b": 10}, seed=1)
    make_image_folder(data / "val", {"a": 4, "b": 4}, seed=2)
    make_image_folder(data / "test", {"a": 5, "b": 5}, seed=3)
    settings = dict(TINY, strategy="lp-ft", warmup_epochs=1, epochs=2) if case == "lp-ft" else dict(TINY)
    if case == "calibrated":
        monkeypatch.setattr(calibration, "MIN_SELECTION", 1)  # the 8 val images now fit the temperature
    summary = tk.train(data, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), **settings).summary
    head = summary["head_fit"]
    if case == "feature-extraction":  # nothing after the probe chooses on val/: it joins the final fit
        assert head["refit_on"] == "train + selection" and head["train_rows"] == 28
        assert head["selected_on"].endswith("; refitted on train + selection")
        assert summary["calibration"]["method"] == "none"
        line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
        assert line["selection_in_sample"] is True  # its selection figures were fitted on: said so
    else:  # val/ still chooses the fine-tuning epoch or the temperature: it stays held out
        assert head["refit_on"] == "train" and head["train_rows"] == 20
        assert head["selected_on"].endswith("; refitted on train")
        line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
        assert "selection_in_sample" not in line
