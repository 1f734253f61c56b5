"""The Python API (the CLI wraps exactly these functions; the work is done in transferkit.workflow).

>>> import transferkit as tk
>>> result = tk.train("data/hymenoptera", strategy="feature-extraction", epochs=5, out="runs/ants")
>>> tk.evaluate("runs/ants", "data/hymenoptera/val")["metrics"]["accuracy"]
>>> tk.predict("runs/ants", ["photo.jpg"], top_k=2)

Only the CLI and the package's ``__init__`` import this module (an import-linter contract): library code
below builds on transferkit.workflow.
"""

from __future__ import annotations

from transferkit.config import FLAT_KEYS
from transferkit.workflow import build_config, evaluate, explicit_keys, load_run, predict, resume, train

__all__ = ["train", "resume", "evaluate", "predict", "load_run", "build_config", "explicit_keys", "FLAT_KEYS"]
