"""Post-hoc calibration of a finished run: one temperature, fitted on the selection split, reported on test.

The selection split already chose the epoch (and tau of the logit adjustment); fitting one more scalar on it
keeps the test split untouched: its labels never reach :func:`fit_calibration`. Without a selection split
(``--select last``) no temperature is fitted, rather than fitting one on the test split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transferkit.metrics.calibration import apply_temperature, fit_temperature, log_probs
from transferkit.metrics.classification import expected_calibration_error, summary_metrics

__all__ = ["CALIBRATIONS", "MIN_SELECTION", "fit_calibration", "temperature_of", "tempered", "test_calibration"]

CALIBRATIONS = ("temperature", "none")
# Below this many selection images no temperature is fitted: on hymenoptera's 37 a fine-tuned model (`transferkit
# train hymenoptera --strategy finetune --epochs 2 --input-size 128`) got
# T = 0.29, which made the test ECE worse (0.079 -> 0.105); the NLL of a few dozen images is dominated by one
# or two confident mistakes. Guo et al. fitted on thousands.
MIN_SELECTION = 100


def fit_calibration(method: str, selection: dict[str, Any] | None) -> dict[str, Any] | None:
    """The calibration record of summary.json (None when ``method`` is none).

    ``selection``: the chosen model's predictions on the selection split (``probs``, ``labels``).
    """
    if method == "none":
        return None
    if not selection or not len(selection["labels"]):
        return {"method": "none", "temperature": 1.0,
                "reason": "no selection split (--select last): a temperature is never fitted on the test split"}
    n = len(selection["labels"])
    if n < MIN_SELECTION:
        return {"method": "none", "temperature": 1.0, "n": int(n),
                "reason": f"only {n} selection images; a temperature needs at least {MIN_SELECTION} to be trusted"}
    fit = fit_temperature(log_probs(selection["probs"]), selection["labels"])
    return {"method": "temperature", "temperature": round(fit["temperature"], 6), "fitted_on": "selection",
            "n": fit["n"], "selection_nll_before": fit["nll_before"], "selection_nll_after": fit["nll_after"]}


def temperature_of(record: dict[str, Any] | None) -> float:
    return float(record["temperature"]) if record and record.get("method") == "temperature" else 1.0


def tempered(result: dict[str, Any], temperature: float) -> dict[str, Any]:
    """A prediction result (``probs``, ``labels``, ...) with its probabilities at ``temperature``."""
    return {**result, "probs": apply_temperature(result["probs"], temperature)}


def test_calibration(labels: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, k: int) -> dict[str, Any]:
    """ECE and NLL of the test split before and after, and the 'before' reliability bins for the report."""
    before, after = summary_metrics(labels, raw, k), summary_metrics(labels, calibrated, k)
    ece_before, ece_after = expected_calibration_error(labels, raw), expected_calibration_error(labels, calibrated)
    return {"n": int(len(labels)), "ece_before": ece_before["ece"], "ece_after": ece_after["ece"],
            "nll_before": before["nll"], "nll_after": after["nll"], "bins_before": ece_before["bins"]}
