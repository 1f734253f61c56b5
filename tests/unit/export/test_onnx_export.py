"""Exported models agree with the trained PyTorch model, carry their preprocessing, and say what they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import transferkit as tk
import transferkit.export.deploy as deploy
from conftest import TINY, make_image_folder
from transferkit.cli import app
from transferkit.data.decode import load_rgb
from transferkit.data.transforms import eval_transform
from transferkit.errors import ConfigError, DataError, TransferKitError
from transferkit.export.onnx import OnnxModel, preprocess_image
from transferkit.export.runfiles import load_run

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'transferkit[onnx]')")

RUN = dict(TINY, input_size=64, epochs=1, cache=False, strategy="finetune")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned run (BatchNorm statistics and every weight trained) on 3 colour classes x 14 images."""
    data = make_image_folder(tmp_path_factory.mktemp("data"), {"red": 14, "green": 14, "blue": 14}, size=72)
    return tk.train(data, out=str(tmp_path_factory.mktemp("run") / "run"), **RUN).run_dir


def _test_images(run_dir: Path) -> list[str]:
    samples, gone = deploy.split_samples(run_dir, "test")
    assert samples and not gone
    return [s.path for s in samples]


def test_onnx_export_passes_parity_and_writes_metadata(run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.onnx"
    record = deploy.export_run(run_dir, "onnx", target)
    parity = record["parity"]
    assert parity["passed"] and parity["max_abs_logit_diff"] <= 1e-4 and parity["top1_disagreements"] == 0
    assert parity["n"] == len(_test_images(run_dir))
    assert json.loads((tmp_path / "out" / "model.parity.json").read_text())["parity"] == parity
    model = OnnxModel(target)
    meta = model.metadata
    summary = json.loads((run_dir / "summary.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"] and meta["input_size"] == 64
    assert meta["resize"]["resize_shorter_side"] == 73 and meta["resize"]["center_crop"] == 64  # 64 / crop_pct 0.875
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.5, 0.5, 0.5]
    assert meta["test_metrics"] == summary["metrics"] and meta["backbone"] == "efficientnet_lite0"
    assert model.outputs == ["logits", "probs"]


def test_graph_holds_the_preprocessing(run_dir: Path, tmp_path: Path) -> None:
    """uint8 pixels in, the same probabilities as the trained model fed by torchvision's eval transform."""
    target = tmp_path / "model.onnx"
    deploy.export_run(run_dir, "onnx", target)
    run, model = load_run(run_dir), OnnxModel(target)
    files = _test_images(run_dir)[:4]
    images = [load_rgb(f, draft_size=73) for f in files]
    pixels = np.stack([preprocess_image(im, run.spec) for im in images])
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 64, 64, 3)
    out = model.run(pixels)
    with torch.inference_mode():
        reference = run.model(torch.stack([eval_transform(run.spec)(im) for im in images])).softmax(1).numpy()
    np.testing.assert_allclose(out["probs"], reference, atol=1e-5)
    np.testing.assert_allclose(out["probs"], torch.from_numpy(out["logits"]).softmax(1).numpy(), atol=1e-6)


def test_torchscript_export_passes_parity(run_dir: Path, tmp_path: Path) -> None:
    record = deploy.export_run(run_dir, "torchscript", tmp_path / "model.pt")
    assert record["parity"]["passed"] and record["parity"]["max_abs_logit_diff"] <= 1e-4
    extra = {"transferkit.json": ""}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    assert json.loads(extra["transferkit.json"])["classes"] == ["blue", "green", "red"]
    logits, probs = scripted(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    assert logits.shape == probs.shape == (2, 3)


def test_int8_reports_accuracy_and_speed_and_refuses_a_large_drop(run_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # any change at all is too much under a negative threshold: refused, nothing written, unless --force
    # (a 6-image test split moves in steps of 17 points, so the real 1-point rule is not testable on it)
    monkeypatch.setattr(deploy, "INT8_MAX_DROP", -1.0)
    with pytest.raises(TransferKitError, match="--force"):
        deploy.export_run(run_dir, "onnx", tmp_path / "refused.onnx", int8=True, calibration_images=16)
    assert not list(tmp_path.iterdir())
    record = deploy.export_run(run_dir, "onnx", tmp_path / "q.onnx", int8=True, force=True, calibration_images=16)
    q = record["int8"]
    assert q["n"] == len(_test_images(run_dir)) and q["calibration_images"] == 16
    assert q["accuracy_fp32"] - q["accuracy_int8"] == pytest.approx(q["accuracy_drop"])
    assert q["speed_ratio"] == pytest.approx(q["images_per_s_int8"] / q["images_per_s_fp32"])
    quantised = OnnxModel(tmp_path / "q.onnx")
    assert quantised.metadata["precision"].startswith("int8") and quantised.classes == ["blue", "green", "red"]
    assert (tmp_path / "q.onnx").stat().st_size < 0.5 * _fp32_size(run_dir, tmp_path)  # int8 weights: a quarter


def _fp32_size(run_dir: Path, tmp_path: Path) -> int:
    return deploy.export_run(run_dir, "onnx", tmp_path / "fp32.onnx")["bytes"]


def test_engines_agree_on_predict_and_evaluate(run_dir: Path) -> None:
    files = _test_images(run_dir)
    by_torch = tk.predict(run_dir, files, top_k=3, engine="torch")
    by_onnx = tk.predict(run_dir, files, top_k=3, engine="onnx")
    for a, b in zip(by_torch, by_onnx):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        np.testing.assert_allclose([p["probability"] for p in a["predictions"]],
                                   [p["probability"] for p in b["predictions"]], atol=1e-5)
    data = Path(json.loads((run_dir / "split.json").read_text())["root"])
    torch_eval = tk.evaluate(run_dir, data, engine="torch")
    onnx_eval = tk.evaluate(run_dir, data, engine="onnx")
    assert (torch_eval["engine"], onnx_eval["engine"]) == ("torch", "onnxruntime")
    assert torch_eval["confusion_matrix"] == onnx_eval["confusion_matrix"]
    assert list((run_dir / "onnx").glob("model-*.onnx"))  # exported once, reused afterwards


def test_engine_choice() -> None:
    assert deploy.resolve_engine("auto", torch.device("cpu")) == "onnx"
    assert deploy.resolve_engine("auto", torch.device("cuda")) == "torch"
    assert deploy.resolve_engine("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ConfigError, match="--engine torch"):
        deploy.resolve_engine("onnx", torch.device("cuda"))
    with pytest.raises(ConfigError, match="auto, torch, onnx"):
        deploy.resolve_engine("tensorrt", torch.device("cpu"))


def test_export_refuses_bad_requests_naming_the_fix(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="onnx, torchscript"):
        deploy.export_run(run_dir, "tflite", tmp_path / "m.tflite")
    with pytest.raises(ConfigError, match="--format onnx"):
        deploy.export_run(run_dir, "torchscript", tmp_path / "m.pt", int8=True)
    with pytest.raises(ConfigError, match="is a folder"):
        deploy.export_run(run_dir, "onnx", tmp_path)


def test_export_needs_the_test_images(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    split = json.loads((moved / "split.json").read_text())
    split["root"] = str(tmp_path / "gone")
    (moved / "split.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match="restore the data folder"):
        deploy.export_run(moved, "onnx", tmp_path / "m.onnx")


def test_cli_export_prints_parity(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "max |logit diff|" in result.output and "top-1 agreement 1.000" in result.output
    bad = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "m.x"), "--format", "keras"])
    assert bad.exit_code == 2 and "choose one of onnx, torchscript" in bad.output


def test_tta_views_average_flips_and_crops_alike_on_both_engines(run_dir: Path) -> None:
    from transferkit.data.transforms import tta_views

    files = _test_images(run_dir)[:3]
    run = load_run(run_dir)
    image = load_rgb(files[0], draft_size=73)
    flip, crops = tta_views(run.spec, "flip")(image), tta_views(run.spec, "flip-crops")(image)
    assert flip.shape == (2, 3, 64, 64) and crops.shape == (10, 3, 64, 64)
    assert torch.equal(flip[1], flip[0].flip(-1))  # the mirror of the eval view
    single = tta_views(run.spec, "none")(image)[0]
    assert torch.equal(single, flip[0]) and torch.equal(single, crops[4])  # TenCrop's 5th is the centre crop
    # the second five are the same crops of the mirrored image: its corners mirror tr, tl, br, bl (its centre
    # crop may sit one pixel off the mirrored centre when the margin is odd)
    assert torch.equal(crops[5:9], crops[[1, 0, 3, 2]].flip(-1))
    # the flip answer is the mean of the two views' probabilities, the same on both engines
    reference = []
    with torch.inference_mode():
        for f in files:
            views = tta_views(run.spec, "flip")(load_rgb(f, draft_size=73))
            x = torch.stack([eval_transform(run.spec).transforms[-1](v.float() / 255) for v in views])
            reference.append((run.model(x) / run.temperature).softmax(1).mean(0).numpy())
    for engine in ("torch", "onnx"):
        rows = tk.predict(run_dir, files, top_k=3, engine=engine, tta="flip")
        got = [[p["probability"] for p in sorted(r["predictions"], key=lambda p: p["label"])] for r in rows]
        np.testing.assert_allclose(got, np.array(reference), atol=1e-5)
    crops_torch = tk.predict(run_dir, files, top_k=1, engine="torch", tta="flip-crops")
    crops_onnx = tk.predict(run_dir, files, top_k=1, engine="onnx", tta="flip-crops")
    assert [r["predictions"][0]["label"] for r in crops_torch] == [r["predictions"][0]["label"] for r in crops_onnx]
    with pytest.raises(ConfigError, match="flip-crops"):
        tk.predict(run_dir, files, tta="five-crops")


def test_calibrated_runs_answer_tempered_probabilities_everywhere(run_dir: Path, tmp_path: Path) -> None:
    """A temperature in model.json reaches predict (both engines) and the exported graph's probs; logits stay raw."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("onnx"))
    meta = json.loads((run / "model.json").read_text())
    meta["head"]["temperature"] = 2.5
    (run / "model.json").write_text(json.dumps(meta))
    files = _test_images(run)[:4]
    model = load_run(run)
    with torch.inference_mode():
        logits = model.model(torch.stack([eval_transform(model.spec)(load_rgb(f, draft_size=73)) for f in files]))
    expected = (logits / 2.5).softmax(1).numpy()
    for engine in ("torch", "onnx"):
        rows = tk.predict(run, files, top_k=3, engine=engine)
        got = [[p["probability"] for p in sorted(r["predictions"], key=lambda p: p["label"])] for r in rows]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    deploy.export_run(run, "onnx", tmp_path / "m.onnx")
    exported = OnnxModel(tmp_path / "m.onnx")
    assert exported.metadata["temperature"] == 2.5
    pixels = np.stack([preprocess_image(load_rgb(f, draft_size=73), model.spec) for f in files])
    out = exported.run(pixels)
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["probs"], expected, atol=1e-5)
