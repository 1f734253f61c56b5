"""Content hashes of image files: the row keys of the embedding cache (numpy and hashlib only).

Kept apart from :mod:`transferkit.features.keys` (which imports torch, torchvision and timm to describe a
backbone) so the store and a warm ``transferkit embed`` can hash and look up files without those imports.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

__all__ = ["FORMAT", "DIGEST_BYTES", "file_digest", "digest_files"]

FORMAT = 1  # bump when the meaning of a stored row changes (invalidates every namespace)
DIGEST_BYTES = 32


def file_digest(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> bytes:
    """SHA-256 of a file's bytes (raises OSError when the file cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.digest()


def digest_files(paths: Sequence[str]) -> tuple[np.ndarray, dict[int, str]]:
    """(n x 32 uint8 digests, {index: reason} for files that could not be read; their rows are zero)."""
    out = np.zeros((len(paths), DIGEST_BYTES), dtype=np.uint8)
    errors: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            out[i] = np.frombuffer(file_digest(path), dtype=np.uint8)
        except OSError as exc:
            errors[i] = f"cannot read file ({exc.strerror or exc})"
    return out, errors
