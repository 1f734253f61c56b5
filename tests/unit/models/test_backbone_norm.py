"""User-given normalisation (--mean/--std) and what the embedding cache key depends on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

import transferkit as tk
from transferkit.cli import app
from transferkit.data.transforms import eval_transform
from transferkit.errors import ConfigError
from transferkit.features.keys import model_identity, namespace_key, view_identity
from transferkit.models.backbones import resolve_spec

MEAN, STD = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)


def _normalize(transform) -> tuple[tuple[float, ...], tuple[float, ...]]:
    (norm,) = [t for t in transform.transforms if type(t).__name__ == "Normalize"]
    return tuple(norm.mean), tuple(norm.std)


def test_namespace_changes_with_torch_and_timm_versions(monkeypatch: pytest.MonkeyPatch):
    spec = resolve_spec("efficientnet_lite0").with_input_size(32)

    def namespace() -> str:
        return namespace_key(model_identity(spec, "weights-hash", 36), view_identity(spec, None))

    before = namespace()
    monkeypatch.setattr(torch, "__version__", "99.0.0")
    after_torch = namespace()
    monkeypatch.setattr(timm, "__version__", "99.0.0")
    after_timm = namespace()
    assert len({before, after_torch, after_timm}) == 3


@pytest.mark.parametrize(("option", "value", "words"), [
    ("mean", "0.5,0.5", ["model.mean", "3 values"]),
    ("std", "0.5,0,0.5", ["model.std", "positive"]),
    ("std", "0.5,-1,0.5", ["model.std", "positive"]),
    ("mean", "0.5,nan,0.5", ["model.mean", "finite"]),
])
def test_bad_normalisation_is_refused_with_the_key_and_the_fix(option: str, value: str, words: list[str]):
    with pytest.raises(ConfigError) as info:
        tk.build_config("data", **{option: value})
    assert all(word in str(info.value) for word in words), str(info.value)


def test_normalisation_applies_to_a_timm_backbone_with_a_weights_file(tmp_path: Path):
    from safetensors.torch import save_file

    from transferkit.models.backbones import build_backbone

    weights = tmp_path / "lite0.safetensors"
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    cfg = tk.build_config("data", backbone="timm:tf_efficientnet_lite0", weights=str(weights), mean="0.4,0.45,0.5",
                          std="0.2,0.25,0.3")
    assert (cfg.model.mean, cfg.model.std) == (MEAN, STD)
    spec = resolve_spec(cfg.model.backbone, cfg.model.weights).with_normalization(cfg.model.mean, cfg.model.std)
    assert (spec.mean, spec.std) == (MEAN, STD) and spec.weight_source == f"file:{weights}"
    assert _normalize(eval_transform(spec)) == (MEAN, STD)
    build_backbone(spec, weights=str(weights))  # the file still loads into the architecture
    # the cache namespace follows the normalisation (it is part of the transform's identity)
    plain = resolve_spec(cfg.model.backbone, cfg.model.weights)
    assert namespace_key(view_identity(spec, None)) != namespace_key(view_identity(plain, None))
    only_mean = plain.with_normalization(MEAN, None)
    assert (only_mean.mean, only_mean.std) == (MEAN, plain.std)


def test_run_with_mean_std_records_and_reloads_them(tiny_folder: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", str(tiny_folder), "--strategy", "feature-extraction", "--epochs", "1", "--input-size", "32",
        "--batch-size", "8", "--mean", "0.4,0.45,0.5", "--std", "0.2,0.25,0.3", "--out", str(out),
        "--set", "data.workers=0"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "backbone.json").read_text())
    assert (tuple(saved["mean"]), tuple(saved["std"])) == (MEAN, STD)
    loaded = tk.load_run(out)  # what evaluate and predict use
    assert (loaded.spec.mean, loaded.spec.std) == (MEAN, STD)
    assert _normalize(eval_transform(loaded.spec)) == (MEAN, STD)
    report = tk.evaluate(loaded, tiny_folder, include_seen=True)  # the training images too
    assert report["n"] == 36
