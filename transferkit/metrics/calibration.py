"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

One scalar ``T`` divides the logits before the softmax: the argmax, and so accuracy, balanced accuracy and
F1, are unchanged, as is a binary ROC AUC; only the confidence moves (a multiclass one-vs-rest ROC AUC can
shift slightly, since it ranks each class's probability across images). ``T`` is fitted by minimising the negative
log-likelihood on held-out data that chose nothing else it is reported on (transferkit fits it on the
selection split and reports ECE/NLL before and after on the test split).

Written here rather than taken from a library: the fit is a one-dimensional bounded minimisation
(``scipy.optimize.minimize_scalar`` over log T) and the libraries that offer it (netcal, torch-uncertainty)
would each pull in a training framework for ten lines.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

__all__ = ["fit_temperature", "apply_temperature", "log_probs", "nll", "T_BOUNDS"]

T_BOUNDS = (0.05, 20.0)  # beyond these a model is broken, not miscalibrated


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities from probabilities: logits up to a per-row constant, which a softmax ignores."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny, None))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) computed from softmax(logits): ``probs`` re-tempered (float32 out)."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float32)
    return np.exp(log_softmax(log_probs(probs) / float(temperature), axis=1)).astype(np.float32)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-scores[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The temperature minimising the NLL of ``labels`` (bounded search over log T in :data:`T_BOUNDS`).

    ``logits`` may be log-probabilities (:func:`log_probs`). Returns ``temperature``, ``n`` and the NLL
    before and after on the fitting data.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("no samples to fit a temperature on")
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    found = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(lo, hi), method="bounded",
                            options={"xatol": 1e-4})
    temperature = float(np.exp(found.x))
    return {"temperature": temperature, "n": int(len(labels)), "nll_before": nll(logits, labels),
            "nll_after": nll(logits, labels, temperature)}
