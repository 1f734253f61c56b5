"""Outliers: images far from every other image, and far from their own class, in embedding space.

Scores come from ``cleanlab.outlier.OutOfDistribution`` fitted on the embeddings (features): the average
cosine distance to the k nearest other images, mapped to ``exp(-distance / median distance)`` in [0, 1]
(lower: more unusual). Two scores per image:

* ``score``: against the whole folder: a scan, a screenshot, a photo of something in no class;
* ``class_score``: against the images of its own given class only: an image typical of the data but not of
  its class (often also a label issue).

An image is *flagged* when its distance to everything, relative to the median image's
(``-log score``), lies beyond Tukey's fence of that relative distance over the folder (upper quartile +
1.5 interquartile ranges): a rule that adapts to how spread out the backbone finds the data and needs no
threshold per backbone. On flowers (3,000 photos) it flags 37 images (1.2%), led by a "Roses" shop sign, a
bus behind tulips, a tortoise and a collage of teacups; the far-out fence (3 ranges) flagged none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["NEIGHBOURS", "FENCE_IQR", "Outliers", "score_outliers", "outlier_rows"]

NEIGHBOURS = 10  # cleanlab's default k; lowered to n - 1 on tiny folders
FENCE_IQR = 1.5  # Tukey's fence (see the module docstring for what 3, "far out", missed)


@dataclass(frozen=True)
class Outliers:
    scores: np.ndarray  # (n,) against every image; lower = more unusual
    class_scores: np.ndarray  # (n,) against the image's own class (nan: class too small to score)
    flagged: np.ndarray  # indices beyond the fence, most unusual first
    fence: float  # the relative distance (distance / median distance) beyond which an image is flagged
    neighbours: int


def _ood_scores(features: np.ndarray, neighbours: int) -> np.ndarray:
    from cleanlab.outlier import OutOfDistribution

    k = min(neighbours, len(features) - 1)
    return np.asarray(OutOfDistribution(params={"k": k}).fit_score(features=features, verbose=False),
                      dtype=np.float64)


def score_outliers(embeddings: np.ndarray, labels: np.ndarray, neighbours: int = NEIGHBOURS) -> Outliers:
    """cleanlab OOD scores of every image against all images and against its class, and the flagged ones."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = np.asarray(labels, dtype=np.int64)
    if len(x) < 3:
        empty = np.full(len(x), np.nan)
        return Outliers(empty, empty, np.zeros(0, dtype=np.int64), float("nan"), 0)
    scores = _ood_scores(x, neighbours)
    class_scores = np.full(len(x), np.nan)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        if len(members) >= 3:  # two neighbours at least, or "far from the class" means nothing
            class_scores[members] = _ood_scores(x[members], neighbours)
    relative = -np.log(np.clip(scores, 1e-300, 1.0))  # distance / median distance (cleanlab's scaling)
    q1, q3 = np.quantile(relative, [0.25, 0.75])
    fence = float(q3 + FENCE_IQR * (q3 - q1))
    over = np.flatnonzero(relative > fence)
    flagged = over[np.argsort(scores[over], kind="stable")]
    return Outliers(scores, class_scores, flagged, fence, min(neighbours, len(x) - 1))


def outlier_rows(outliers: Outliers, labels: np.ndarray, classes: Sequence[str], paths: Sequence[str],
                 splits: Sequence[str]) -> list[dict[str, Any]]:
    """The flagged images as report rows, most unusual first; ``rank_among_all`` is the image's place among
    every image by score (1 = the most unusual), out of ``images``."""
    place = np.empty(len(outliers.scores), dtype=np.int64)
    place[np.argsort(outliers.scores, kind="stable")] = np.arange(1, len(outliers.scores) + 1)
    rows = []
    for rank, i in enumerate(outliers.flagged.tolist(), 1):
        class_score = outliers.class_scores[i]
        rows.append({"rank": rank, "rank_among_all": int(place[i]), "images": len(place),
                     "path": paths[i], "split": splits[i], "label": classes[int(labels[i])],
                     "score": round(float(outliers.scores[i]), 4),
                     "class_score": None if np.isnan(class_score) else round(float(class_score), 4)})
    return rows
