"""The on-disk embedding store: immutable shards of content-addressed rows, committed by one rename.

Layout under the cache root (one *namespace* per backbone + weights + transform + view)::

    v1/<namespace>/meta.json            what the namespace holds (for `transferkit cache info`)
    v1/<namespace>/.lock                writers hold an exclusive fcntl lock while filling
    v1/<namespace>/shards/<id>/         one committed shard, never modified afterwards:
        keys.bin    n x 32 bytes        SHA-256 of each image file's bytes (the row key)
        emb.f16     n x dim float16     row i embeds keys[i]; opened with np.memmap
        meta.json   {"rows", "dim", "dtype"}
    v1/<namespace>/shards/.tmp-<id>/    a shard being written: readers never look at it

Why shards and not one growing array: adding images to a dataset only embeds (and writes) the new
ones, a writer never touches bytes a reader may have mapped, and a crash can only leave a ``.tmp-``
folder behind, which the next writer deletes. A shard becomes visible in one atomic ``rename`` of
its folder, after its files are fsynced, so a half-written shard is never read as valid; a
committed shard whose file sizes disagree with its ``meta.json`` (a damaged disk) is ignored.

Concurrency: writers of a namespace serialise on ``flock`` (released by the kernel if a process
dies), re-read the index under the lock and embed only what is still missing, so two runs never
do the work twice. Readers take no lock: committed shards are immutable. Without fcntl (Windows)
writers do not wait, and at worst two shards hold the same rows, which is harmless.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from transferkit.errors import CheckpointError
from transferkit.features.digests import DIGEST_BYTES, FORMAT
from transferkit.fileio import write_json

try:  # POSIX only; see the module docstring for what happens without it
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["ENV_CACHE_DIR", "cache_root", "Namespace", "Shard", "ShardIndex", "ShardWriter", "RowReader",
           "cache_info", "clear_cache"]

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "TRANSFERKIT_CACHE_DIR"
DTYPE = np.dtype("<f2")
_TMP = ".tmp-"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else $TRANSFERKIT_CACHE_DIR, else $XDG_CACHE_HOME/transferkit, else ~/.cache/transferkit."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "transferkit"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # folders on some file systems refuse fsync; the rename is still atomic
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Shard:
    """One committed shard: ``rows`` embeddings of size ``dim``."""

    path: Path
    rows: int
    dim: int

    def keys(self) -> np.ndarray:
        return np.fromfile(self.path / "keys.bin", dtype=np.uint8).reshape(self.rows, DIGEST_BYTES)

    def memmap(self) -> np.memmap:
        return np.memmap(self.path / "emb.f16", dtype=DTYPE, mode="r", shape=(self.rows, self.dim))

    @classmethod
    def open(cls, path: Path) -> "Shard | None":
        """The shard at ``path``, or None (logged) when its files do not agree with its meta.json."""
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            rows, dim = int(meta["rows"]), int(meta["dim"])
            ok = (
                meta.get("dtype") == "float16"
                and (path / "keys.bin").stat().st_size == rows * DIGEST_BYTES
                and (path / "emb.f16").stat().st_size == rows * dim * DTYPE.itemsize
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring damaged cache shard %s (%s)", path, exc)
            return None
        if not ok:
            log.warning("ignoring damaged cache shard %s (file sizes do not match its meta.json)", path)
            return None
        return cls(path, rows, dim)


class ShardIndex:
    """digest -> (shard, row) over every committed shard, by binary search on sorted 32-byte keys.

    Numpy rather than a dict: a million keys cost 32 MB here and several hundred MB as Python bytes.
    """

    def __init__(self, shards: list[Shard]) -> None:
        self.shards = shards
        keys = [s.keys() for s in shards]
        flat = np.concatenate(keys) if keys else np.zeros((0, DIGEST_BYTES), np.uint8)
        shard_ids = np.concatenate([np.full(s.rows, i, np.int32) for i, s in enumerate(shards)] or [np.zeros(0, np.int32)])
        rows = np.concatenate([np.arange(s.rows, dtype=np.int64) for s in shards] or [np.zeros(0, np.int64)])
        packed = np.ascontiguousarray(flat).view(f"V{DIGEST_BYTES}").ravel()
        order = np.argsort(packed, kind="stable")  # stable: the oldest copy of a duplicated row wins
        self._keys, self._shard, self._row = packed[order], shard_ids[order], rows[order]

    def __len__(self) -> int:
        return int(self._keys.size)

    def find(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For n x 32 digests: (shard index or -1 when absent, row) arrays of length n."""
        query = np.ascontiguousarray(digests, dtype=np.uint8).view(f"V{DIGEST_BYTES}").ravel()
        shard = np.full(query.size, -1, np.int32)
        row = np.zeros(query.size, np.int64)
        if not len(self) or not query.size:
            return shard, row
        pos = np.minimum(np.searchsorted(self._keys, query), len(self) - 1)
        hit = self._keys[pos] == query
        shard[hit], row[hit] = self._shard[pos[hit]], self._row[pos[hit]]
        return shard, row

    def gather(self, shard_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The rows into one in-memory float16 array (every id must be a hit)."""
        dim = self.shards[0].dim if self.shards else 0
        out = np.empty((len(rows), dim), dtype=DTYPE)
        for s in np.unique(shard_ids):
            sel = shard_ids == s
            mm = self.shards[int(s)].memmap()
            out[sel] = mm[rows[sel]]
            del mm  # unmap now: the copy is what we keep
        return out


class RowReader:
    """Reads scattered rows with ``pread`` instead of a memory map.

    Touching a mapped 2.5 GB file at random pulls every page into this process's resident set;
    ``pread`` goes through the page cache, so resident memory stays at one batch.
    """

    def __init__(self, shards: list[Shard]) -> None:
        self.shards = shards
        self._fds: dict[int, int] = {}

    def read(self, shard_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        dim = self.shards[0].dim
        out = np.empty((len(rows), dim), dtype=DTYPE)
        size = dim * DTYPE.itemsize
        for i in np.lexsort((rows, shard_ids)):  # file order: sequential where rows are adjacent
            s = int(shard_ids[i])
            fd = self._fds.get(s)
            if fd is None:
                fd = self._fds[s] = os.open(self.shards[s].path / "emb.f16", os.O_RDONLY)
            out[i] = np.frombuffer(os.pread(fd, size, int(rows[i]) * size), dtype=DTYPE)
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:  # best effort; close() is the normal path
        with contextlib.suppress(Exception):
            self.close()


class ShardWriter:
    """Streams rows into a ``.tmp-`` shard folder; :meth:`commit` makes it visible atomically."""

    def __init__(self, shards_dir: Path, dim: int) -> None:
        self.dim = dim
        self.shards_dir = shards_dir
        self.name = f"{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = shards_dir / f"{_TMP}{self.name}"
        self.tmp.mkdir(parents=True)
        self._emb = open(self.tmp / "emb.f16", "wb")
        self._keys = open(self.tmp / "keys.bin", "wb")
        self.rows = 0

    def append(self, digests: np.ndarray, embeddings: np.ndarray) -> None:
        emb = np.ascontiguousarray(embeddings, dtype=DTYPE)
        if emb.ndim != 2 or emb.shape[1] != self.dim or len(digests) != len(emb):
            raise ValueError(f"shard rows must be (n, {self.dim}) with n digests; got {emb.shape}, {len(digests)}")
        self._emb.write(emb.tobytes())
        self._keys.write(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
        self.rows += len(emb)

    def commit(self) -> Path | None:
        """fsync, write meta.json, rename the folder into place; None (and nothing kept) for zero rows."""
        for handle in (self._emb, self._keys):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        if not self.rows:
            self.discard()
            return None
        (self.tmp / "meta.json").write_text(json.dumps({"rows": self.rows, "dim": self.dim, "dtype": "float16"}))
        _fsync(self.tmp / "meta.json")
        final = self.shards_dir / self.name
        os.rename(self.tmp, final)
        _fsync(self.shards_dir)
        return final

    def discard(self) -> None:
        for handle in (self._emb, self._keys):
            with contextlib.suppress(OSError):
                handle.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Namespace:
    """The shards of one (backbone, weights, transform, view) combination."""

    def __init__(self, root: str | os.PathLike[str], key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.path = self.root / f"v{FORMAT}" / key
        self.shards_dir = self.path / "shards"

    def describe(self, meta: dict[str, Any]) -> None:
        """Write meta.json once (it only helps `cache info`; the key alone decides what is valid)."""
        if not (self.path / "meta.json").exists():
            write_json(self.path / "meta.json", meta)

    @contextlib.contextmanager
    def locked(self, on_wait: Callable[[], None] | None = None, shared: bool = False) -> Iterator[None]:
        """Exclusive lock for writers; released when the block ends or the process dies.

        ``on_wait`` is called once if another process holds the lock (so a run can say why it pauses).
        ``shared``: the ranks of one torchrun job fill disjoint parts side by side under a shared lock;
        a run outside the job waits for all of them (and never the other way round). Orphaned ``.tmp-``
        folders are removed only under the exclusive lock, since under a shared one they belong to
        the other ranks.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / ".lock", "a+b")
        except OSError as exc:
            raise CheckpointError(
                f"cannot use the embedding cache at {self.root} ({exc.strerror or exc}); "
                "choose a writable folder with --cache-dir (or TRANSFERKIT_CACHE_DIR), or pass --no-cache"
            ) from None
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) if fcntl is not None else 0
        with handle:
            if fcntl is not None:
                try:
                    fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
                except BlockingIOError:
                    if on_wait is not None:
                        on_wait()
                    fcntl.flock(handle.fileno(), mode)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def committed(self) -> list[Shard]:
        if not self.shards_dir.is_dir():
            return []
        names = sorted(p.name for p in self.shards_dir.iterdir() if not p.name.startswith("."))
        return [s for s in (Shard.open(self.shards_dir / n) for n in names) if s is not None]

    def index(self) -> ShardIndex:
        return ShardIndex(self.committed())

    def remove_orphans(self) -> None:
        """Delete ``.tmp-`` folders of writers that died; call only while holding :meth:`locked`."""
        if self.shards_dir.is_dir():
            for p in self.shards_dir.iterdir():
                if p.name.startswith(_TMP):
                    shutil.rmtree(p, ignore_errors=True)

    @contextlib.contextmanager
    def writer(self, dim: int) -> Iterator[ShardWriter]:
        """A new shard; committed when the block ends normally, deleted on any exception."""
        w = ShardWriter(self.shards_dir, dim)
        try:
            yield w
        except BaseException:
            w.discard()
            raise
        w.commit()


def _namespace_dirs(versions: Path) -> list[Path]:
    if not versions.is_dir():
        return []
    return sorted(p for p in versions.iterdir() if p.is_dir() and not p.name.startswith("."))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cache_info(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Root, total bytes and, per namespace, what it holds (rows, shards, bytes, meta.json)."""
    base = cache_root(root)
    spaces = []
    for folder in _namespace_dirs(base / f"v{FORMAT}"):
        ns = Namespace(base, folder.name)
        shards = ns.committed()
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        spaces.append({"key": folder.name, "rows": sum(s.rows for s in shards), "shards": len(shards),
                       "bytes": _size(folder), "meta": meta})
    return {"root": str(base), "bytes": sum(s["bytes"] for s in spaces), "namespaces": spaces}


def clear_cache(root: str | os.PathLike[str] | None = None) -> int:
    """Delete every namespace (each under its writer lock, so no fill is cut in half); returns bytes freed."""
    base = cache_root(root)
    versions = base / f"v{FORMAT}"
    freed = 0
    for folder in _namespace_dirs(versions):
        ns = Namespace(base, folder.name)
        freed += _size(folder)
        with ns.locked():
            trash = versions / f".trash-{uuid.uuid4().hex}"
            os.rename(folder, trash)  # atomic: readers see the whole namespace or none of it
        shutil.rmtree(trash, ignore_errors=True)
    for leftover in versions.glob(".trash-*") if versions.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
    return freed
