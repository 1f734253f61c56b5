"""A warm ``transferkit embed`` answers from the cache without torch, and exactly as the full path does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import make_image_folder
from transferkit.features.export import embed_folder
from transferkit.features.warm import MEMO_FILE, memo_key, warm_embed

ARGS = dict(input_size=32, workers=0, engine="torch")


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key


def test_warm_embed_equals_the_full_path_and_imports_no_torch(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6})
    cache = str(tmp_path / "cache")
    assert warm_embed(data, cache_dir=cache, **ARGS) is None  # nothing recorded yet
    full = embed_folder(data, tmp_path / "full.npz", cache_dir=cache, **ARGS)
    assert json.loads((tmp_path / "cache" / MEMO_FILE).read_text())
    _same(full, warm_embed(data, tmp_path / "warm.npz", cache_dir=cache, **ARGS))
    _same(dict(np.load(tmp_path / "full.npz")), dict(np.load(tmp_path / "warm.npz")))
    probe = (f"import sys; from transferkit.features.warm import warm_embed; "
             f"r = warm_embed({str(data)!r}, cache_dir={cache!r}, input_size=32, engine='torch'); "
             "assert r is not None and r['embeddings'].shape == (12, 1280); "
             "heavy = [m for m in ('torch', 'torchvision', 'timm') if m in sys.modules]; assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_anything_new_takes_the_full_path(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6})
    cache = str(tmp_path / "cache")
    embed_folder(data, cache_dir=cache, **ARGS)
    assert warm_embed(data, cache_dir=cache, **ARGS) is not None
    assert warm_embed(data, cache_dir=cache, **{**ARGS, "input_size": 48}) is None  # another request
    assert warm_embed(data, cache_dir=cache, **ARGS, cache=False) is None
    Image.new("RGB", (40, 40), (1, 2, 3)).save(data / "a" / "a_000.jpg")  # changed bytes: not in the cache
    assert warm_embed(data, cache_dir=cache, **ARGS) is None
    full = embed_folder(data, cache_dir=cache, **ARGS)  # embeds the one changed file, then warm again
    _same(full, warm_embed(data, cache_dir=cache, **ARGS))


def test_memo_key_names_the_request_and_the_weights_file(tmp_path: Path) -> None:
    base = memo_key("efficientnet_lite0", None, 224, "auto", "auto")
    assert base == memo_key("efficientnet_lite0", None, 224, "auto", "auto")
    assert len({base, memo_key("efficientnet_lite0", None, 160, "auto", "auto"),
                memo_key("efficientnet_lite1", None, 224, "auto", "auto"),
                memo_key("efficientnet_lite0", None, 224, "auto", "torch")}) == 4
    assert memo_key("timm:resnet18", None, 224, "auto", "auto") is None  # hub weights: only their bytes name them
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x" * 10)
    first = memo_key("timm:resnet18", str(weights), 224, "auto", "auto")
    weights.write_bytes(b"y" * 11)
    assert first is not None and memo_key("timm:resnet18", str(weights), 224, "auto", "auto") != first
