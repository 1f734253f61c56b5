"""compare says what is and is not a difference: paired verdicts on the same images, and what else differs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from transferkit.compare import comparison_table, differing_settings, paired_verdicts
from transferkit.errors import ConfigError


def _run(folder: Path, labels: np.ndarray, right: np.ndarray, config: dict, bn: str = "frozen", split: str = "test") -> str:
    folder.mkdir(parents=True)
    rows = [{"path": f"/data/img{i:03d}.jpg", "label": int(y), "probs": [0.9, 0.1] if (y == 0) == ok else [0.1, 0.9]}
            for i, (y, ok) in enumerate(zip(labels, right))]
    (folder / f"{split}_predictions.json").write_text(json.dumps(rows[::-1]))  # order must not matter
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "plan.json").write_text(json.dumps({"bn": bn}))
    return str(folder)


def _result(tmp_path: Path, accuracy: dict[str, list[float]], configs: dict[str, dict], bn: dict[str, str]) -> dict:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    strategies = {}
    for name, per_seed in accuracy.items():
        dirs = [_run(tmp_path / name / f"seed{i}", labels, rng.random(300) < acc,
                     {**configs[name], "engine": {"seed": i, "epochs": configs[name]["engine"]["epochs"]}}, bn[name])
                for i, acc in enumerate(per_seed)]
        strategies[name] = {"run_dirs": dirs, "mean": {"accuracy": float(np.mean(per_seed))}}
    return {"data": "x", "seeds": 3, "strategies": strategies}


def test_verdicts_pair_by_seed_and_image_and_list_what_differs(tmp_path: Path):
    configs = {"a": {"strategy": {"name": "a"}, "engine": {"epochs": 6}, "data": {"augment": "light"}},
               "b": {"strategy": {"name": "b"}, "engine": {"epochs": 6}, "data": {"augment": "light"}},
               "c": {"strategy": {"name": "c"}, "engine": {"epochs": 15}, "data": {"augment": "light"}}}
    result = _result(tmp_path, {"a": [0.95, 0.95, 0.95], "b": [0.94, 0.95, 0.95], "c": [0.70, 0.72, 0.71]}, configs,
                     {"a": "frozen", "b": "train", "c": "frozen"})
    verdicts = paired_verdicts(result, n_resamples=500)
    assert verdicts["split"] == "test" and verdicts["n_images"] == 300 and verdicts["n_seeds"] == 3
    rows = verdicts["strategies"]
    best = verdicts["best"]
    assert best in {"a", "b"} and rows[best]["ci95"][0] < rows[best]["mean"] < rows[best]["ci95"][1]
    other = "b" if best == "a" else "a"
    assert rows[other]["verdict"] == "no clear difference"  # a point apart on 300 images is noise
    assert rows["c"]["verdict"] == "worse" and rows["c"]["vs_best_ci95"][1] < 0
    differs = differing_settings(result)
    assert differs == {"batchnorm (resolved)": {"a": "frozen", "b": "train", "c": "frozen"},
                       "engine.epochs": {"a": 6, "b": 6, "c": 15}}
    table = comparison_table({**result, "verdicts": verdicts, "differences": differs,
                              "strategies": {n: {**r, "std": {k: 0.0 for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "time_s")},
                                                 "mean": {"accuracy": 0.9, "balanced_accuracy": 0.9, "macro_f1": 0.9, "roc_auc": 0.9,
                                                          "epochs": 6, "time_s": 1.0}, "trainable": 1, "total": 2}
                                             for n, r in result["strategies"].items()}})
    assert "| BN |" in table
    assert "worse" in table and "no clear difference" in table and "engine.epochs: a 6, b 6, c 15" in table
    assert "300 test images, 3 seed(s)" in table


def test_runs_on_different_images_are_refused(tmp_path: Path):
    configs = {n: {"strategy": {"name": n}, "engine": {"epochs": 1}} for n in ("a", "b")}
    result = _result(tmp_path, {"a": [0.9], "b": [0.8]}, configs, {"a": "frozen", "b": "frozen"})
    path = Path(result["strategies"]["b"]["run_dirs"][0]) / "test_predictions.json"
    rows = json.loads(path.read_text())
    rows[0]["path"] = "/data/other.jpg"
    path.write_text(json.dumps(rows))
    with pytest.raises(ConfigError, match="same images"):
        paired_verdicts(result, n_resamples=100)


def test_verdicts_read_balanced_accuracy_when_the_runs_found_their_data_imbalanced():
    from transferkit.compare import lead_metric

    run = lambda lead: {"balance": {"lead_metric": lead}}  # noqa: E731
    assert lead_metric({"strategies": {"a": {"runs": [run("balanced_accuracy")]}, "b": {"runs": [run("balanced_accuracy")]}}}) \
        == "balanced_accuracy"
    assert lead_metric({"strategies": {"a": {"runs": [run("accuracy")]}}}) == "accuracy"
    assert lead_metric({"strategies": {"a": {"runs": [{}]}}}) == "accuracy"  # runs from before balance was recorded
