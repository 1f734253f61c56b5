"""On real photos, ONNX Runtime and PyTorch give the same answer for every image (hymenoptera/val)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import transferkit as tk
from conftest import require_dataset

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'transferkit[onnx]')")


def test_predict_engines_agree_on_every_hymenoptera_val_image(tmp_path: Path) -> None:
    data = require_dataset("hymenoptera")
    run = tk.train(data, strategy="feature-extraction", epochs=3, out=str(tmp_path / "run"), quiet=True).run_dir
    files = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    by_torch = tk.predict(run, files, top_k=2, engine="torch")
    by_onnx = tk.predict(run, files, top_k=2, engine="onnx")
    assert len(by_torch) == len(by_onnx) == len(files) == 153
    assert not [r for r in by_torch + by_onnx if "error" in r]
    disagree = [a["path"] for a, b in zip(by_torch, by_onnx) if a["predictions"][0]["label"] != b["predictions"][0]["label"]]
    assert disagree == []
    gap = max(abs(a["predictions"][0]["probability"] - b["predictions"][0]["probability"]) for a, b in zip(by_torch, by_onnx))
    assert gap < 1e-4
    truth = [Path(f).parent.name for f in files]
    accuracy = np.mean([r["predictions"][0]["label"] == t for r, t in zip(by_onnx, truth)])
    assert accuracy > 0.85  # a pretrained Lite0 probe separates ants from bees (0.94 measured)
