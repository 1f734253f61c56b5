"""Duplicates and leakage: exact copies by content hash; near copies found by embedding or pixel neighbours
and confirmed on the pixels.

A pair whose two images lie in different splits (train / val / test) is **leakage**: the held-out figure
then measures memory of a training image, not generalisation. Any two different splits count, val/test
included: the selection split chooses on what the test split reports. In a flat folder (no predefined
split) pairs are plain duplicates: transferkit will carve the splits at random, so either copy may land
anywhere, and removing one copy before training is the fix.

Exact duplicates are byte-identical files (SHA-256 of the bytes, ``transferkit.features.keys.file_digest``,
the same key the embedding cache uses). A near copy (re-encoded, resized, lightly cropped, brightened) is
decided in two steps:

1. **Candidates**, relative to the data set. (a) Embedding neighbours: pairs whose cosine distance is within
   :data:`NEAR_RADIUS` x the median distance of an image to its nearest neighbour (cleanlab Datalab's
   ``near_duplicate`` rule, mirrored here; a fixed cosine, ``threshold``, replaces the radius when given).
   A fixed cosine does not travel: 0.92, chosen on flowers, put 13,937 pairs of different steel textures of
   neu_surface_defects "in copy" (406 across its splits; the only copy found there is one byte-identical
   pair in train/) because textures sit close together in embedding space. (b) Pixel neighbours: each
   image's :data:`PIXEL_NEIGHBOURS` nearest images by correlation of 32 x 32 greyscale thumbnails, because
   a copy brightened by 10% or re-encoded can move far in embedding space (a steel texture's copy fell to
   cosine 0.66, 6x the median distance) while its pixels barely change.
2. **Confirmation** on the pixels: both images as greyscale thumbnails resized to the same size, compared at
   every pair of the centre crops :data:`CROPS` (so a crop of the other aligns); at the best alignment both
   the normalised correlation (:data:`MATCH_NCC`) and the correlation of the fine detail, the thumbnail minus
   its blur (:data:`MATCH_DETAIL`), must be high. Correlation ignores a brightness or contrast change; the
   detail term rejects different textures whose smooth shading matches. A candidate that fails is not
   reported as a copy; the report counts the candidates rejected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from transferkit.data.decode import load_rgb
from transferkit.errors import DataError
from transferkit.features.keys import file_digest

__all__ = ["NEAR_RADIUS", "NEAR_THRESHOLD", "MIN_THRESHOLD", "PIXEL_NEIGHBOURS", "CROPS", "MATCH_NCC",
           "MATCH_DETAIL", "BLOCK_ROWS", "MAX_PAIRS", "Pair", "exact_duplicate_pairs", "near_duplicate_pairs",
           "median_nn_distance", "thumbnails", "pixel_neighbour_pairs", "pixel_match", "is_pixel_copy",
           "find_duplicates",
           "is_leakage", "pair_rows"]

# Candidate radius in units of the data set's median nearest-neighbour cosine distance. cleanlab's default is
# 0.13, a rule for copies seen by the embedding alone; measured (benchmarks/audit_noise.py's copies of 20
# flowers photos: JPEG q70, 80% size, 90% centre crop, brightness +10%), copies lie at up to 0.44 x the median
# (flowers' median 0.19), so 0.5 keeps them and pixel confirmation removes what else it lets in.
NEAR_RADIUS = 0.5
# Kept for callers of the former fixed rule: the cosine the old default reported at (chosen on flowers).
NEAR_THRESHOLD = 0.92
# Lowest fixed cosine accepted for ``threshold``: below it candidates number in the tens of thousands.
MIN_THRESHOLD = 0.8
# Nearest images by thumbnail correlation taken as candidates per image: copies ranked 1st or 2nd (NEU and
# flowers, all four edits above, including the 90% crop).
PIXEL_NEIGHBOURS = 3
# Thumbnail side stored per image, side of the candidate search, side of the confirmation.
THUMB_SIDE, SEARCH_SIDE, MATCH_SIDE = 96, 32, 64
# Centre crops (share of each side) tried on both images: a copy cropped to 90% aligns with its original's 0.9.
CROPS = (1.0, 0.95, 0.9, 0.85, 0.8)
# Confirmation levels, measured on the planted copies above and on the 200 most similar pairs of different
# images of each of flowers and NEU: copies reached correlation >= 0.966 and detail >= 0.925; different images
# reached correlation up to 0.97 (overlapping steel textures) but then detail <= 0.66, or detail up to 0.90
# (two shots of the same sunflowers) but then correlation <= 0.92.
MATCH_NCC = 0.95
MATCH_DETAIL = 0.85
# Blur (pixels at MATCH_SIDE) subtracted to keep the fine detail.
DETAIL_SIGMA = 2.0
# Images whose crop views are kept while confirming (candidates are visited by first image).
VIEW_CACHE = 512
# Rows of the similarity matrix computed at once: BLOCK_ROWS x n float32 (1024 x 10,000 = 40 MB).
BLOCK_ROWS = 1024
# A report past this many pairs is not read by anyone; the most similar are kept and the rest counted.
MAX_PAIRS = 20_000
# Floor on the median distance (exact copies everywhere would make the radius 0), as cleanlab's EPSILON.
_EPSILON = 1e-6


@dataclass(frozen=True)
class Pair:
    """Two images (indices, first < second) that are copies of each other."""

    first: int
    second: int
    kind: str  # "exact" (same bytes) or "near" (candidate confirmed on the pixels)
    similarity: float  # embedding cosine similarity
    pixel: float | None = None  # correlation of the thumbnails at the best alignment (near pairs)
    detail: float | None = None  # correlation of their fine detail at that alignment (near pairs)


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


def _top_neighbours(x: np.ndarray, k: int, block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most similar other rows of the (normalised) ``x``: (indices, similarities), blocked."""
    n = len(x)
    k = max(0, min(k, n - 1))
    idx = np.zeros((n, k), dtype=np.int64)
    sim = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return idx, sim
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        sims = x[start:stop] @ x.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not itself
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        idx[start:stop] = part
        sim[start:stop] = np.take_along_axis(sims, part, axis=1)
    return idx, sim


def median_nn_distance(embeddings: np.ndarray, block_rows: int = BLOCK_ROWS) -> float:
    """Median over images of the cosine distance to the nearest other image (cleanlab's scale of "close")."""
    x = _normalised(embeddings)
    if len(x) < 2:
        return 1.0
    _, sim = _top_neighbours(x, 1, block_rows)
    return max(float(np.median(1.0 - sim[:, 0])), _EPSILON)


def thumbnails(paths: Sequence[str], side: int = THUMB_SIDE) -> tuple[np.ndarray, dict[int, str]]:
    """Greyscale ``side x side`` uint8 thumbnails (whole image, aspect not kept: both images of a pair are
    squeezed alike), and {index: reason} for files that could not be decoded (their rows stay 0)."""
    out = np.zeros((len(paths), side, side), dtype=np.uint8)
    errors: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            img = load_rgb(path, draft_size=2 * side).convert("L")
            out[i] = np.asarray(img.resize((side, side), Image.Resampling.BOX))
        except (DataError, OSError, ValueError) as exc:
            errors[i] = str(exc)
    return out, errors


def _unit(v: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length (a flat row stays 0: it correlates with nothing)."""
    v = v - v.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(norm > 1e-6, v / np.maximum(norm, 1e-6), 0.0).astype(np.float32)


def _search_vectors(thumbs: np.ndarray) -> np.ndarray:
    n, side = thumbs.shape[0], thumbs.shape[1]
    f = side // SEARCH_SIDE
    small = thumbs.reshape(n, SEARCH_SIDE, f, SEARCH_SIDE, f).astype(np.float32).mean(axis=(2, 4))
    return _unit(small.reshape(n, -1))


def pixel_neighbour_pairs(thumbs: np.ndarray, k: int = PIXEL_NEIGHBOURS,
                          usable: np.ndarray | None = None) -> set[tuple[int, int]]:
    """Pairs (i < j) where j is among i's ``k`` nearest images by thumbnail correlation, or i among j's."""
    idx = np.flatnonzero(usable) if usable is not None else np.arange(len(thumbs))
    if len(idx) < 2:
        return set()
    near, _ = _top_neighbours(_search_vectors(thumbs[idx]), k)
    return {(min(a, b), max(a, b)) for a, row in zip(idx.tolist(), idx[near].tolist()) for b in row if a != b}


def _views(thumb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every centre crop of ``thumb`` resized to MATCH_SIDE: unit rows of the pixels and of their detail."""
    img = Image.fromarray(thumb)
    side = thumb.shape[0]
    plain, detail = [], []
    for share in CROPS:
        margin = side * (1.0 - share) / 2
        view = np.asarray(img.resize((MATCH_SIDE, MATCH_SIDE), Image.Resampling.BOX,
                                     box=(margin, margin, side - margin, side - margin)), dtype=np.float32)
        plain.append(view.ravel())
        detail.append((view - gaussian_filter(view, DETAIL_SIGMA)).ravel())
    return _unit(np.stack(plain)), _unit(np.stack(detail))


def _match(va: tuple[np.ndarray, np.ndarray], vb: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    corr, det = va[0] @ vb[0].T, va[1] @ vb[1].T
    best = np.unravel_index(np.argmax(corr + det), corr.shape)
    return float(corr[best]), float(det[best])


def pixel_match(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(correlation, detail correlation) of two thumbnails at their best pair of centre crops."""
    return _match(_views(a), _views(b))


def is_pixel_copy(corr: float, detail: float) -> bool:
    """The confirmation rule: the pixels and their fine detail both correlate."""
    return corr >= MATCH_NCC and detail >= MATCH_DETAIL


def _candidates(x: np.ndarray, thumbs: np.ndarray, usable: np.ndarray,
                threshold: float | None) -> tuple[dict[tuple[int, int], float], dict[str, Any]]:
    """{(i, j): cosine} of the pairs to check at pixel level, and how they were chosen."""
    median = median_nn_distance(x)
    level = threshold if threshold is not None else 1.0 - NEAR_RADIUS * median
    found = {(i, j): s for i, j, s in near_duplicate_pairs(x, level)}
    from_embedding = len(found)
    for i, j in pixel_neighbour_pairs(thumbs, PIXEL_NEIGHBOURS, usable):
        if (i, j) not in found:
            found[(i, j)] = float(x[i] @ x[j])
    rule = (f"embedding cosine >= {threshold:g} (fixed)" if threshold is not None else
            f"embedding cosine distance <= {NEAR_RADIUS:g} x the median nearest-neighbour distance "
            f"{median:.4f} (cosine >= {level:.4f})")
    return found, {"candidate_rule": f"{rule}, or among an image's {PIXEL_NEIGHBOURS} nearest by 32 x 32 "
                                     "greyscale correlation",
                   "median_nn_distance": round(median, 4), "near_radius": NEAR_RADIUS,
                   "candidate_cosine": round(level, 4), "threshold": threshold,
                   "candidates_from_embedding": from_embedding}


def find_duplicates(paths: Sequence[str], embeddings: np.ndarray,
                    threshold: float | None = None) -> tuple[list[Pair], dict[str, Any]]:
    """Exact pairs, then near pairs confirmed at pixel level (by similarity), and counts for the report.

    An exact pair is reported once, as exact, even though its embeddings also match. ``threshold`` (a fixed
    embedding cosine) replaces the data-relative candidate radius; candidates are confirmed on the pixels
    either way.
    """
    x = _normalised(embeddings)
    exact, unreadable = exact_duplicate_pairs(paths)
    pairs = [Pair(a, b, "exact", float(x[a] @ x[b])) for a, b in exact]
    seen = set(exact)
    thumbs, undecoded = thumbnails(paths)
    usable = np.ones(len(paths), dtype=bool)
    usable[list(undecoded)] = False
    candidates, info = _candidates(x, thumbs, usable, threshold)
    checked = rejected = unchecked = 0
    views: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for (a, b), sim in sorted(candidates.items()):  # by first image: its views are made once
        if (a, b) in seen:
            continue
        if not (usable[a] and usable[b]):
            unchecked += 1
            continue
        if len(views) > VIEW_CACHE:  # 160 KB an image: keep memory bounded (the first image's views stay)
            views = {a: views[a]} if a in views else {}
        for i in (a, b):
            if i not in views:
                views[i] = _views(thumbs[i])
        corr, det = _match(views[a], views[b])
        checked += 1
        if is_pixel_copy(corr, det):
            pairs.append(Pair(a, b, "near", sim, round(corr, 4), round(det, 4)))
        else:
            rejected += 1
    near = sorted(pairs[len(exact):], key=lambda p: (-p.similarity, p.first, p.second))
    pairs = pairs[:len(exact)] + near
    info.update({
        "confirmation": f"greyscale thumbnails at {MATCH_SIDE} x {MATCH_SIDE}, centre crops "
                        f"{', '.join(map(str, CROPS))} of both; correlation >= {MATCH_NCC} and detail correlation >= {MATCH_DETAIL}",
        "candidates": len([c for c in candidates if c not in seen]), "checked_at_pixel_level": checked,
        "rejected_at_pixel_level": rejected, "not_checked_undecodable": unchecked,
        "exact_pairs": len(exact), "near_pairs": len(near),
        "unhashed": [{"path": os.fspath(paths[i]), "reason": r} for i, r in sorted(unreadable.items())]})
    return pairs, info


def pair_rows(pairs: Sequence[Pair], paths: Sequence[str], splits: Sequence[str], labels: np.ndarray,
              classes: Sequence[str], max_pairs: int = MAX_PAIRS) -> tuple[list[dict[str, Any]], int]:
    """Report rows (leakage pairs first, then the rest; exact before near, then by similarity), at most
    ``max_pairs`` of them, and how many were left out."""
    rows = []
    for p in pairs:
        a, b = p.first, p.second
        rows.append({
            "kind": p.kind, "similarity": round(p.similarity, 4), "pixel": p.pixel, "detail": p.detail,
            "leakage": is_leakage(splits[a], splits[b]),
            "same_label": bool(labels[a] == labels[b]),
            "a": {"path": paths[a], "split": splits[a], "label": classes[int(labels[a])]},
            "b": {"path": paths[b], "split": splits[b], "label": classes[int(labels[b])]},
        })
    rows.sort(key=lambda r: (not r["leakage"], r["kind"] != "exact", -r["similarity"]))
    return rows[:max_pairs], max(0, len(rows) - max_pairs)
