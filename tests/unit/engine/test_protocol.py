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
import transferkit.engine.calibration as calibration
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


def test_relabelling_the_test_split_changes_no_choice_and_no_weight(three_splits: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(calibration, "MIN_SELECTION", 1)  # fit a temperature on the 8 val images as well
    first = tk.train(three_splits, out=str(tmp_path / "first"), **SETTINGS).summary
    swapped = tmp_path / "swapped"
    shutil.copytree(three_splits, swapped)
    (swapped / "test" / "a").rename(swapped / "test" / "tmp")
    (swapped / "test" / "b").rename(swapped / "test" / "a")
    (swapped / "test" / "tmp").rename(swapped / "test" / "b")
    second = tk.train(swapped, out=str(tmp_path / "second"), **SETTINGS).summary
    assert _weights(tmp_path / "first") == _weights(tmp_path / "second")  # bit for bit
    assert first["selected_epoch"] == second["selected_epoch"]
    assert _epochs(tmp_path / "first") == _epochs(tmp_path / "second")  # every selection-split figure too
    assert first["selection_metrics"] == second["selection_metrics"]  # val/: the selection split
    assert first["calibration"]["method"] == "temperature" and first["calibration"]["n"] == 8
    assert first["calibration"]["temperature"] == second["calibration"]["temperature"]  # the test labels never reach it
    heads = [json.loads((tmp_path / run / "model.json").read_text())["head"] for run in ("first", "second")]
    assert heads[0]["temperature"] == heads[1]["temperature"] == first["calibration"]["temperature"]
    # the test labels did change, so the test figures must move (they are reported, never used)
    a, b = first["metrics"]["accuracy"], second["metrics"]["accuracy"]
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


# --- the three roles for each folder layout ----------------------------------------------------------


def _swap(folder: Path, a: str, b: str) -> None:
    (folder / a).rename(folder / "tmp")
    (folder / b).rename(folder / a)
    (folder / "tmp").rename(folder / b)


def test_train_val_folder_reports_val_and_relabelling_it_changes_nothing_chosen(tmp_path: Path):
    """train/ val/: the selection split is carved from train/, val/ is the test split (the issue's test a)."""
    root = tmp_path / "data"
    make_image_folder(root / "train", {"a": 10, "b": 10}, seed=1)
    make_image_folder(root / "val", {"a": 4, "b": 4}, seed=2)
    first = tk.train(root, out=str(tmp_path / "first"), **SETTINGS).summary
    _swap(root / "val", "a", "b")
    second = tk.train(root, out=str(tmp_path / "second"), **SETTINGS).summary
    assert _weights(tmp_path / "first") == _weights(tmp_path / "second")
    assert first["selected_epoch"] == second["selected_epoch"] and _epochs(tmp_path / "first") == _epochs(tmp_path / "second")
    assert first["metrics"]["accuracy"] == pytest.approx(1 - second["metrics"]["accuracy"])
    p = first["protocol"]
    assert (p["train"]["n"], p["selection"]["n"], p["test"]["n"]) == (16, 4, 8)
    assert p["selection"]["source"].startswith("15% of train/") and p["test"]["source"].startswith("val/")
    split = json.loads((tmp_path / "first" / "split.json").read_text())
    assert split["protocol"] == p
    assert {Path(r).parts[0] for r, _ in split["train"] + split["selection"]} == {"train"}
    assert {Path(r).parts[0] for r, _ in split["test"]} == {"val"}
    assert not {r for r, _ in split["train"]} & {r for r, _ in split["selection"]}


def test_flat_folder_is_split_70_15_15_disjoint_stratified_and_seeded(tmp_path: Path):
    from transferkit.config import DataCfg

    root = make_image_folder(tmp_path / "flat", {"a": 20, "b": 20, "c": 20})
    data = datasets.prepare_data(DataCfg(path=str(root), validate=False))
    sizes = (len(data.train), len(data.selection), len(data.test))
    assert sizes == (42, 9, 9)  # 70/15/15 of 20 per class: 14/3/3
    for part in (data.train, data.selection, data.test):
        assert sorted({s.label for s in part}) == [0, 1, 2]  # every class in every role
    paths = [{s.path for s in part} for part in (data.train, data.selection, data.test)]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    again = datasets.prepare_data(DataCfg(path=str(root), validate=False))
    assert [s.path for s in again.test] == [s.path for s in data.test]
    other = datasets.prepare_data(DataCfg(path=str(root), validate=False, split_seed=1))
    assert [s.path for s in other.test] != [s.path for s in data.test]
    fixed = datasets.prepare_data(DataCfg(path=str(root), validate=False), select="last")
    assert (len(fixed.train), len(fixed.selection), len(fixed.test)) == (51, 0, 9)
    assert [s.path for s in fixed.test] == [s.path for s in data.test]  # the same test split either way


def test_select_last_trains_a_fixed_budget_on_every_training_image(three_splits: Path, tmp_path: Path):
    result = tk.train(three_splits, out=str(tmp_path / "run"), select="last", **{**SETTINGS, "epochs": 3})
    s = result.summary
    assert s["select"] == "last" and s["selected_epoch"] == 3 and s["selection_metrics"] is None
    assert (s["data"]["n_train"], s["data"]["n_selection"], s["data"]["n_test"]) == (20, 0, 10)
    protocol = json.loads((tmp_path / "run" / "split.json").read_text())["protocol"]
    assert protocol["unused"].startswith("val/") and protocol["selection"]["n"] == 0  # val/ chooses nothing now
    assert not (tmp_path / "run" / "selection_predictions.json").exists()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and not any(k.startswith("selection_") for r in rows for k in r)


def test_select_last_refuses_early_stopping(tmp_path: Path):
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match="--select last"):
        tk.train(tmp_path, select="last", patience=2, **SETTINGS)
