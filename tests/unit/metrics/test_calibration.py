"""Temperature scaling recovers a known miscalibration, keeps every argmax, and is applied where probabilities leave."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from transferkit.engine.calibration import MIN_SELECTION, fit_calibration
from transferkit.metrics.calibration import apply_temperature, fit_temperature, log_probs
from transferkit.metrics.classification import expected_calibration_error


def _calibrated_problem(n: int = 6000, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): z is perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, k))
    labels = np.array([rng.choice(k, p=p) for p in softmax(z, axis=1)])
    return z, labels


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_fitted_temperature_recovers_a_known_miscalibration(scale: float) -> None:
    z, labels = _calibrated_problem()
    fit = fit_temperature(z * scale, labels)  # over-confident (x3) or under-confident (x0.5) logits
    assert fit["temperature"] == pytest.approx(scale, rel=0.08)
    assert fit["nll_after"] < fit["nll_before"]
    fixed = apply_temperature(softmax(z * scale, axis=1), fit["temperature"])
    np.testing.assert_allclose(fixed, softmax(z, axis=1), atol=0.03)
    before = expected_calibration_error(labels, softmax(z * scale, axis=1))["ece"]
    after = expected_calibration_error(labels, fixed)["ece"]
    assert after < before / 2 and after < 0.03


def test_temperature_keeps_every_argmax_and_log_probs_stand_for_logits() -> None:
    z, labels = _calibrated_problem(n=500)
    probs = softmax(z * 2, axis=1)
    for t in (0.3, 1.0, 4.0):
        assert (apply_temperature(probs, t).argmax(1) == probs.argmax(1)).all()
    # fitting on log-probabilities gives the temperature fitted on the logits (a per-row shift changes nothing)
    assert fit_temperature(log_probs(probs), labels)["temperature"] == pytest.approx(
        fit_temperature(z * 2, labels)["temperature"], rel=1e-3)


def test_calibration_record_needs_enough_selection_images() -> None:
    z, labels = _calibrated_problem(n=MIN_SELECTION + 50)
    record = fit_calibration("temperature", {"probs": softmax(z * 3, axis=1), "labels": labels})
    assert record["method"] == "temperature" and record["fitted_on"] == "selection" and record["temperature"] > 2
    few = fit_calibration("temperature", {"probs": softmax(z[:20], axis=1), "labels": labels[:20]})
    assert few["method"] == "none" and few["temperature"] == 1.0 and "at least" in few["reason"]
    assert fit_calibration("temperature", None)["reason"].startswith("no selection split")
    assert fit_calibration("none", {"probs": softmax(z, axis=1), "labels": labels}) is None


def test_train_records_the_calibration_and_can_skip_it(tmp_path) -> None:
    import json

    import transferkit as tk
    from conftest import TINY, make_image_folder

    data = make_image_folder(tmp_path / "data", {"a": 10, "b": 10})
    run = tk.train(data, out=str(tmp_path / "run"), epochs=1, cache=False, **TINY)
    assert run.summary["calibration"]["method"] == "none" and "at least 100" in run.summary["calibration"]["reason"]
    off = tk.train(data, out=str(tmp_path / "off"), epochs=1, cache=False, calibrate="none", **TINY)
    assert off.summary["calibration"] is None
    assert json.loads((tmp_path / "off" / "model.json").read_text())["head"]["temperature"] == 1.0
