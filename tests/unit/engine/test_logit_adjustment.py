"""Post-hoc logit adjustment recovers a known prior shift, is chosen on selection data, and lives in the head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from transferkit.data.balance import adjust_logits
from transferkit.engine.balancing import TAU_GRID, choose_tau, fold_into_head
from transferkit.metrics.classification import summary_metrics


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _world(n: int, seed: int):
    """Three 1-d Gaussian classes; the exact posteriors under a skewed training prior and a uniform one."""
    rng = np.random.default_rng(seed)
    means, prior = np.array([-1.0, 0.0, 1.0]), np.array([0.90, 0.08, 0.02])
    y = rng.integers(0, 3, size=n)  # balanced evaluation data
    x = rng.normal(means[y], 0.6)
    log_lik = -0.5 * ((x[:, None] - means[None, :]) / 0.6) ** 2
    trained = _softmax(log_lik + np.log(prior))  # what a calibrated model fit on the skewed data outputs
    balanced = _softmax(log_lik)  # the Bayes posterior under a uniform prior
    return y, trained, balanced, prior


def test_tau_one_turns_the_skewed_posterior_into_the_balanced_one():
    _, trained, balanced, prior = _world(500, 0)
    adjusted = _softmax(adjust_logits(np.log(trained), prior, 1.0))
    assert np.allclose(adjusted, balanced, atol=1e-9)
    assert np.allclose(_softmax(adjust_logits(np.log(trained), prior, 0.0)), trained)


def test_tau_chosen_on_selection_data_recovers_the_shift_and_the_balanced_accuracy():
    y, trained, balanced, prior = _world(3000, 1)
    metrics = lambda labels, probs: summary_metrics(labels, probs, 3)  # noqa: E731
    record = choose_tau(y, trained, prior, metrics, "balanced_accuracy")
    assert 0.75 <= record["tau"] <= 1.25, record
    assert [row["tau"] for row in record["grid"]] == list(TAU_GRID) and 0.0 in TAU_GRID
    before = metrics(y, trained)["balanced_accuracy"]
    after = metrics(y, _softmax(adjust_logits(np.log(trained), prior, record["tau"])))["balanced_accuracy"]
    bayes = metrics(y, balanced)["balanced_accuracy"]
    assert after > before + 0.1 and abs(after - bayes) < 0.02


def test_balanced_data_keeps_tau_zero():
    y, _, balanced, _ = _world(2000, 2)
    record = choose_tau(y, balanced, np.full(3, 1 / 3), lambda a, b: summary_metrics(a, b, 3), "balanced_accuracy")
    assert record["tau"] == 0.0  # a uniform prior shifts nothing: every tau ties and the smallest wins


def test_folding_into_the_head_bias_applies_the_adjustment_to_every_prediction():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 3))
    x = torch.randn(6, 4)
    head.eval()
    before = head(x).detach().numpy().astype(np.float64)
    prior = np.array([0.7, 0.25, 0.05])
    fold_into_head(head, prior, 0.75)
    after = head(x).detach().numpy().astype(np.float64)
    assert np.allclose(after, adjust_logits(before, prior, 0.75), atol=1e-5)
    assert np.allclose(after - before, -0.75 * np.log(prior), atol=1e-5)
