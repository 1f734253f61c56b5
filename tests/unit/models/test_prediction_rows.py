"""One image Dataset and one prediction-row format: the rows of train, evaluate, predict and serve agree for the
same images (each command is called on one real run and their rows compared)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import transferkit as tk
import transferkit.report as report
from conftest import REPO, TINY, make_image_folder
from transferkit.models.runtime import prediction_rows, top_k_row

PACKAGE = REPO / "transferkit"


def test_rows_name_the_file_of_each_dataset_index_with_its_label_and_rounded_probabilities():
    rows = prediction_rows(["a.jpg", "b.jpg", "c.jpg"], np.array([2, 0]), np.array([1, -1]),
                           np.array([[0.1234567, 0.8765433], [0.5, 0.5]], dtype=np.float32))
    assert rows == [{"path": "c.jpg", "label": 1, "probs": [0.123457, 0.876543]},
                    {"path": "a.jpg", "label": -1, "probs": [0.5, 0.5]}]
    assert all(type(v) is float for row in rows for v in row["probs"]) and type(rows[0]["label"]) is int


def test_top_k_names_the_most_probable_classes_first_and_keeps_ties_in_class_order():
    row = {"path": "x.png", "label": -1, "probs": [0.2, 0.5, 0.2, 0.1]}
    assert top_k_row(row, ["a", "b", "c", "d"], 3) == {"path": "x.png", "predictions": [
        {"label": "b", "probability": 0.5}, {"label": "a", "probability": 0.2}, {"label": "c", "probability": 0.2}]}


def test_one_image_dataset_in_the_package():
    datasets = {p.relative_to(PACKAGE).as_posix(): re.findall(r"^class (\w+)\(Dataset\)", p.read_text(encoding="utf-8"), re.M)
                for p in PACKAGE.rglob("*.py")}
    found = {path: names for path, names in datasets.items() if names}
    # the GPU path ships undecoded JPEG bytes on purpose; everything else decodes through ImageDataset
    assert found == {"data/datasets.py": ["ImageDataset"], "data/gpu.py": ["EncodedDataset"]}


# --- every command's rows, built from the same images of one real run ------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real run whose test predictions come from the full model on images (no embedding cache, no
    calibration: too few selection images), so every command below computes the same probabilities."""
    root = tmp_path_factory.mktemp("rows")
    make_image_folder(root / "data", {"red": 10, "green": 10, "blue": 10})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE_DIR", str(root / "cache"))
        mp.setattr(report, "build_run_report", lambda *a, **k: None)  # not under test, costs seconds
        return tk.train(root / "data", strategy="feature-extraction", epochs=1, out=str(root / "run"), cache=False,
                        **TINY).run_dir


def _assert_rounded_row(row: dict) -> None:
    """The builder's format: exactly path, label, probs; an int label; floats rounded to 6 decimals."""
    assert list(row) == ["path", "label", "probs"] and type(row["label"]) is int and type(row["path"]) is str
    assert all(type(p) is float and p == round(p, 6) for p in row["probs"]), row


def _assert_same_top_k(got: list[dict], want: list[dict], atol: float) -> None:
    assert [p["label"] for p in got] == [p["label"] for p in want]
    for p, q in zip(got, want):
        assert list(p) == ["label", "probability"] and p["probability"] == round(p["probability"], 6)
        assert p["probability"] == pytest.approx(q["probability"], abs=atol)


def test_train_evaluate_predict_and_serve_give_the_same_rows_for_the_same_images(run_dir: Path, monkeypatch):
    classes = json.loads((run_dir / "classes.json").read_text())
    trained = {name: json.loads((run_dir / f"{name}_predictions.json").read_text()) for name in ("test", "selection")}
    for rows in trained.values():
        assert rows
        for row in rows:
            _assert_rounded_row(row)
    test_rows = {row["path"]: row for row in trained["test"]}

    # evaluate on the data folder: the run's own training and selection images are left out, the test ones kept
    seen: list = []
    monkeypatch.setattr(report, "build_evaluation_report", lambda out, rep, rows, run=None: seen.extend(rows))
    tk.evaluate(run_dir, run_dir.parent / "data", engine="torch")
    evaluated = {row["path"]: row for row in seen}
    assert set(evaluated) == set(test_rows)
    for path, row in evaluated.items():
        _assert_rounded_row(row)
        want = test_rows[path]
        assert row["label"] == want["label"] and row["probs"] == pytest.approx(want["probs"], abs=2e-6), path

    # predict: its top-k answer is the trainer's row rendered by top_k_row
    paths = sorted(test_rows)
    predicted = tk.predict(run_dir, paths, top_k=3, engine="torch")
    for path, got in zip(paths, predicted):
        want = top_k_row(test_rows[path], classes, 3)
        assert list(got) == ["path", "predictions"] and got["path"] == path
        _assert_same_top_k(got["predictions"], want["predictions"], atol=2e-6)

    # serve (ONNX Runtime on the uploaded bytes): the same top-k, named by the upload
    from fastapi.testclient import TestClient

    from transferkit.serve.server import app_from_settings, prepare

    with TestClient(app_from_settings(prepare(run_dir, max_images=64, max_wait_ms=2))) as client:
        answer = client.post("/v1/predict", data={"top_k": "3"},
                             files=[("files", (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in paths])
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["name"] for r in results] == [Path(p).name for p in paths]
    for path, got in zip(paths, results):
        want = top_k_row(test_rows[path], classes, 3)
        _assert_same_top_k(got["predictions"], want["predictions"], atol=1e-4)  # another engine: float error only
