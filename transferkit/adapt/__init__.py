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
from typing import Any, Mapping

from transferkit.adapt.config import METHODS, AdaptCfg, adapt_cfg_from_dict
from transferkit.adapt.layers import GradientReversal, GradReverse, coral_loss, dann_lambda, dann_lr_factor, grad_reverse
from transferkit.engine.trainer import RunResult

__all__ = [
    "adapt",
    "resume",
    "AdaptCfg",
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

# adapt's own defaults for the shared settings (train's differ): the backbone must be able to adapt,
# so fine-tuning; flips and crops can change what an image shows (digits), so no augmentation by default.
ADAPT_DEFAULTS = {"strategy.name": "finetune", "data.augment": "none", "engine.epochs": 3}
# BatchNorm by method, unless set: AdaBN needs a model trained with BatchNorm statistics it can swap
# (train mode); the others did best with ImageNet statistics kept frozen (MNIST->MNIST-M test, seed 0, an
# early benchmark: source-only 0.21 train vs 0.58 frozen; DANN 0.56 per-domain BN + AdaBN vs 0.67 frozen;
# benchmarks/adapt_mnistm.py now makes this choice on a target dev split).
BN_BY_METHOD = {"adabn": "train", "source-only": "frozen", "coral": "frozen", "dann": "frozen"}


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
        **kwargs: the shared friendly names of :func:`transferkit.train` (backbone, epochs, lr, bn, seed,
            input_size, batch_size, out, ...) plus ``adapt_epochs`` (the adaptation epochs).
    """
    from transferkit.adapt.runner import Adapter
    from transferkit.workflow import build_config
    from transferkit.config import load_config

    options = dict(adapt_options or {})
    if "adapt_epochs" in kwargs:
        options["epochs"] = kwargs.pop("adapt_epochs")
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
    from transferkit.engine.trainer import Trainer

    return Trainer.resume(run_dir, quiet=quiet).fit()
