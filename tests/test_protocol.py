"""Nothing is chosen on the test split: relabelling it changes no chosen epoch and no weight, and no test
image is read while the run trains or selects (a folder with train/ val/ test/; val is the selection split)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import load_file

import transferkit as tk
import transferkit.data.datasets as datasets
from transferkit.engine.trainer import Trainer

from conftest import make_image_folder

SETTINGS = dict(strategy="finetune", epochs=2, input_size=32, batch_size=8, workers=0, quiet=True, cache=False)


@pytest.fixture
def three_splits(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_image_folder(root / "train", {"a": 10, "b": 10}, seed=1)
    make_image_folder(root / "val", {"a": 4, "b": 4}, seed=2)
    make_image_folder(root / "test", {"a": 5, "b": 5}, seed=3)
    return root


def _epochs(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, bytes]:
    """Every tensor's bytes (the file itself is not compared: safetensors writes its metadata map in hash
    order, which differs between processes)."""
    return {name: array.tobytes() for name, array in load_file(str(run / "model.safetensors")).items()}


def test_relabelling_the_test_split_changes_no_choice_and_no_weight(three_splits: Path, tmp_path: Path):
    first = tk.train(three_splits, out=str(tmp_path / "first"), **SETTINGS).summary
    swapped = tmp_path / "swapped"
    shutil.copytree(three_splits, swapped)
    (swapped / "test" / "a").rename(swapped / "test" / "tmp")
    (swapped / "test" / "b").rename(swapped / "test" / "a")
    (swapped / "test" / "tmp").rename(swapped / "test" / "b")
    second = tk.train(swapped, out=str(tmp_path / "second"), **SETTINGS).summary
    assert _weights(tmp_path / "first") == _weights(tmp_path / "second")  # bit for bit
    assert first["best_epoch"] == second["best_epoch"]
    assert _epochs(tmp_path / "first") == _epochs(tmp_path / "second")  # every selection-split figure too
    assert first["metrics"] == second["metrics"]  # val: the selection split
    # the test labels did change, so the test figures must move (they are reported, never used)
    a, b = first["test_metrics"]["accuracy"], second["test_metrics"]["accuracy"]
    assert a == pytest.approx(1 - b)


def test_no_test_image_is_read_while_training_or_selecting(three_splits: Path, tmp_path: Path, monkeypatch):
    read, phase = [], {"fitting": False}
    real_load, real_epoch = datasets.load_rgb, Trainer._run_epoch

    def logging_load(path, *args, **kwargs):
        read.append((phase["fitting"], Path(path)))
        return real_load(path, *args, **kwargs)

    def epoch(self, *args, **kwargs):
        phase["fitting"] = True
        try:
            return real_epoch(self, *args, **kwargs)
        finally:
            phase["fitting"] = False

    monkeypatch.setattr(datasets, "load_rgb", logging_load)
    monkeypatch.setattr(Trainer, "_run_epoch", epoch)
    tk.train(three_splits, out=str(tmp_path / "run"), **SETTINGS)
    test_root = (three_splits / "test").resolve()
    during = [p for fitting, p in read if fitting]
    assert during and not [p for p in during if test_root in p.resolve().parents]
    assert {p.resolve().parent.parent.name for p in during} == {"train", "val"}
    assert any(test_root in p.resolve().parents for fitting, p in read if not fitting)  # read once, to report
