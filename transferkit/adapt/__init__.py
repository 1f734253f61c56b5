"""Domain adaptation: labelled source images + unlabelled target images -> a model for the target.

>>> import transferkit.adapt as ta
>>> result = ta.adapt("mnist/train", "mnistm/train", method="dann", target_labels_for_eval="mnistm/test",
...                   epochs=2, adapt_epochs=3, input_size=32, out="runs/dann")
>>> result.summary["source_only"]["target"]["accuracy"], result.summary["adapted"]["target"]["accuracy"]

Methods: ``source-only`` (the baseline alone), ``adabn`` (baseline + BatchNorm statistics re-estimated on
target images), ``coral`` (Deep CORAL) and ``dann`` (domain-adversarial training with a gradient-reversal
layer). Every run also trains and reports the source-only baseline on the same split and seed.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any, Mapping

from transferkit.adapt.config import ADAPT_DEFAULTS, ADAPT_SETTINGS, BN_BY_METHOD, METHODS, AdaptCfg, adapt_cfg_from_dict
from transferkit.errors import ConfigError

if TYPE_CHECKING:
    from transferkit.adapt.layers import GradientReversal, GradReverse, coral_loss, dann_lambda, dann_lr_factor, grad_reverse
    from transferkit.engine.trainer import RunResult

# the torch layers load on first use: the settings above are read by `transferkit adapt --help`, which
# must not import torch
_LAZY = {name: "transferkit.adapt.layers" for name in
         ("GradientReversal", "GradReverse", "coral_loss", "dann_lambda", "dann_lr_factor", "grad_reverse")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "adapt",
    "resume",
    "AdaptCfg",
    "ADAPT_SETTINGS",
    "METHODS",
    "ADAPT_DEFAULTS",
    "BN_BY_METHOD",
    "GradReverse",
    "GradientReversal",
    "grad_reverse",
    "dann_lambda",
    "dann_lr_factor",
    "coral_loss",
]


def adapt(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    method: str = "dann",
    target_labels_for_eval: str | os.PathLike | None = None,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    adapt_options: Mapping[str, Any] | None = None,
    baseline_from: str | os.PathLike | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> RunResult:
    """Train a source-only baseline and adapt it to the target domain; returns the run folder and summary.

    Args:
        source: labelled source folder (class sub-folders, or train/ + val/).
        target: folder of target-domain images; sub-folders are walked and their names ignored, so
            its labels (if any) are never read.
        method: ``dann`` | ``coral`` | ``adabn`` | ``source-only``; it also picks the BatchNorm policy
            unless one is given (:data:`BN_BY_METHOD`).
        target_labels_for_eval: labelled target folder used only to evaluate both models.
        config: a YAML/JSON file or dict with the shared sections (data/model/strategy/optim/engine).
        overrides: dotted shared keys, e.g. ``{"engine.epochs": 2}``.
        adapt_options: :class:`AdaptCfg` fields, e.g. ``{"lambda_max": 0.3, "disc_lr_scale": 1.0}``.
        baseline_from: an earlier adapt run whose source-only baseline is reused instead of retrained.
        quiet: no console output.
        **kwargs: the shared flat names of :func:`transferkit.train` (backbone, epochs, lr, bn, seed,
            input_size, batch_size, out, ...) and the adaptation's (:data:`ADAPT_SETTINGS`: adapt_epochs,
            adapt_lr, lambda_max, coral_weight, ...); unknown names are refused with "did you mean".
    """
    from transferkit.adapt.runner import Adapter
    from transferkit.workflow import build_config
    from transferkit.config import load_config

    from transferkit.config import FLAT_KEYS, did_you_mean

    known = [*FLAT_KEYS, *ADAPT_SETTINGS]
    for name in kwargs:  # checked up front: a misspelt keyword fails before any image is read
        if name not in known:
            raise ConfigError(f"transferkit.adapt.adapt() got an unknown keyword argument {name!r}"
                              f"{did_you_mean(name, known)}; use one of: {', '.join(sorted(known))} "
                              "(or adapt_options={'KEY': value} / overrides={'section.key': value})")
    options = dict(adapt_options or {})
    for name in [k for k in kwargs if k in ADAPT_SETTINGS]:
        options[ADAPT_SETTINGS[name].key.partition(".")[2]] = kwargs.pop(name)
    options.update(target=str(target), method=method,
                   target_eval=None if target_labels_for_eval is None else str(target_labels_for_eval))
    acfg = adapt_cfg_from_dict(options)
    raw: Mapping[str, Any] = {}
    if config is not None:
        raw = config if isinstance(config, Mapping) else load_config(config)
    # adapt's defaults apply only where neither the config file nor the overrides say otherwise
    strategy = kwargs.get("strategy") or (overrides or {}).get("strategy.name") or (raw.get("strategy") or {}).get("name")
    bn = "auto" if strategy == "scratch" else BN_BY_METHOD.get(method, "auto")  # random BatchNorm statistics must train
    defaults = {**ADAPT_DEFAULTS, "strategy.bn": bn}
    dotted = {k: v for k, v in defaults.items() if k.partition(".")[2] not in (raw.get(k.partition(".")[0]) or {})}
    dotted.update(overrides or {})
    cfg = build_config(source, dict(raw), dotted, **kwargs)
    return Adapter(cfg, acfg, quiet=quiet, baseline_from=baseline_from).fit()



def resume(run_dir: str | os.PathLike, quiet: bool = False) -> RunResult:
    """Continue an interrupted adapt run from its last finished epoch (the engine's resume; the run
    folder's hooks.json brings the adaptation back)."""
    from pathlib import Path

    from transferkit.engine.trainer import Trainer

    if (Path(run_dir) / "config.yaml").is_file() and not (Path(run_dir) / "adapt.yaml").is_file():
        raise ConfigError(f"{run_dir} is a train run, not an adapt run (no adapt.yaml); continue it with "
                          f"transferkit train --resume {run_dir}")
    return Trainer.resume(run_dir, quiet=quiet).fit()
