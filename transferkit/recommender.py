"""The recommender: measure the dataset and its distance from the pretraining domain, then apply the
seeds' decision table (by images per class and domain similarity) to choose strategy, rates and epochs.

Domain distance = BatchNorm statistics shift. Every BatchNorm layer of the pretrained backbone stores
the mean and variance its input had on ImageNet. We push a small, class-balanced subset of the user's
images through the frozen backbone and compare, channel by channel, the statistics the layer now sees
with the stored ones (symmetric KL divergence between the two Gaussians, averaged over channels, median
over layers). Natural photos land close to ImageNet; grayscale textures, X-rays or digits land far.
It costs one forward pass of ~64 images, needs no labels, and measures exactly what breaks first
under domain shift (see AdaBN, Li et al. 2016). As a second, label-aware signal we report the
cross-validated accuracy of the converged linear probe (the head feature extraction fits) on the same
subset: how separable the classes already are without adapting the backbone.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shlex
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.config import (
    FLAT_KEYS,
    DataCfg,
    EngineCfg,
    OptimCfg,
    RunCfg,
    StrategyCfg,
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from transferkit.data.datasets import ImageDataset, make_loader, prepare_data
from transferkit.data.transforms import eval_transform, resize_size
from transferkit.features.probe import fit_linear_probe
from transferkit.models.backbones import build_backbone, resolve_spec
from transferkit.models.transfer import BN_TYPES
from transferkit.strategy.plan import get_strategy, make_plan

__all__ = ["Recommendation", "recommend", "resolve_auto", "bn_shift", "FAR_DOMAIN_SHIFT"]

# Threshold on the BN shift (median over layers of the channel-mean symmetric KL). Measured with
# efficientnet_lite0 at 224 px on 64-image probes of the shared datasets (benchmarks/recommend_probe.py;
# results in benchmarks/results/recommend.json): hymenoptera 0.046, flowers 0.039 (natural photos); mnist-m 0.45,
# mnist 0.90, neu_surface_defects 1.07 (far). 0.25 sits between the two families with margin.
FAR_DOMAIN_SHIFT = 0.25
# The seeds' decision table, images per class.
SMALL_PER_CLASS = 1000
LARGE_PER_CLASS = 10000
DEFAULT_BACKBONE = "efficientnet_lite0"
# These settings all decide the backbone's rates (group_lr_scales > layer_decay > backbone_lr_scale), so a
# user who chose one of them keeps control of all three: a recommended layer decay would silently
# override an explicit --backbone-lr-scale.
RATE_KEYS = frozenset({"strategy.layer_decay", "strategy.backbone_lr_scale", "strategy.group_lr_scales"})


@dataclass
class Recommendation:
    strategy: str
    settings: dict[str, Any]  # flat keys for transferkit.train (lr, epochs, unfreeze, layer_decay ...)
    reasons: list[str]
    measurements: dict[str, Any]

    def __post_init__(self) -> None:
        get_strategy(self.strategy)  # the decision table may only choose registered strategies (plan.STRATEGIES)

    def overrides(self) -> dict[str, Any]:
        """The recommendation as dotted config keys, ``strategy.name`` included."""
        return {**{FLAT_KEYS[key]: value for key, value in self.settings.items()}, "strategy.name": self.strategy}

    def command(self) -> list[str]:
        """``transferkit train`` arguments that reproduce the recommendation on the measured data and backbone."""
        m = self.measurements
        context = {"backbone": m.get("backbone"), "weights": m.get("weights"), "input_size": m.get("input_size"),
                   "mean": m.get("mean"), "std": m.get("std")}
        if context["backbone"] == DEFAULT_BACKBONE:
            context["backbone"] = None  # the default needs no flag
        argv = ["transferkit", "train", str(m.get("data") or "DATA"), "--strategy", self.strategy]
        for key, value in {**context, **self.settings}.items():
            argv += _as_flag(key, value)
        return argv

    def explain(self) -> str:
        m = self.measurements
        lines = [
            f"dataset: {m['n_train']} training images, {m['n_classes']} classes, "
            f"{m['min_per_class']}-{m['max_per_class']} per class (imbalance {m['imbalance']:.1f}x)",
            f"domain distance (BatchNorm statistics shift vs ImageNet): {m['bn_shift']:.2f} "
            f"({'far' if m['far_domain'] else 'near'}; far above {FAR_DOMAIN_SHIFT})",
            f"frozen-feature accuracy on {m['probe_images']} images: {m['probe_accuracy']:.2f} (converged linear probe, "
            f"{m.get('probe_folds', 'k')}-fold cross-validated)",
            f"recommended: {self.strategy}",
        ]
        lines += [f"  because {r}" for r in self.reasons]
        return "\n".join(lines + ["command:", "  " + shlex.join(self.command())])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _as_flag(key: str, value: Any) -> list[str]:
    """One flat setting as `transferkit train` arguments (every FLAT_KEYS name is a flag of train)."""
    if value is None:
        return []
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + key.replace("_", "-")]
    if isinstance(value, (tuple, list)):
        return [flag, ",".join(repr(float(v)) for v in value)]
    return [flag, repr(value) if isinstance(value, float) else str(value)]


def _gaussian_sym_kl(mu1: torch.Tensor, var1: torch.Tensor, mu2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    var1, var2 = var1.clamp_min(1e-5), var2.clamp_min(1e-5)
    kl12 = 0.5 * (var1 / var2 + (mu1 - mu2) ** 2 / var2 - 1 + torch.log(var2 / var1))
    kl21 = 0.5 * (var2 / var1 + (mu1 - mu2) ** 2 / var1 - 1 + torch.log(var1 / var2))
    return 0.5 * (kl12 + kl21)


@torch.inference_mode()
def bn_shift(backbone: nn.Module, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(median over BN layers of the mean channel-wise symmetric KL, pooled features)."""
    shifts: list[float] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].float()
        dims = [0, 2, 3] if x.ndim == 4 else [0]
        mu, var = x.mean(dims), x.var(dims, unbiased=False)
        shifts.append(float(_gaussian_sym_kl(mu, var, module.running_mean, module.running_var).mean()))

    handles = [m.register_forward_pre_hook(hook) for m in backbone.modules() if isinstance(m, BN_TYPES)]
    try:
        backbone.eval()
        features = backbone(images)
    finally:
        for h in handles:
            h.remove()
    shifts.sort()
    return (shifts[len(shifts) // 2] if shifts else 0.0), features


def _probe_accuracy(features: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(cross-validated accuracy, folds) of the converged linear probe that feature extraction fits.

    The same fit as the trainer's head (transferkit.features.probe), so the recommender's frozen-feature
    score is what feature extraction would reach, not a proxy; with no held-out split on a 64-image probe
    the L2 strength is chosen by stratified k-fold on it, and the score is the out-of-fold accuracy of the
    chosen strength. Classes with fewer than 2 probe images leave too little to cross-validate: NaN.
    """

    y = labels.numpy()
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min()) if len(y) else 0
    if len(np.unique(y)) < 2 or smallest < 2:
        return float("nan"), 0
    folds = min(5, smallest)
    fit = fit_linear_probe(features.float().numpy(), y, None, folds=folds)
    return float(fit.selection_score), folds


def _probe_subset(samples: list, per_class: int, seed: int) -> list:
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: s.path)
        rng.shuffle(items)
        chosen.extend(items[:per_class])
    return chosen


def measure(data: DataCfg, backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
            probe_images: int = 64, input_size: int | None = None,
            mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Dataset size/balance, BN-statistics shift and the frozen features' probe accuracy on a small subset."""
    spec = resolve_spec(backbone, weights).with_input_size(input_size).with_normalization(mean, std)
    splits = prepare_data(dataclasses.replace(data, validate=False), draft_size=resize_size(spec))
    counts = Counter(s.label for s in splits.train)
    per_class = max(2, math.ceil(probe_images / len(splits.classes)))
    subset = _probe_subset(splits.train, per_class, seed=0)
    loader = make_loader(ImageDataset(subset, eval_transform(spec), resize_size(spec)), len(subset), False, 0, workers=0)
    batch = next(iter(loader))
    model = build_backbone(spec, weights=weights)
    shift, features = bn_shift(model, batch["images"])
    return {
        "data": data.path,
        "backbone": backbone,
        "weights": weights,
        "input_size": input_size,
        "mean": mean,
        "std": std,
        "layer_groups": list(spec.layer_groups),
        "n_train": len(splits.train),
        "n_classes": len(splits.classes),
        "min_per_class": min(counts.values()),
        "max_per_class": max(counts.values()),
        "median_per_class": sorted(counts.values())[len(counts) // 2],
        "imbalance": max(counts.values()) / max(1, min(counts.values())),
        "bn_shift": shift,
        "far_domain": shift > FAR_DOMAIN_SHIFT,
        **dict(zip(("probe_accuracy", "probe_folds"), _probe_accuracy(features, batch["labels"]))),
        "probe_images": int(batch["labels"].numel()),
    }


def _layer_groups(m: dict[str, Any]) -> list[str]:
    """The measured backbone's layer groups (resolved from its name when the measurements lack them)."""
    groups = m.get("layer_groups")
    if groups is None:
        groups = resolve_spec(m.get("backbone") or DEFAULT_BACKBONE, m.get("weights")).layer_groups
    return list(groups)


def _rates(strategy: str, settings: dict[str, Any], groups: list[str]) -> str:
    """How fast the backbone learns under the recommended plan, with the numbers taken from the plan itself."""
    values = {FLAT_KEYS[k].split(".", 1)[1]: v for k, v in settings.items() if FLAT_KEYS[k].startswith("strategy.")}
    epochs = int(settings.get("epochs", EngineCfg.epochs))
    lr = float(settings.get("lr", OptimCfg.lr))
    plan = make_plan(StrategyCfg(name=strategy, **values), groups, epochs)
    rate = {g: max(plan.at(e)[g] for e in range(epochs)) for g in groups}  # each group's rate once it trains
    trained = [g for g in groups if rate[g] > 0]
    slowest = min(trained, key=lambda g: rate[g])
    return (f"{len(trained)} of the backbone's {len(groups)} layer groups train; the slowest ({slowest}) learns at "
            f"{rate[slowest]:.3g}x the head's rate ({lr * rate[slowest]:.2g} vs {lr:g}), "
            f"~{1 / rate[slowest]:.0f}x slower")


def decide(m: dict[str, Any]) -> Recommendation:
    """The seeds' decision table, applied to the measurements."""
    per_class = m["median_per_class"]
    size_text = f"the median class has {per_class} training images"
    if m["far_domain"]:
        settings = {"epochs": 15 if per_class < SMALL_PER_CLASS else 10, "lr": 1e-3, "layer_decay": 0.7,
                    "bn": "train", "augment": "light"}
        return Recommendation(
            "finetune",
            settings,
            [f"the images are far from ImageNet (BatchNorm shift {m['bn_shift']:.2f} > {FAR_DOMAIN_SHIFT}): "
             "frozen features and statistics do not fit, so every layer must adapt",
             "seeds' table, 'any size, very different domain': fine-tune all layers with augmentation and "
             f"smaller rates deeper down (layer decay {settings['layer_decay']}): "
             + _rates("finetune", settings, _layer_groups(m)),
             "BatchNorm in train mode so its statistics move to the new domain"],
            m,
        )
    if per_class < SMALL_PER_CLASS:
        return Recommendation(
            "feature-extraction",
            {"epochs": 20, "lr": 1e-3},
            [f"the images look like ImageNet photos (BatchNorm shift {m['bn_shift']:.2f} <= {FAR_DOMAIN_SHIFT})",
             f"{size_text} (< {SMALL_PER_CLASS}): too few to adapt the backbone safely; seeds' table says "
             "feature extraction (embeddings are cached and the linear head is fitted to convergence on them, "
             "so this takes seconds; --epochs and --lr apply only to an MLP head or --head-fit sgd)"],
            m,
        )
    if per_class < LARGE_PER_CLASS:
        settings = {"epochs": 10, "lr": 1e-3, "unfreeze": 2, "backbone_lr_scale": 0.1}
        return Recommendation(
            "partial",
            settings,
            [f"near domain, {size_text} ({SMALL_PER_CLASS}-{LARGE_PER_CLASS}): seeds' table says fine-tune the "
             f"last {settings['unfreeze']} layer groups below the head: " + _rates("partial", settings, _layer_groups(m))],
            m,
        )
    settings = {"epochs": 10, "lr": 1e-3, "warmup_epochs": 2, "backbone_lr_scale": 0.1}
    return Recommendation(
        "lp-ft",
        settings,
        [f"near domain, {size_text} (> {LARGE_PER_CLASS}): enough data to fine-tune all layers; warm the head up "
         f"for {settings['warmup_epochs']} epochs first so its random gradients do not disturb the backbone; then "
         + _rates("lp-ft", settings, _layer_groups(m))],
        m,
    )


def recommend(data: str, backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
              input_size: int | None = None, mean: tuple[float, ...] | None = None,
              std: tuple[float, ...] | None = None) -> Recommendation:
    """Measure ``data`` and return the recommended strategy with its reasons."""
    return decide(measure(DataCfg(path=str(data)), backbone, weights, input_size=input_size, mean=mean, std=std))


def resolve_auto(cfg: RunCfg, quiet: bool = False, explicit: frozenset[str] | set[str] = frozenset()) -> RunCfg:
    """Replace strategy 'auto' by the recommendation, filling only the settings not in ``explicit``.

    ``explicit`` holds the dotted keys the user set (flags, overrides, config-file values): they keep the
    user's value even when the recommendation differs. Without it every recommended setting applies.
    """
    m = cfg.model
    rec = decide(measure(cfg.data, m.backbone, m.weights, input_size=m.input_size, mean=m.mean, std=m.std))
    wanted = rec.overrides()
    user_rates = bool(RATE_KEYS & set(explicit))
    kept = sorted(k for k in wanted if k != "strategy.name" and (k in explicit or (user_rates and k in RATE_KEYS)))
    applied = {k: v for k, v in wanted.items() if k not in kept}
    resolved = config_from_dict(apply_overrides(config_to_dict(cfg), applied))
    if not quiet:
        print(rec.explain())
        if kept:
            current = config_to_dict(resolved)
            shown = [f"{k}={current[k.split('.')[0]][k.split('.')[1]]}" for k in kept]
            print(f"kept your settings instead of the recommended ones: {', '.join(shown)}")
    return resolved
