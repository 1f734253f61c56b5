"""Duplicates and leakage: exact copies by content hash, near copies by embedding cosine similarity.

A pair whose two images lie in different splits (train / val / test) is **leakage**: the held-out figure
then measures memory of a training image, not generalisation. Any two different splits count, val/test
included: the selection split chooses on what the test split reports. In a flat folder (no predefined
split) pairs are plain duplicates: transferkit will carve the splits at random, so either copy may land
anywhere, and removing one copy before training is the fix.

Exact duplicates are byte-identical files (SHA-256 of the bytes, ``transferkit.features.keys.file_digest``,
the same key the embedding cache uses). Near duplicates are pairs whose L2-normalised embeddings have cosine
similarity of at least :data:`NEAR_THRESHOLD`: a re-encoded, resized or lightly cropped copy of a photo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from transferkit.features.keys import file_digest

__all__ = ["NEAR_THRESHOLD", "MIN_THRESHOLD", "BLOCK_ROWS", "MAX_PAIRS", "Pair", "exact_duplicate_pairs",
           "near_duplicate_pairs", "find_duplicates", "is_leakage", "pair_rows"]

# Cosine similarity of EfficientNet-Lite0 embeddings (224 px) at and above which two images are reported as
# near copies. Measured by benchmarks/audit_noise.py on flowers: copies re-encoded at JPEG quality 70 and 90%
# size keep 0.91-0.97 (median 0.945), so 0.95 would miss half of them; 0.92 finds 9 of 10. Among the 4.5
# million pairs of distinct files of flowers, 50 lie in [0.90, 0.95); of ten of them looked at, spread over
# that range, the eight at 0.908 and above were the same scene shot twice or the same photo cropped, the two at
# 0.902 and 0.905 different photos of similar flowers. 0.92 keeps clear of where distinct photos begin.
NEAR_THRESHOLD = 0.92
# Lowest threshold accepted: the list grows about tenfold per 0.1 below it (flowers, 3,000 photos: 62 pairs at
# 0.9, 2,795 at 0.8, 29,124 at 0.7, 140,946 at 0.6), and those pairs are similar flowers, not copies.
MIN_THRESHOLD = 0.8
# Rows of the similarity matrix computed at once: BLOCK_ROWS x n float32 (1024 x 10,000 = 40 MB).
BLOCK_ROWS = 1024
# A report past this many pairs is not read by anyone; the most similar are kept and the rest counted.
MAX_PAIRS = 20_000


@dataclass(frozen=True)
class Pair:
    """Two images (indices, first < second) that are copies of each other."""

    first: int
    second: int
    kind: str  # "exact" (same bytes) or "near" (embedding similarity)
    similarity: float


def is_leakage(split_a: str, split_b: str) -> bool:
    """A pair spans two different predefined splits (a flat folder's ``all`` has none)."""
    return split_a != split_b and "all" not in (split_a, split_b)


def exact_duplicate_pairs(paths: Sequence[str]) -> tuple[list[tuple[int, int]], dict[int, str]]:
    """Pairs of byte-identical files (every pair of each group), and {index: reason} for unreadable files."""
    groups: dict[bytes, list[int]] = {}
    errors: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            groups.setdefault(file_digest(path), []).append(i)
        except OSError as exc:
            errors[i] = f"cannot read file to hash it ({exc.strerror or exc})"
    pairs = [(a, b) for members in groups.values() for k, a in enumerate(members) for b in members[k + 1:]]
    return sorted(pairs), errors


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def near_duplicate_pairs(embeddings: np.ndarray, threshold: float = NEAR_THRESHOLD,
                         block_rows: int = BLOCK_ROWS) -> list[tuple[int, int, float]]:
    """(i, j, cosine similarity) for every pair i < j at or above ``threshold``, most similar first.

    The similarity matrix is computed ``block_rows`` rows at a time against the rows after the block's
    first, so memory stays at ``block_rows x n`` whatever the number of images.
    """
    x = _normalised(embeddings)
    n = len(x)
    found: list[tuple[int, int, float]] = []
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        sims = x[start:stop] @ x[start:].T  # block rows against themselves and every later row
        rows, cols = np.nonzero(sims >= threshold)
        keep = cols > rows  # upper triangle: j > i, no self-pairs
        for r, c in zip(rows[keep].tolist(), cols[keep].tolist()):
            found.append((start + r, start + c, float(sims[r, c])))
    found.sort(key=lambda item: (-item[2], item[0], item[1]))
    return found


def find_duplicates(paths: Sequence[str], embeddings: np.ndarray,
                    threshold: float = NEAR_THRESHOLD) -> tuple[list[Pair], dict[str, Any]]:
    """Exact and near-duplicate pairs (exact first, then by similarity), and counts for the report.

    An exact pair is reported once, as exact, even though its embeddings also match.
    """
    x = _normalised(embeddings)
    exact, unreadable = exact_duplicate_pairs(paths)
    pairs = [Pair(a, b, "exact", float(x[a] @ x[b])) for a, b in exact]
    seen = set(exact)
    pairs += [Pair(a, b, "near", sim) for a, b, sim in near_duplicate_pairs(x, threshold) if (a, b) not in seen]
    info = {"threshold": threshold, "exact_pairs": len(exact), "near_pairs": len(pairs) - len(exact),
            "unhashed": [{"path": os.fspath(paths[i]), "reason": r} for i, r in sorted(unreadable.items())]}
    return pairs, info


def pair_rows(pairs: Sequence[Pair], paths: Sequence[str], splits: Sequence[str], labels: np.ndarray,
              classes: Sequence[str], max_pairs: int = MAX_PAIRS) -> tuple[list[dict[str, Any]], int]:
    """Report rows (leakage pairs first, then the rest; exact before near, then by similarity), at most
    ``max_pairs`` of them, and how many were left out."""
    rows = []
    for p in pairs:
        a, b = p.first, p.second
        rows.append({
            "kind": p.kind, "similarity": round(p.similarity, 4),
            "leakage": is_leakage(splits[a], splits[b]),
            "same_label": bool(labels[a] == labels[b]),
            "a": {"path": paths[a], "split": splits[a], "label": classes[int(labels[a])]},
            "b": {"path": paths[b], "split": splits[b], "label": classes[int(labels[b])]},
        })
    rows.sort(key=lambda r: (not r["leakage"], r["kind"] != "exact", -r["similarity"]))
    return rows[:max_pairs], max(0, len(rows) - max_pairs)
