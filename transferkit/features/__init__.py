"""Frozen-backbone embeddings: a content-addressed on-disk cache, head training on it, export.

>>> from transferkit.features import embed_folder
>>> out = embed_folder("data/flowers", "flowers.npz")      # embeddings, labels, paths, classes

The names below load on first use (PEP 562): ``transferkit embed`` on a warm cache needs the cache and
the store, not scikit-learn (the probe), whose import alone takes about a second (1.06 s by
``python -X importtime -c "import sklearn"`` on 2 cores).
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "FeatureCache": "cache",
    "ViewRows": "cache",
    "FeatureSet": "headfit",
    "CachedHead": "headfit",
    "frozen_prefix": "headfit",
    "fit_linear_probe": "probe",
    "ProbeFit": "probe",
    "embed_folder": "export",
    "cache_info": "store",
    "cache_root": "store",
    "clear_cache": "store",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
