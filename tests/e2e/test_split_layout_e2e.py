"""``train/ test/`` (no val/), one of the most common layouts, trains the class folders end to end: the test
split is test/, the selection split is carved from train/, and neither split name becomes a class."""

from __future__ import annotations

import json
from pathlib import Path

import transferkit as tk
from conftest import TINY, make_image_folder


def test_train_and_test_folders_train_on_the_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_image_folder(root / "train", {"cat": 10, "dog": 10}, seed=1)
    make_image_folder(root / "test", {"cat": 4, "dog": 4}, seed=2)
    result = tk.train(root, out=str(tmp_path / "run"), epochs=1, cache=False, **TINY)
    run = result.run_dir
    assert json.loads((run / "classes.json").read_text()) == ["cat", "dog"]
    split = json.loads((run / "split.json").read_text())
    assert split["layout"] == "split" and split["classes"] == ["cat", "dog"]
    protocol = split["protocol"]
    assert protocol["test"]["source"] == "test/" and protocol["test"]["n"] == 8
    assert protocol["selection"]["source"] == "15% of train/ (stratified, split seed 0)"
    assert protocol["train"]["source"] == "the rest of train/"
    assert protocol["selection"]["n"] == 4 and protocol["train"]["n"] == 16
    assert {Path(rel).parts[0] for rel, _ in split["test"]} == {"test"}
    assert {Path(rel).parts[0] for rel, _ in split["train"] + split["selection"]} == {"train"}
    assert result.summary["protocol"] == protocol and result.summary["data"]["n_test"] == 8
    # evaluating the dataset reads its test/ split, with the model's classes
    report = tk.evaluate(run, root, out=tmp_path / "eval")
    assert report["n"] == 8 and report["classes"] == ["cat", "dog"]
