"""The converged linear probe: folding is exact, selection uses only the selection split, scale falls back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import transferkit as tk
import transferkit.engine.loop as loop
import transferkit.features.headfit as headfit
import transferkit.features.probe as probe
import transferkit.report as report
from conftest import TINY, make_image_folder
from transferkit.config import RunCfg, StrategyCfg, config_from_dict
from transferkit.errors import ConfigError
from transferkit.features.probe import fit_linear_probe, fold_standardisation, probe_fits_in_memory
from transferkit.strategy.plan import make_plan


@pytest.fixture(autouse=True)
def _no_html_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "build_run_report", lambda *a, **k: None)  # seconds per run, not under test here


def _blobs(n: int, dim: int = 40, classes: int = 3, seed: int = 0, scale: float = 0.6):
    """Overlapping Gaussian classes with features on very different scales and offsets (as embeddings are)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 1, (classes, dim))
    y = rng.integers(0, classes, n)
    x = centres[y] * scale + rng.normal(0, 1, (n, dim))
    x = x * np.geomspace(0.05, 20, dim) + np.linspace(-3, 5, dim)
    return x.astype(np.float32), y


# --- (a) the folded standardisation is the unfolded pipeline --------------------------------------


def test_folding_is_exact_for_any_weights():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 30)), rng.normal(size=4)
    mean, std = rng.normal(size=30) * 3, rng.uniform(0.01, 10, 30)
    x = rng.normal(size=(50, 30)) * std + mean
    folded_w, folded_b = fold_standardisation(w, b, mean, std)
    np.testing.assert_allclose(x @ folded_w.T + folded_b, ((x - mean) / std) @ w.T + b, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("classes", [3, 2])
def test_folded_linear_gives_the_unfolded_pipelines_logits(classes):
    x, y = _blobs(300, classes=classes)
    sel_x, sel_y = _blobs(100, classes=classes, seed=1)
    fit = fit_linear_probe(x, y, (sel_x, sel_y))
    test_x, _ = _blobs(80, classes=classes, seed=2)
    unfolded_probs = fit.estimator.predict_proba((test_x.astype(np.float64) - fit.mean) / fit.std)
    np.testing.assert_allclose(fit.predict_proba(test_x), unfolded_probs, rtol=1e-7, atol=1e-9)
    if classes > 2:  # scikit-learn's multinomial logits themselves (binary: one logit, compared through probs)
        unfolded = fit.estimator.decision_function((test_x.astype(np.float64) - fit.mean) / fit.std)
        np.testing.assert_allclose(fit.logits(test_x), unfolded, rtol=1e-9, atol=1e-8)
    layer = fit.linear()  # what the run saves: a float32 Linear on raw features
    with torch.no_grad():
        logits32 = layer(torch.from_numpy(test_x)).double().numpy()
    np.testing.assert_allclose(logits32, fit.logits(test_x), rtol=1e-4, atol=1e-4)
    assert (logits32.argmax(1) == unfolded_probs.argmax(1)).all()


def test_probe_matches_a_plain_scikit_learn_pipeline_at_the_same_strength():
    x, y = _blobs(400)
    fit = fit_linear_probe(x, y, _blobs(150, seed=1), scalings=("feature",))
    plain = make_pipeline(StandardScaler(), LogisticRegression(C=fit.C, max_iter=5000, tol=1e-8)).fit(x, y)
    test_x, _ = _blobs(200, seed=3)
    np.testing.assert_allclose(fit.predict_proba(test_x), plain.predict_proba(test_x), atol=2e-3)
    assert all(c["converged"] for c in fit.grid) and fit.train_accuracy > 0.9


def test_absent_class_never_wins_and_grid_is_recorded():
    x, y = _blobs(200, classes=3)
    fit = fit_linear_probe(x, y, _blobs(60, classes=3, seed=1), n_classes=5)
    assert fit.weight.shape == (5, 40) and (fit.logits(x).argmax(1) < 3).all()
    assert [(c["scaling"], c["l2"]) for c in fit.grid] == [(probe.SCALINGS[0], l2) for l2 in sorted(probe.L2_GRID)]
    assert fit.l2 in probe.L2_GRID and fit.scaling in probe.SCALINGS
    assert {"scaling", "l2", "C", "score", "nll", "iterations", "converged"} <= set(fit.grid[0])
    both = fit_linear_probe(x, y, _blobs(60, classes=3, seed=1), scalings=("feature", "global"))
    assert len(both.grid) == 2 * len(probe.L2_GRID)
    assert next(c for c in both.grid if (c["l2"], c["scaling"]) == (both.l2, both.scaling))["nll"] == min(c["nll"] for c in both.grid)
    unfolded = both.estimator.predict_proba((x.astype(np.float64) - both.mean) / both.std)
    np.testing.assert_allclose(both.predict_proba(x), unfolded, rtol=1e-7, atol=1e-9)
    by_folds = fit_linear_probe(x, y)  # no selection split: stratified k-fold on train
    assert "fold" in by_folds.selected_on and by_folds.l2 in probe.L2_GRID


# --- (b) the chosen L2 strength depends only on the selection split -------------------------------


def test_choice_is_a_function_of_train_and_selection_only():
    x, y = _blobs(300, scale=0.25)
    sel = _blobs(120, scale=0.25, seed=1)
    a, b = fit_linear_probe(x, y, sel), fit_linear_probe(x.copy(), y.copy(), (sel[0].copy(), sel[1].copy()))
    assert a.l2 == b.l2 and np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    chosen = next(c for c in a.grid if c["l2"] == a.l2)
    assert chosen["nll"] == min(c["nll"] for c in a.grid) and a.selection_score == chosen["score"]


def _three_way_folder(root: Path) -> Path:
    make_image_folder(root / "train", {"a": 10, "b": 10, "c": 10}, seed=1)
    make_image_folder(root / "val", {"a": 4, "b": 4, "c": 4}, seed=2)
    make_image_folder(root / "test", {"a": 5, "b": 5, "c": 5}, seed=3)
    return root


def test_test_split_never_influences_the_fit(tmp_path):
    data = _three_way_folder(tmp_path / "data")
    first = tk.train(data, out=str(tmp_path / "r1"), cache_dir=str(tmp_path / "c1"), **TINY)
    test = data / "test"  # relabel the test images: swap two class folders
    (test / "a").rename(test / "tmp")
    (test / "b").rename(test / "a")
    (test / "tmp").rename(test / "b")
    second = tk.train(data, out=str(tmp_path / "r2"), cache_dir=str(tmp_path / "c2"), **TINY)
    h1, h2 = first.summary["head_fit"], second.summary["head_fit"]
    assert h1["method"] == "probe" and h1["l2"] == h2["l2"] and h1["grid"] == h2["grid"]
    w1, w2 = load_file(tmp_path / "r1" / "model.safetensors"), load_file(tmp_path / "r2" / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert first.summary["selection_metrics"] == second.summary["selection_metrics"]  # val/ chose: identical
    assert first.summary["metrics"] != second.summary["metrics"]  # the relabelling did reach test


# --- (c) above the row threshold: the streaming mini-batch path ------------------------------------


def test_probe_threshold_follows_memory():
    assert probe_fits_in_memory(100_000, 1280) and not probe_fits_in_memory(1_000_000, 1280)
    cfg = RunCfg()
    plan = make_plan(StrategyCfg(name="feature-extraction"), ["g1", "g2"], 3)
    assert headfit.probe_planned(cfg, plan, 3_000, 1280)
    assert not headfit.probe_planned(cfg, plan, 1_000_000, 1280), "the 1M-row cache keeps the streaming path"
    mlp = config_from_dict({"model": {"head": "mlp"}})
    assert not headfit.probe_planned(mlp, plan, 3_000, 1280), "the MLP head keeps its SGD epochs"
    no_cache = config_from_dict({"engine": {"cache": False}})
    assert not headfit.probe_planned(no_cache, plan, 3_000, 1280)
    forced = config_from_dict({"engine": {"cache": False}, "model": {"head_fit": "probe"}})
    assert headfit.probe_planned(forced, plan, 3_000, 1280)
    finetune = make_plan(StrategyCfg(name="finetune"), ["g1", "g2"], 3)
    assert not headfit.probe_planned(cfg, finetune, 3_000, 1280)
    with pytest.raises(ConfigError, match="head_fit"):
        config_from_dict({"model": {"head": "mlp", "head_fit": "probe"}})
    with pytest.raises(ConfigError, match="head_fit"):
        config_from_dict({"model": {"head_fit": "lbfgs"}})


def test_large_set_takes_the_streaming_sgd_path(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "PROBE_MAX_BYTES", 1000)  # "too many rows" for a full-batch solver
    monkeypatch.setattr(headfit, "MEMORY_BUDGET", 0)  # and too many to hold: every batch is read from the store
    built: list[headfit.FeatureSet] = []
    real = headfit.FeatureSet

    def recording(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(headfit, "FeatureSet", recording)
    called = []
    monkeypatch.setattr(headfit, "fit_linear_probe", lambda *a, **k: called.append(1))
    result = tk.train(tiny_folder, out=str(tmp_path / "run"), **dict(TINY, epochs=2, lr=0.02))
    assert not called and result.summary["head_fit"] == {"method": "sgd"}
    assert built and all(fs.streamed and fs.data is None for fs in built)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "head_fit" not in records[0]


# --- run-level behaviour ----------------------------------------------------------------------------


def test_selectable_sgd_head_keeps_the_epochs(tiny_folder, tmp_path):
    result = tk.train(tiny_folder, out=str(tmp_path / "sgd"), overrides={"model.head_fit": "sgd"}, **dict(TINY, epochs=2))
    records = (tmp_path / "sgd" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 2 and result.summary["head_fit"] == {"method": "sgd"}


class _Crash(Exception):
    pass


def test_lp_ft_from_the_probe_resumes_bit_identically(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 10, "b": 10}, seed=5)
    params = dict(strategy="lp-ft", warmup_epochs=2, epochs=3, seed=7, lr=3e-3, **TINY)
    full = tk.train(data, out=str(tmp_path / "full"), **params)
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [2, 3] and records[0]["head_fit"]["replaces_epochs"] == 2
    assert records[0]["trainable_groups"] == ["head"] and len(records[1]["trainable_groups"]) > 1
    assert full.summary["epochs_run"] == 3 and full.summary["head_fit"]["method"] == "probe"
    steps = 2  # 12 training images at batch 8; fine-tuning starts at step 2 x 2: the probe kept the schedule
    real = loop.optimizer_step
    seen: list[int] = []

    def step_or_crash(ctx, loss, global_step):
        seen.append(global_step)
        if global_step == 2 * steps + 1:
            raise _Crash()
        return real(ctx, loss, global_step)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(_Crash):
        mp.setattr(loop, "optimizer_step", step_or_crash)
        tk.train(data, out=str(tmp_path / "killed"), **params)
    assert seen[0] == 2 * steps
    resumed = tk.resume(tmp_path / "killed", quiet=True)
    strip = lambda run: [{k: v for k, v in json.loads(x).items() if k not in ("time_s",)}  # noqa: E731
                         for x in (run / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(strip(tmp_path / "killed"), strip(tmp_path / "full")):
        a.get("head_fit", {}).pop("fit_s", None), b.get("head_fit", {}).pop("fit_s", None)
        assert a == b
    w1, w2 = load_file(tmp_path / "killed" / "model.safetensors"), load_file(tmp_path / "full" / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert resumed.summary["head_fit"]["l2"] == full.summary["head_fit"]["l2"]
