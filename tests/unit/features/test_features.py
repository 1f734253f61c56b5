"""Embedding cache: hits skip the backbone, keys follow bytes/transform/weights, interrupted and concurrent
writes stay valid, cached head training matches the uncached path, and embed/cache commands work."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import transferkit.features.cache as cache_mod
from transferkit.data.decode import load_rgb
from transferkit.data.transforms import eval_transform, resize_size
from transferkit.features import FeatureCache, FeatureSet, cache_root
from transferkit.features.store import ShardWriter
from transferkit.models.backbones import build_backbone, resolve_spec



def tiny_spec(size: int = 32):
    return resolve_spec("efficientnet_lite0").with_input_size(size)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(tiny_spec())


def image_paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.jpg"))


class Counter:
    """Counts images pushed through a backbone (forward hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.images = 0
        self.handle = module.register_forward_hook(lambda m, args, out: self.bump(args[0].shape[0]))

    def bump(self, n: int) -> None:
        self.images += n


def make_cache(backbone, tmp_path, **kwargs) -> FeatureCache:
    return FeatureCache(backbone, tiny_spec(), cache_dir=str(tmp_path / "cache"), workers=0, batch_size=16, **kwargs)


# --- the cache itself ------------------------------------------------------------------------------


def test_second_lookup_hits_without_calling_the_backbone(backbone, tiny_folder, tmp_path):
    paths = image_paths(tiny_folder)
    counter = Counter(backbone)
    first_cache = make_cache(backbone, tmp_path)
    first = first_cache.lookup(paths)
    assert first_cache.embedded == len(paths) and counter.images > 0
    calls = counter.images
    again = make_cache(backbone, tmp_path).lookup(paths)  # a new object, as a second run would build
    assert counter.images == calls, "a warm cache must not run the backbone"
    assert np.array_equal(first.read(np.arange(len(paths))), again.read(np.arange(len(paths))))
    counter.handle.remove()


def test_cached_rows_equal_the_uncached_forward(backbone, tiny_folder, tmp_path):
    paths = image_paths(tiny_folder)[:4]
    rows = make_cache(backbone, tmp_path).lookup(paths).read(np.arange(4)).astype(np.float32)
    spec = tiny_spec()
    with torch.no_grad():
        x = torch.stack([eval_transform(spec)(load_rgb(p, resize_size(spec))) for p in paths])
        direct = backbone.eval()(x).numpy()
    assert np.allclose(rows, direct, rtol=1e-2, atol=1e-2)  # float16 storage


def test_key_follows_file_bytes_not_names(backbone, tiny_folder, tmp_path):
    paths = image_paths(tiny_folder)[:6]
    fc = make_cache(backbone, tmp_path)
    fc.lookup(paths)
    Image.new("RGB", (40, 40), (10, 250, 10)).save(paths[0])  # new bytes under the same name
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(Path(paths[1]).read_bytes())  # same bytes under a new name
    before = fc.embedded
    fc.lookup(paths + [str(copy)])
    assert fc.embedded - before == 1, "only the edited file is embedded again"


def test_unreadable_files_and_their_copies_are_reported_not_cached(backbone, tiny_folder, tmp_path):
    good = image_paths(tiny_folder)[:2]
    bad, copy = tmp_path / "bad.jpg", tmp_path / "bad_copy.jpg"
    bad.write_bytes(Path(good[0]).read_bytes()[:300])  # truncated JPEG
    copy.write_bytes(bad.read_bytes())
    fc = make_cache(backbone, tmp_path)
    rows = fc.lookup(good + [str(bad), str(copy), str(tmp_path / "missing.jpg")])
    assert rows.positions.tolist() == [0, 1]
    assert set(rows.failed) == {2, 3, 4} and rows.failed[2] == rows.failed[3]
    assert len(fc.namespace().index()) == 2


def test_key_changes_with_transform_and_weights(backbone, tiny_folder, tmp_path):
    spec = tiny_spec()
    base = make_cache(backbone, tmp_path)
    other_interp = FeatureCache(backbone, dataclasses.replace(spec, interpolation="bilinear"), cache_dir=str(tmp_path / "cache"))
    other_size = FeatureCache(build_backbone(tiny_spec(48)), tiny_spec(48), cache_dir=str(tmp_path / "cache"))
    state = {k: v.clone().contiguous() for k, v in backbone.state_dict().items()}
    save_file(state, str(tmp_path / "a.safetensors"))
    state["conv_stem.weight"] += 0.01
    save_file(state, str(tmp_path / "b.safetensors"))
    from_a = FeatureCache(backbone, spec, weights=str(tmp_path / "a.safetensors"), cache_dir=str(tmp_path / "cache"))
    from_b = FeatureCache(backbone, spec, weights=str(tmp_path / "b.safetensors"), cache_dir=str(tmp_path / "cache"))
    keys = [fc.namespace().key for fc in (base, other_interp, other_size, from_a, from_b)]
    assert len(set(keys)) == len(keys)
    assert base.namespace(None).key != base.namespace(0).key != base.namespace(1).key
    assert make_cache(backbone, tmp_path).namespace().key == keys[0]  # and stable


def test_interrupted_fill_leaves_nothing_valid(backbone, tiny_folder, tmp_path, monkeypatch):
    paths = image_paths(tiny_folder)
    real = cache_mod.embed_images

    def dies_after_one_batch(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise KeyboardInterrupt  # the user pressed Ctrl-C mid-write
            yield batch

    monkeypatch.setattr(cache_mod, "embed_images", dies_after_one_batch)
    fc = make_cache(backbone, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        fc.lookup(paths)
    ns = fc.namespace()
    assert ns.committed() == [] and len(ns.index()) == 0
    assert not [p for p in ns.shards_dir.iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.setattr(cache_mod, "embed_images", real)
    assert len(fc.lookup(paths).positions) == len(paths)


def test_killed_writer_and_damaged_shard_are_ignored(backbone, tiny_folder, tmp_path):
    paths = image_paths(tiny_folder)[:5]
    fc = make_cache(backbone, tmp_path)
    ns = fc.namespace()
    killed = ShardWriter(ns.shards_dir, 1280)  # a writer that died before commit: a .tmp- folder remains
    killed.append(np.zeros((2, 32), np.uint8), np.ones((2, 1280), np.float16))
    damaged = ns.shards_dir / "0-damaged"
    damaged.mkdir()
    (damaged / "meta.json").write_text(json.dumps({"rows": 5, "dim": 1280, "dtype": "float16"}))
    (damaged / "keys.bin").write_bytes(b"\0" * 5 * 32)
    (damaged / "emb.f16").write_bytes(b"\0" * 100)  # truncated
    assert len(ns.index()) == 0
    assert len(fc.lookup(paths).positions) == 5
    assert not killed.tmp.exists(), "the next writer removes orphaned temporary shards"


def _concurrent_worker(cache_dir: str, paths: list[str], barrier, results) -> None:
    torch.set_num_threads(1)
    fc = FeatureCache(build_backbone(tiny_spec()), tiny_spec(), cache_dir=cache_dir, workers=0, batch_size=8)
    barrier.wait()
    rows = fc.lookup(paths)
    results.put((fc.embedded, rows.read(np.arange(len(rows.positions))).astype(np.float32).sum()))


def test_two_concurrent_writers_produce_one_valid_cache(backbone, tiny_folder, tmp_path):
    paths = image_paths(tiny_folder)
    # spawn, not fork: a child forked after torch ran its OpenMP pool can hang in its first convolution
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    args = (str(tmp_path / "cache"), paths, barrier, results)
    procs = [ctx.Process(target=_concurrent_worker, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    out = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    embedded = sorted(n for n, _ in out)
    assert embedded == [0, len(paths)], "the lock lets one writer embed and the other reuse its rows"
    assert out[0][1] == pytest.approx(out[1][1])
    ns = FeatureCache(backbone, tiny_spec(), cache_dir=str(tmp_path / "cache")).namespace()
    assert len(ns.index()) == len(paths)
    assert not [p for p in ns.shards_dir.iterdir() if p.name.startswith(".")]


def test_streamed_and_in_memory_batches_are_identical(backbone, tiny_folder, tmp_path):
    paths = image_paths(tiny_folder)
    rows = make_cache(backbone, tmp_path).lookup(paths)
    labels = list(range(len(paths)))
    memory, streamed = FeatureSet([rows], labels), FeatureSet([rows], labels, memory_budget=0)
    assert not memory.streamed and streamed.streamed
    for a, b in zip(memory.batches(8, shuffle=True, seed=3, epoch=2), streamed.batches(8, shuffle=True, seed=3, epoch=2)):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    first = [b["indices"].tolist() for b in memory.batches(8, shuffle=True, seed=3, epoch=1)]
    assert first != [b["indices"].tolist() for b in memory.batches(8, shuffle=True, seed=3, epoch=2)]


def test_probe_rows_are_every_view_of_every_item_in_memory_or_streamed(backbone, tiny_folder, tmp_path):
    paths = image_paths(tiny_folder)[:6]
    cache = make_cache(backbone, tmp_path)
    views = [cache.lookup(paths, view) for view in (0, 1)]
    labels = [0, 1, 2, 0, 1, 2]
    memory, streamed = FeatureSet(views, labels), FeatureSet(views, labels, memory_budget=0)
    (x, y), (xs, ys) = memory.matrix(), streamed.matrix()
    assert x.shape == (12, 1280) and x.dtype == np.float16 and y.tolist() == labels * 2
    assert np.array_equal(x, xs) and np.array_equal(y, ys) and streamed.data is None
    assert np.array_equal(x[6:], views[1].read(np.arange(6)))  # view-major: the second view's rows follow the first's


def test_augmented_views_are_distinct_and_reproducible(backbone, tiny_folder, tmp_path):
    paths = image_paths(tiny_folder)[:4]
    fc = make_cache(backbone, tmp_path)
    eval_rows = fc.lookup(paths).read(np.arange(4))
    view0 = fc.lookup(paths, view=0).read(np.arange(4))
    view1 = fc.lookup(paths, view=1).read(np.arange(4))
    assert not np.array_equal(view0, eval_rows) and not np.array_equal(view0, view1)
    again = make_cache(backbone, tmp_path / "elsewhere").lookup(paths, view=0).read(np.arange(4))
    assert np.array_equal(view0, again), "view j of a file is the same crop in every cache"


def test_cache_dir_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("TRANSFERKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "transferkit"


class _TwoUses(torch.nn.Module):
    """A conv whose output feeds a BatchNorm and a residual sum: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_batchnorm_folding_is_exact_and_leaves_the_backbone_alone(backbone):
    from transferkit.features.fuse import fold_batchnorm

    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    folded = fold_batchnorm(backbone, x)
    assert folded is not backbone and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        assert torch.allclose(folded(x), backbone.eval()(x), atol=1e-4, rtol=1e-3)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    shared = _TwoUses()
    shared.bn.running_mean.fill_(0.5)
    assert fold_batchnorm(shared, x) is shared, "a conv output used twice is not folded"
