"""One image Dataset and one prediction-row format for every command (train, evaluate, predict, embed, adapt)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from conftest import REPO
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


def _sources() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}


def test_one_image_dataset_and_one_row_builder_in_the_package():
    datasets = {p.relative_to(PACKAGE).as_posix(): re.findall(r"^class (\w+)\(Dataset\)", text, re.M)
                for p, text in _sources().items()}
    found = {path: names for path, names in datasets.items() if names}
    # the GPU path ships undecoded JPEG bytes on purpose; everything else decodes through ImageDataset
    assert found == {"data/datasets.py": ["ImageDataset"], "data/gpu.py": ["EncodedDataset"]}
    builders = [p.relative_to(PACKAGE).as_posix() for p, text in _sources().items() if '"probs": [round(' in text]
    assert builders == ["models/runtime.py"]
