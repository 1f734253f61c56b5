"""``torchrun --nproc_per_node 2 -m transferkit.cli embed``: the ranks share the work and the cache equals one process's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image_folder, run_one_thread, torchrun
from transferkit.features.store import Namespace

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")

ARGS = ["--input-size", "32", "--engine", "torch", "--workers", "0"]


def _rows(cache: Path) -> dict[bytes, np.ndarray]:
    (space,) = [p for p in (cache / "v1").iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "onnx"]
    shards = Namespace(cache, space.name).committed()
    rows: dict[bytes, np.ndarray] = {}
    for shard in shards:
        for key, row in zip(shard.keys(), np.asarray(shard.memmap())):
            assert key.tobytes() not in rows  # no file was embedded twice
            rows[key.tobytes()] = row
    return rows


def test_two_ranks_split_the_files_and_fill_the_same_cache(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"a": 15, "b": 16}, size=48)
    one_cache, two_cache = tmp_path / "cache1", tmp_path / "cache2"
    run_one_thread([sys.executable, "-m", "transferkit.cli", "embed", str(data), "--out", str(tmp_path / "one.npz"),
          "--cache-dir", str(one_cache), *ARGS], tmp_path)
    log = run_one_thread([*torchrun(2), "-m", "transferkit.cli", "embed", str(data), "--out", str(tmp_path / "two.npz"),
                "--cache-dir", str(two_cache), *ARGS], tmp_path)
    # each rank embedded its own half: 15 and 16 of the 31 files, each in its own shard
    assert sorted(int(line.split()[1]) for line in log.splitlines() if line.startswith("embedded ")) == [15, 16]
    one, two = _rows(one_cache), _rows(two_cache)
    assert set(one) == set(two) and len(two) == 31
    gap = max(float(np.abs(one[k].astype(np.float32) - two[k].astype(np.float32)).max()) for k in one)
    assert gap <= 1e-3  # float16 rows; batches of other sizes may round the last bit differently
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert (a["paths"] == b["paths"]).all() and (a["labels"] == b["labels"]).all()
    np.testing.assert_allclose(a["embeddings"].astype(np.float32), b["embeddings"].astype(np.float32), atol=1e-3)
    # a second job finds everything cached: no rank embeds anything
    again = run_one_thread([*torchrun(2), "-m", "transferkit.cli", "embed", str(data), "--out", str(tmp_path / "again.npz"),
                  "--cache-dir", str(two_cache), *ARGS], tmp_path)
    assert "embedding " not in again


def test_the_ranks_shares_are_disjoint_and_complete() -> None:
    from transferkit.features.cache import Part

    todo = np.arange(11)
    shares = [Part(r, 3, lambda: None).share(todo) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == todo.tolist()
    assert all(len(set(a) & set(b)) == 0 for i, a in enumerate(shares) for b in shares[i + 1:])
