"""FeatureCache: embeddings of image files, computed once per (content, backbone, weights, transform, view).

>>> cache = FeatureCache(backbone, spec)                  # built-in weights, default cache folder
>>> rows = cache.lookup(["a.jpg", "b.jpg"])              # embeds what is missing, then reads
>>> rows.read(np.arange(len(rows.positions)))            # float16 (n_readable, feature_dim)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from transferkit.data.transforms import eval_transform, resize_size, train_transform
from transferkit.errors import CheckpointError
from transferkit.features.extract import embed_images
from transferkit.features.keys import (
    digest_files,
    engine_identity,
    model_identity,
    namespace_key,
    view_identity,
    view_seed,
    weights_digest,
)
from transferkit.features.store import DTYPE, Namespace, RowReader, ShardIndex, ShardWriter, cache_root
from transferkit.models.backbones import BackboneSpec

__all__ = ["FeatureCache", "ViewRows", "Part", "SHARD_ROWS"]

SHARD_ROWS = 4096  # commit a shard every this many rows: an interrupted fill keeps all but the last chunk


@dataclass
class ViewRows:
    """Where the embeddings of one view of the requested files are.

    ``positions`` are the indices (into the requested paths) of the files that have an embedding,
    in order; ``failed`` maps the others to the reason. ``read(i)`` returns the rows of
    ``positions[i]``, from memory or from the store (memory map, or ``pread`` when ``stream``).
    """

    positions: np.ndarray
    failed: dict[int, str]
    dim: int
    index: ShardIndex | None = None
    shard: np.ndarray | None = None
    row: np.ndarray | None = None
    array: np.ndarray | None = None  # in-memory rows (cache disabled)
    _reader: RowReader | None = field(default=None, repr=False)

    def select(self, lo: int, hi: int) -> "ViewRows":
        """The part for requested paths ``lo .. hi-1``, renumbered from 0 (one split of a joint lookup)."""
        mask = (self.positions >= lo) & (self.positions < hi)
        pick = lambda a: None if a is None else a[mask]  # noqa: E731
        failed = {k - lo: r for k, r in self.failed.items() if lo <= k < hi}
        return ViewRows(self.positions[mask] - lo, failed, self.dim, self.index, pick(self.shard), pick(self.row), pick(self.array))

    def read(self, which: np.ndarray, stream: bool = False) -> np.ndarray:
        which = np.asarray(which, dtype=np.int64)
        if self.array is not None:
            return self.array[which]
        assert self.index is not None and self.shard is not None and self.row is not None
        if not stream:
            return self.index.gather(self.shard[which], self.row[which])
        if self._reader is None:
            self._reader = RowReader(self.index.shards)
        return self._reader.read(self.shard[which], self.row[which])


@dataclass(frozen=True)
class Part:
    """This process's share of a torchrun job: ``rank`` of ``world``, and the job's barrier."""

    rank: int
    world: int
    barrier: Callable[[], None]

    def share(self, todo: np.ndarray) -> np.ndarray:
        """Every ``world``-th item from ``rank``: the shares are disjoint and together cover ``todo``."""
        return todo[self.rank::self.world]


def _unique_by_digest(positions: np.ndarray, digests: np.ndarray) -> np.ndarray:
    """``positions`` without later copies of the same bytes, in their original order."""
    if not positions.size:
        return positions
    _, first = np.unique(np.ascontiguousarray(digests[positions]).view(f"V{digests.shape[1]}").ravel(), return_index=True)
    return positions[np.sort(first)]


class FeatureCache:
    """Embeds files with ``backbone`` through the cache (or straight into memory when ``enabled`` is False)."""

    def __init__(
        self,
        backbone: nn.Module | Callable[[], nn.Module],
        spec: BackboneSpec,
        *,
        weights: str | None = None,
        pretrained: bool = True,
        cache_dir: str | None = None,
        enabled: bool = True,
        device: torch.device | str = "cpu",
        amp: bool = False,
        batch_size: int = 64,
        workers: int = -1,
        channels_last: bool = True,
        augment: str = "light",
        say: Callable[[str], None] | None = None,
        engine: str = "torch",
    ) -> None:
        # a factory is called only when something must be embedded: a warm lookup never builds the network
        self._backbone = backbone if isinstance(backbone, nn.Module) else None
        self._factory = None if isinstance(backbone, nn.Module) else backbone
        self.spec, self.enabled = spec, enabled
        if engine not in ("torch", "onnx"):
            raise ValueError(f"engine must be 'torch' or 'onnx', not {engine!r}")
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        self.batch_size, self.workers, self.channels_last, self.augment = batch_size, workers, channels_last, augment
        self.draft_size = resize_size(spec)
        self.root = cache_root(cache_dir)
        self.say = say or (lambda text: None)
        precision = "bf16-autocast" if self.amp else "fp32"
        if engine == "onnx" and self.device.type != "cpu":
            raise ValueError("the onnx engine runs on the CPU")
        self.engine = engine
        digest = weights_digest(spec, weights, pretrained, lambda: self.backbone)
        self.identity = model_identity(spec, digest, self.draft_size, precision, engine=engine_identity(engine))
        self.embedded = 0  # images pushed through the backbone by this object (tests and benchmarks read it)
        self._onnx: Any = None

    @property
    def backbone(self) -> nn.Module:
        if self._backbone is None:
            self._backbone = self._factory()
        return self._backbone

    def namespace(self, view: int | None = None) -> Namespace:
        return Namespace(self.root, namespace_key(self.identity, view_identity(self.spec, view, self.augment)))

    def _transform(self, view: int | None):
        return eval_transform(self.spec) if view is None else train_transform(self.spec, self.augment)

    def lookup(self, paths: Sequence[str], view: int | None = None, part: Part | None = None) -> ViewRows:
        """Embeddings of ``paths`` for ``view`` (None: the eval transform; j: augmented view j).

        ``part``: this process is one of the ranks of a torchrun job, all calling ``lookup`` with the same
        paths. The missing files are split between them (each embeds and commits its share of the
        shards), then every rank waits at the barrier and reads all rows. Unreadable files are then known
        only to the rank that tried them; the others report them as "could not be embedded".
        """
        paths = [str(p) for p in paths]
        digests, failed = digest_files(paths)
        readable = np.array([i for i in range(len(paths)) if i not in failed], dtype=np.int64)
        if not self.enabled:
            if part is not None and part.world > 1:
                raise ValueError("sharded embedding needs the cache (the ranks exchange rows through it)")
            return self._in_memory(paths, digests, readable, failed, view)
        ns = self.namespace(view)
        index = ns.index()
        shard, _ = index.find(digests[readable])
        if part is not None and part.world > 1:
            # shares of the full list, not of what each rank saw missing: ranks read the index at different
            # moments (another writer may commit in between), and shares of different lists leave gaps.
            # _fill skips, under the lock, whatever is already there.
            failed.update(self._fill(ns, paths, digests, part.share(_unique_by_digest(readable, digests)), view,
                                     shared=True))
            part.barrier()  # every rank's shards are committed before anyone reads
            index = ns.index()
            shard, _ = index.find(digests[readable])
            left = np.array([i for i in readable[shard < 0] if i not in failed], dtype=np.int64)
            if left.size:  # a safety net (a share's file that another rank saw fail is failed for it too)
                failed.update(self._fill(ns, paths, digests, left, view))
                index = ns.index()
        elif (shard < 0).any():
            failed.update(self._fill(ns, paths, digests, readable[shard < 0], view))
            index = ns.index()
        shard, row = index.find(digests)
        ok = np.array([i for i in readable if shard[i] >= 0 and i not in failed], dtype=np.int64)
        by_bytes = {digests[i].tobytes(): reason for i, reason in failed.items()}
        for i in readable:  # a copy of a file that failed (its bytes were decoded only once) fails the same way
            if shard[i] < 0 and i not in failed:
                failed[int(i)] = by_bytes.get(digests[i].tobytes(), "could not be embedded")
        return ViewRows(ok, failed, self.spec.feature_dim, index=index, shard=shard[ok], row=row[ok])

    def _fill(self, ns: Namespace, paths: list[str], digests: np.ndarray, missing: np.ndarray, view: int | None,
              shared: bool = False) -> dict[int, str]:
        """Embed the missing files under the namespace lock; returns {position: reason} for unreadable ones."""
        with ns.locked(on_wait=lambda: self.say(f"waiting for another process that is filling the cache {ns.path} ..."),
                       shared=shared):
            if not shared:
                ns.remove_orphans()
            shard, _ = ns.index().find(digests[missing])  # another run may have filled them while we waited
            missing = missing[shard < 0]
            if not missing.size:
                return {}
            todo = _unique_by_digest(missing, digests)  # identical bytes under two names: embed once
            ns.describe({**self.identity, **view_identity(self.spec, view, self.augment)})
            try:
                return self._embed_into(ns, paths, digests, todo, view)
            except OSError as exc:  # a full disk or a read-only cache folder: say which and how to go on
                raise CheckpointError(
                    f"cannot write the embedding cache at {self.root} ({exc.strerror or exc}); free some space, "
                    "choose another folder with --cache-dir (or TRANSFERKIT_CACHE_DIR), or pass --no-cache"
                ) from None

    def _embed_into(self, ns: Namespace, paths: list[str], digests: np.ndarray, todo: np.ndarray, view: int | None) -> dict[int, str]:
        label = "eval view" if view is None else f"augmented view {view + 1}"
        self.say(f"embedding {len(todo)} image(s) with {self.spec.name} ({label}); cache: {self.root}")
        started, failed, writer = time.perf_counter(), {}, None
        try:
            for batch in self._batches(paths, digests, todo, view):
                failed.update({int(todo[i]): reason for i, reason in batch.failed})
                if not len(batch.indices):
                    continue
                writer = writer or ShardWriter(ns.shards_dir, self.spec.feature_dim)
                writer.append(digests[todo[batch.indices]], batch.features)
                self.embedded += len(batch.indices)
                if writer.rows >= SHARD_ROWS:
                    writer.commit()
                    writer = None
            if writer is not None:
                writer.commit()
                writer = None
        finally:
            if writer is not None:  # interrupted: the unfinished shard is deleted, committed ones stay valid
                writer.discard()
        seconds = time.perf_counter() - started
        self.say(f"embedded {len(todo) - len(failed)} image(s) in {seconds:.1f}s ({(len(todo) - len(failed)) / max(seconds, 1e-9):.1f}/s)")
        return failed

    def _batches(self, paths: list[str], digests: np.ndarray, todo: np.ndarray, view: int | None):
        seeds = None if view is None else [view_seed(digests[i], view) for i in todo]
        runner = self._onnx_runner() if self.engine == "onnx" else None
        workers = self._onnx_plan().workers if runner else self.workers
        return embed_images(
            None if runner else self.backbone, [paths[i] for i in todo], self._transform(view), draft_size=self.draft_size,
            device=self.device, batch_size=self.batch_size, workers=workers, channels_last=self.channels_last,
            amp=self.amp, seeds=seeds, digests=digests[todo] if self.enabled else None,
            runner=runner,
        )

    def _onnx_plan(self) -> Any:
        from transferkit.export.deploy import onnx_cpu_plan

        return onnx_cpu_plan(self.workers)

    def _onnx_runner(self) -> Callable[[torch.Tensor], np.ndarray]:
        """ONNX Runtime on the backbone's graph (uint8 in, features out), exported once per identity into the cache
        folder and checked against PyTorch before first use (:func:`transferkit.export.deploy.backbone_engine`)."""
        if self._onnx is None:
            from transferkit.export.deploy import backbone_engine

            # the network is built only if its graph must be exported (once per identity and cache folder)
            self._onnx = backbone_engine(lambda: self.backbone, self.spec,
                                         self.root / "onnx" / f"{namespace_key(self.identity)}.onnx",
                                         threads=self._onnx_plan().threads)
        model = self._onnx
        return lambda images: model.run(images.permute(0, 2, 3, 1).numpy())["features"]

    def _in_memory(self, paths: list[str], digests: np.ndarray, readable: np.ndarray, failed: dict[int, str], view: int | None) -> ViewRows:
        array = np.zeros((len(paths), self.spec.feature_dim), dtype=DTYPE)
        done = np.zeros(len(paths), dtype=bool)
        for batch in self._batches(paths, digests, readable, view):
            failed.update({int(readable[i]): reason for i, reason in batch.failed})
            array[readable[batch.indices]] = batch.features
            done[readable[batch.indices]] = True
            self.embedded += len(batch.indices)
        ok = np.flatnonzero(done)
        return ViewRows(ok, failed, self.spec.feature_dim, array=array[ok])
