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
import transferkit.data.decode as decode
import transferkit.engine.calibration as calibration
import transferkit.features.digests as digests
import transferkit.features.extract as extract
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


def _weights(run: Path) -> tuple[bytes, dict[str, bytes]]:
    """The file's bytes (the same weights always give the same file) and every tensor's bytes."""
    path = run / "model.safetensors"
    return path.read_bytes(), {name: array.tobytes() for name, array in load_file(str(path)).items()}


def test_relabelling_the_test_split_changes_no_choice_and_no_weight(three_splits: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(calibration, "MIN_SELECTION", 1)  # fit a temperature on the 8 val images as well
    monkeypatch.setattr(calibration, "MIN_ERRORS", 0)
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


class _ImageReads:
    """Every read of an image file, flagged with whether a run was training or selecting at the time.

    Hooks the one decoder every path goes through (``decode._load_rgb``, behind ``load_rgb`` and ``check_image``: the plain loaders' and the
    embedding cache's ``load_rgb``, the GPU path's raw decode, validation) and the hash of a file's bytes that
    keys the embedding cache (``file_digest``, taken before embedding and checked again after decoding). A run
    "trains or selects" from the end of its set-up until it first evaluates its test split (in ``_finish``,
    after the epoch, the probe's L2, the temperature and tau are chosen).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[tuple[bool, str, Path]] = []
        self.fitting = False
        real_decode, real_digest = decode._load_rgb, digests.file_digest
        real_setup, real_evaluate = Trainer._setup, Trainer._evaluate
        reads = self

        def logging_decode(path, *args, **kwargs):
            reads.reads.append((reads.fitting, "decode", Path(path)))
            return real_decode(path, *args, **kwargs)

        def logging_digest(path, *args, **kwargs):
            reads.reads.append((reads.fitting, "hash", Path(path)))
            return real_digest(path, *args, **kwargs)

        def setup(trainer, *args, **kwargs):
            out = real_setup(trainer, *args, **kwargs)
            reads.fitting = True
            return out

        def evaluate(trainer, samples, *args, **kwargs):
            if samples is trainer.data.test:
                reads.fitting = False  # the test split's one evaluation: everything is chosen by now
            return real_evaluate(trainer, samples, *args, **kwargs)

        monkeypatch.setattr(decode, "_load_rgb", logging_decode)
        monkeypatch.setattr(digests, "file_digest", logging_digest)
        monkeypatch.setattr(extract, "file_digest", logging_digest)
        monkeypatch.setattr(Trainer, "_setup", setup)
        monkeypatch.setattr(Trainer, "_evaluate", evaluate)

    def under(self, root: Path, fitting: bool) -> list[Path]:
        root = root.resolve()
        return [p for f, _, p in self.reads if f == fitting and root in p.resolve().parents]


# the default path (feature extraction, the embedding cache on: the probe), the plain path (finetune without the
# cache) and lp-ft (the probe on cached embeddings, then epochs that read images)
RUNS = {
    "feature-extraction-cached": dict(SETTINGS, strategy="feature-extraction", cache=True),
    "finetune-no-cache": dict(SETTINGS),
    "lp-ft-cached": dict(SETTINGS, strategy="lp-ft", warmup_epochs=1, epochs=2, cache=True),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_no_test_image_is_read_while_training_or_selecting(name: str, three_splits: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(calibration, "MIN_SELECTION", 1)  # the temperature is chosen on val/ too
    monkeypatch.setattr(calibration, "MIN_ERRORS", 0)
    reads = _ImageReads(monkeypatch)
    summary = tk.train(three_splits, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), **RUNS[name]).summary
    assert summary["calibration"]["method"] == "temperature"
    assert reads.under(three_splits / "train", True) and reads.under(three_splits / "val", True)
    assert not reads.under(three_splits / "test", True)
    assert reads.under(three_splits / "test", False)  # read once, to report


def test_no_test_image_is_read_while_any_compared_run_trains_or_selects(three_splits: Path, tmp_path: Path, monkeypatch):
    reads = _ImageReads(monkeypatch)
    common = {k: v for k, v in SETTINGS.items() if k not in ("strategy", "quiet", "cache")}
    tk.compare(three_splits, strategies=["feature-extraction", "finetune"], seeds=1, out=str(tmp_path / "cmp"),
               quiet=True, cache_dir=str(tmp_path / "cache"), **common)
    assert reads.under(three_splits / "train", True) and not reads.under(three_splits / "test", True)
    assert reads.under(three_splits / "test", False)


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
