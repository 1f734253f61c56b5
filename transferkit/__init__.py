"""transferkit: turn a folder of a few hundred labelled images into a trustworthy classifier.

Public API (the CLI wraps exactly these)::

    import transferkit as tk
    run = tk.train("data/", strategy="finetune", epochs=10, out="runs/x")
    tk.evaluate("runs/x", "data/val")
    tk.predict("runs/x", ["img.jpg"], top_k=3)
    loaded = tk.load_run("runs/x")
"""

from transferkit.api import build_config, evaluate, load_run, predict, resume, train
from transferkit.compare import compare
from transferkit.strategy.recommend import recommend
from transferkit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    StrategyError,
    TransferKitError,
    UnknownNameError,
)

__version__ = "0.1.0"

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
