"""When a temperature is fitted on the selection split: enough images, and enough of them misclassified.

With no misclassified selection image the NLL keeps falling as T -> 0, so the fit runs to its bound and every
answer becomes over-confident (benchmarks/results/defaults_cv.md: NEU's 99.6%-accurate probe, any n up to 900).
"""

from __future__ import annotations

import numpy as np

import transferkit.engine.calibration as calibration
from transferkit.engine.calibration import fit_calibration, fits_temperature


def _selection(n: int, errors: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = np.full((n, 3), 0.05)
    predicted = labels.copy()
    predicted[:errors] = (labels[:errors] + 1) % 3
    probs[np.arange(n), predicted] = 0.9
    return {"labels": labels, "probs": probs}


def test_no_temperature_from_a_selection_split_with_too_few_errors():
    n = calibration.MIN_SELECTION + 50
    record = fit_calibration("temperature", _selection(n, errors=calibration.MIN_ERRORS - 1))
    assert record["method"] == "none" and record["temperature"] == 1.0
    assert record["errors"] == calibration.MIN_ERRORS - 1 and "misclassified" in record["reason"]


def test_a_temperature_from_enough_images_with_enough_errors():
    record = fit_calibration("temperature", _selection(calibration.MIN_SELECTION + 50, errors=calibration.MIN_ERRORS + 20))
    assert record["method"] == "temperature" and record["temperature"] != 1.0 and record["fitted_on"] == "selection"


def test_fits_temperature_follows_the_image_count():
    assert fits_temperature("temperature", calibration.MIN_SELECTION)
    assert not fits_temperature("temperature", calibration.MIN_SELECTION - 1)
    assert not fits_temperature("none", 10 * calibration.MIN_SELECTION)
