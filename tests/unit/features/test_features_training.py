"""Training through the embedding cache: same run folder, same quality, pretrained backbone untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import transferkit as tk
import transferkit.features.cache as cache_mod
from transferkit.cli import app
from transferkit.features import cache_info, embed_folder
from transferkit.models.backbones import build_backbone, resolve_spec

from conftest import TINY

RUN_FILES = {"config.yaml", "classes.json", "split.json", "plan.json", "backbone.json", "metrics.jsonl", "model.safetensors",
             "model.json", "test_metrics.json", "test_predictions.json", "selection_predictions.json", "skipped.json",
             "summary.json"}
LEARN = dict(TINY, epochs=4, lr=0.02)


@pytest.fixture
def counted(monkeypatch):
    """Counts images embedded through the cache's data path."""
    calls = {"images": 0}
    real = cache_mod.embed_images

    def counting(backbone, paths, *args, **kwargs):
        calls["images"] += len(paths)
        return real(backbone, paths, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "embed_images", counting)
    return calls


def test_cached_and_uncached_runs_match_in_form_and_quality(tiny_folder, tmp_path, counted):
    # cached: the converged probe on cached embeddings; --no-cache (head_fit auto): the reference path,
    # SGD epochs of the head through the whole frozen model, as the seed recipes trained it
    cached = tk.train(tiny_folder, out=str(tmp_path / "cached"), **LEARN)
    assert counted["images"] == 36
    plain = tk.train(tiny_folder, out=str(tmp_path / "plain"), cache=False, **LEARN)
    assert counted["images"] == 36, "--no-cache never touches the cache"
    assert RUN_FILES <= {p.name for p in (tmp_path / "cached").iterdir()}
    assert {p.name for p in (tmp_path / "cached").iterdir()} == {p.name for p in (tmp_path / "plain").iterdir()}
    a, b = cached.summary, plain.summary
    assert a.keys() == b.keys() and a["epochs_run"] == b["epochs_run"] == 4
    assert a["head_fit"]["method"] == "probe" and b["head_fit"] == {"method": "sgd"}
    # measured on these 6 test images: probe 1.0 (train accuracy 1.0), 4 SGD epochs 1.0
    assert a["metrics"]["accuracy"] == 1.0 and a["head_fit"]["train_accuracy"] == 1.0
    assert b["metrics"]["accuracy"] >= 5 / 6, "at most one of 6 test images apart"
    rows = json.loads((tmp_path / "cached" / "test_predictions.json").read_text())
    assert len(rows) == b["data"]["n_test"] and set(rows[0]) == {"path", "label", "probs"}
    records = [json.loads(line) for line in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [4] and records[0]["trainable_groups"] == ["head"]
    assert records[0]["head_fit"]["replaces_epochs"] == 4
    plain_records = (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()
    assert len(plain_records) == 4


def test_probe_without_the_cache_equals_the_cached_probe(tiny_folder, tmp_path, counted):
    """head_fit=probe with --no-cache embeds into memory only, and fits exactly the cached run's probe."""
    cached = tk.train(tiny_folder, out=str(tmp_path / "cached"), **LEARN)
    unused = tmp_path / "unused-cache"
    memory = tk.train(tiny_folder, out=str(tmp_path / "memory"), cache=False, cache_dir=str(unused),
                      overrides={"model.head_fit": "probe"}, **LEARN)
    assert counted["images"] == 72 and not unused.exists(), "embedded again, in memory, nothing written"
    assert memory.summary["head_fit"]["l2"] == cached.summary["head_fit"]["l2"]
    assert (tmp_path / "memory" / "test_predictions.json").read_text() == (tmp_path / "cached" / "test_predictions.json").read_text()
    a, b = load_file(str(tmp_path / "cached" / "model.safetensors")), load_file(str(tmp_path / "memory" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _epochs(run) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_warm_run_repeats_the_cold_run_exactly(tiny_folder, tmp_path, counted):
    # workers=1: a worker pool must not shift the RNG that dropout and the batch order use afterwards
    tk.train(tiny_folder, out=str(tmp_path / "cold"), **dict(LEARN, workers=1))
    embedded = counted["images"]
    tk.train(tiny_folder, out=str(tmp_path / "warm"), **dict(LEARN, workers=1))
    assert counted["images"] == embedded, "the warm run embeds nothing"
    assert _epochs(tmp_path / "cold") == _epochs(tmp_path / "warm")
    assert (tmp_path / "cold" / "test_predictions.json").read_text() == (tmp_path / "warm" / "test_predictions.json").read_text()


def test_second_run_reuses_the_cache_and_the_model_is_complete(tiny_folder, tmp_path, counted):
    tk.train(tiny_folder, out=str(tmp_path / "r1"), **LEARN)
    first = counted["images"]
    result = tk.train(tiny_folder, out=str(tmp_path / "r2"), seed=1, head="mlp", **LEARN)
    assert counted["images"] == first, "another seed and head reuse the embeddings"
    saved = load_file(str(tmp_path / "r2" / "model.safetensors"))
    pretrained = build_backbone(resolve_spec("efficientnet_lite0").with_input_size(32)).state_dict()
    for name, tensor in pretrained.items():
        assert torch.equal(saved[f"backbone.{name}"], tensor), f"frozen backbone weight {name} changed"
    preds = tk.predict(tmp_path / "r2", [tiny_folder / "red"], top_k=1)
    hits = sum(p["predictions"][0]["label"] == "red" for p in preds)
    assert hits >= 0.7 * len(preds) and result.summary["metrics"]["accuracy"] >= 0.8


def test_lp_ft_head_phase_uses_the_cache_then_finetunes(tiny_folder, tmp_path, counted):
    result = tk.train(tiny_folder, out=str(tmp_path / "lpft"), strategy="lp-ft", warmup_epochs=1, **dict(TINY, epochs=2))
    data = result.summary["data"]  # train + selection: the test split is evaluated by the fine-tuned model, never embedded
    assert counted["images"] == data["n_train"] + data["n_selection"] == 36 - data["n_test"]
    records = [json.loads(line) for line in (tmp_path / "lpft" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["trainable_groups"] == ["head"] and len(records[1]["trainable_groups"]) > 1
    assert result.summary["epochs_run"] == 2


def test_cache_views_embed_augmented_train_views(tiny_folder, tmp_path, counted):
    result = tk.train(tiny_folder, out=str(tmp_path / "views"), cache_views=2, **dict(TINY, epochs=1))
    data = result.summary["data"]
    # selection and test: the eval view; train: two augmented views
    assert counted["images"] == data["n_selection"] + data["n_test"] + 2 * data["n_train"]
    assert result.summary["epochs_run"] == 1


def test_embed_folder_and_cli(tiny_split_folder, tmp_path):
    out = tmp_path / "emb.npz"
    result = embed_folder(tiny_split_folder, out, input_size=32, workers=0)
    with np.load(out, allow_pickle=False) as z:
        assert z["embeddings"].shape == (28, 1280) and z["embeddings"].dtype == np.float16
        assert list(z["classes"]) == ["a", "b"] and set(z["splits"]) == {"train", "val"}
        assert z["labels"].tolist() == result["labels"].tolist()
        assert all(p.endswith(".jpg") for p in z["paths"])
        assert json.loads(str(z["meta"]))["backbone"] == "efficientnet_lite0"
    runner = CliRunner()
    res = runner.invoke(app, ["embed", str(tiny_split_folder), "--out", str(tmp_path / "cli.npz"), "--input-size", "32",
                              "--workers", "0", "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "cli.npz") as z:
        assert z["embeddings"].dtype == np.float32
        assert np.allclose(z["embeddings"], result["embeddings"].astype(np.float32))
    bad = runner.invoke(app, ["embed", str(tmp_path / "missing"), "--out", str(tmp_path / "x.npz")])
    assert bad.exit_code == 2 and "error:" in bad.output


def test_cache_info_and_clear_commands(tiny_folder, tmp_path):
    cache_dir = tmp_path / "c"
    embed_folder(tiny_folder, None, input_size=32, workers=0, cache_dir=str(cache_dir))
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info", "--cache-dir", str(cache_dir)])
    assert info.exit_code == 0 and "36 embeddings" in info.output and "efficientnet_lite0" in info.output
    assert cache_info(cache_dir)["bytes"] > 36 * 1280 * 2
    assert runner.invoke(app, ["cache", "clear", "--cache-dir", str(cache_dir)], input="n\n").exit_code == 1
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(cache_dir), "--yes"])
    assert cleared.exit_code == 0 and "cleared" in cleared.output
    assert cache_info(cache_dir)["namespaces"] == []
