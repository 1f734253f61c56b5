"""Frozen-backbone embeddings: a content-addressed on-disk cache, head training on it, export.

>>> from transferkit.features import embed_folder
>>> out = embed_folder("data/flowers", "flowers.npz")      # embeddings, labels, paths, classes
"""

from transferkit.features.cache import FeatureCache, ViewRows
from transferkit.features.export import embed_folder
from transferkit.features.headfit import CachedHead, FeatureSet, frozen_prefix
from transferkit.features.probe import ProbeFit, fit_linear_probe
from transferkit.features.store import cache_info, cache_root, clear_cache

__all__ = [
    "FeatureCache",
    "ViewRows",
    "FeatureSet",
    "CachedHead",
    "frozen_prefix",
    "fit_linear_probe",
    "ProbeFit",
    "embed_folder",
    "cache_info",
    "cache_root",
    "clear_cache",
]
