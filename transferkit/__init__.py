"""transferkit: turn a folder of a few hundred labelled images into a trustworthy classifier.

Public API (the CLI wraps exactly these)::

    import transferkit as tk
    run = tk.train("data/", strategy="finetune", epochs=10, out="runs/x")
    tk.evaluate("runs/x", "data/val")
    tk.predict("runs/x", ["img.jpg"], top_k=3)
    loaded = tk.load_run("runs/x")
"""

from importlib import import_module
from typing import Any

from transferkit.compare import compare  # eager: a later `import transferkit.compare` would shadow a lazy name
from transferkit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    StrategyError,
    TransferKitError,
    UnknownNameError,
)

from transferkit._version import __version__  # noqa: E402  (re-exported)

# The API loads torch and timm (seconds). Importing the package, and so `transferkit --help`, must not:
# each name is imported from its module on first use (PEP 562), and `tk.train` / `from transferkit
# import train` work as before.
_LAZY = {
    "train": "transferkit.api", "evaluate": "transferkit.api", "predict": "transferkit.api",
    "load_run": "transferkit.api", "resume": "transferkit.api", "build_config": "transferkit.api",
    "recommend": "transferkit.recommender",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "train",
    "compare",
    "recommend",
    "resume",
    "evaluate",
    "predict",
    "load_run",
    "build_config",
    "TransferKitError",
    "ConfigError",
    "DataError",
    "UnknownNameError",
    "StrategyError",
    "CheckpointError",
    "__version__",
]
