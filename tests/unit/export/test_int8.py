"""--int8 is accepted or refused on the selection split; the test split decides nothing, and the int8 file carries
the int8 model's own test figures (labelled), not the fp32 run's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import transferkit as tk
import transferkit.export.deploy as deploy
from conftest import TINY, make_image_folder
from transferkit.errors import TransferKitError
from transferkit.export.onnx import OnnxModel

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'transferkit[onnx]')")

RUN = dict(TINY, input_size=64, epochs=1, cache=False, strategy="finetune")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), {"red": 14, "green": 14, "blue": 14}, size=72)


@pytest.fixture(scope="module")
def run_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tk.train(data, out=str(tmp_path_factory.mktemp("run") / "run"), **RUN).run_dir


def test_int8_is_decided_on_the_selection_split_and_carries_its_own_test_figures(run_dir: Path, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    selection, _ = deploy.split_samples(run_dir, "selection")
    assert selection
    monkeypatch.setattr(deploy, "INT8_MAX_DROP", -1.0)  # any result is over the limit: refused, on the selection split
    with pytest.raises(TransferKitError, match="on the selection split"):
        deploy.export_run(run_dir, "onnx", tmp_path / "refused.onnx", int8=True, calibration_images=16)
    assert not list(tmp_path.iterdir())
    q = deploy.export_run(run_dir, "onnx", tmp_path / "q.onnx", int8=True, force=True, calibration_images=16)["int8"]
    decision = q["decision"]
    assert decision["split"] == "selection" and decision["n"] == len(selection)
    assert decision["forced"] and not decision["accepted"]
    meta = OnnxModel(tmp_path / "q.onnx").metadata
    summary = json.loads((run_dir / "summary.json").read_text())
    assert meta["test_metrics"]["accuracy"] == pytest.approx(q["accuracy_int8"]) and meta["test_n"] == q["n"]
    assert "int8" in meta["test_metrics_of"] and set(meta["test_ci95"]) >= {"accuracy"}
    assert meta["fp32_test_metrics"] == summary["metrics"] and meta["int8_decision"] == decision


def test_relabelling_the_test_split_leaves_the_int8_decision_unchanged(run_dir: Path, tmp_path: Path):
    relabelled = tmp_path / "relabelled"
    shutil.copytree(run_dir, relabelled)
    split = json.loads((relabelled / "split.json").read_text())
    split["test"] = [[path, (label + 1) % 3] for path, label in split["test"]]  # every test label now wrong
    (relabelled / "split.json").write_text(json.dumps(split))
    a = deploy.export_run(run_dir, "onnx", tmp_path / "a.onnx", int8=True, force=True, calibration_images=16)["int8"]
    b = deploy.export_run(relabelled, "onnx", tmp_path / "b.onnx", int8=True, force=True, calibration_images=16)["int8"]
    assert a["decision"] == b["decision"]  # the test labels never reach the decision
    assert a["n"] == b["n"] and a["decision"]["n"] == len(deploy.split_samples(run_dir, "selection")[0])


def test_a_run_without_a_selection_split_is_refused_unless_forced(data: Path, tmp_path: Path):
    run = tk.train(data, out=str(tmp_path / "last"), select="last", **RUN).run_dir
    with pytest.raises(TransferKitError, match="no selection split"):
        deploy.export_run(run, "onnx", tmp_path / "refused.onnx", int8=True, calibration_images=16)
    assert not (tmp_path / "refused.onnx").exists()
    q = deploy.export_run(run, "onnx", tmp_path / "q.onnx", int8=True, force=True, calibration_images=16)["int8"]
    assert q["decision"]["split"] is None and q["decision"]["forced"]
    meta = OnnxModel(tmp_path / "q.onnx").metadata
    assert meta["test_metrics"]["accuracy"] == pytest.approx(q["accuracy_int8"]) and "int8" in meta["test_metrics_of"]
