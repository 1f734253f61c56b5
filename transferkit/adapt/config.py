"""The adaptation settings (everything the shared RunCfg does not already describe)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from transferkit.errors import ConfigError

__all__ = ["AdaptCfg", "METHODS", "adapt_cfg_from_dict"]

METHODS = ("dann", "coral", "adabn", "source-only")


@dataclass(frozen=True)
class AdaptCfg:
    """How the source-only model is adapted to the target domain.

    The source-only baseline is trained with the shared RunCfg (``engine.epochs`` epochs, the chosen
    strategy and BatchNorm policy). ``coral`` and ``dann`` then train ``epochs`` more epochs on balanced
    source + target batches, starting from the baseline (``warm_start``) or from the pretrained backbone.
    """

    target: str = ""
    target_eval: str | None = None  # labelled target folder, read by the evaluation only
    method: str = "dann"
    epochs: int = 5  # adaptation epochs (coral, dann); an epoch = one pass over the source images
    lr: float | None = None  # head rate of the adaptation phase (None: optim.lr); backbone gets its strategy scale
    # last: a fixed budget, the last adaptation epoch is kept (the source selection split is only logged);
    # best: keep the adaptation epoch scoring best on the source selection split (engine.monitor), and stop
    # after engine.patience epochs without improvement. Source accuracy is not target accuracy: a choice only.
    select: str = "last"
    warm_start: bool = True  # start adaptation from the source-only baseline
    per_domain_bn: bool = True  # separate source / target forward passes, so BatchNorm batch statistics are per domain
    # after coral / dann: re-estimate BatchNorm statistics on the target images; None = when BatchNorm
    # trained in train mode (per-domain statistics). A model trained with frozen (ImageNet) statistics has
    # learned with those and gets worse with target statistics (measured on MNIST-M: 0.58 -> 0.27).
    adabn: bool | None = None
    lr_schedule: str = "dann"  # dann: mu0 / (1 + 10 p) ** 0.75 (Ganin et al.); cosine: the engine's schedule
    # DANN
    lambda_max: float = 1.0  # cap of the ramped adaptation weight cap * (2 / (1 + exp(-10 p)) - 1)
    disc_hidden: int = 256
    disc_layers: int = 2
    disc_dropout: float = 0.5
    # discriminator rate relative to the head's. 5 scored best on MNIST-M *test* in an early benchmark (1: 0.651,
    # 5: 0.671 after 3 epochs; 10 with 1024 hidden units diverged to 0.589), i.e. chosen on test labels;
    # benchmarks/adapt_mnistm.py chooses it on a target dev split instead
    disc_lr_scale: float = 5.0
    # CORAL: the loss is ~0.004 on pooled Lite0 features, so weight 1 barely acts (MNIST-M test, early benchmark:
    # 0.644 vs 0.687 with 30; chosen on test labels; benchmarks/adapt_mnistm.py tunes it on a target dev split)
    coral_weight: float = 30.0
    # evaluation and figures
    adabn_images: int = 0  # target images used to estimate BatchNorm statistics (0 = all)
    projection: str = "tsne"  # tsne | pca | none
    projection_points: int = 400  # per domain

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"adapt.method {self.method!r} must be one of {', '.join(METHODS)}"),
            (self.epochs >= 1, f"adapt.epochs {self.epochs} must be at least 1"),
            (self.lr is None or self.lr > 0, f"adapt.lr {self.lr} must be positive"),
            (self.lambda_max >= 0, f"adapt.lambda_max {self.lambda_max} must be >= 0"),
            (self.disc_hidden >= 1 and self.disc_layers >= 0, "adapt.disc_hidden must be >= 1 and adapt.disc_layers >= 0"),
            (0.0 <= self.disc_dropout < 1.0, f"adapt.disc_dropout {self.disc_dropout} must be in [0, 1)"),
            (self.disc_lr_scale > 0, f"adapt.disc_lr_scale {self.disc_lr_scale} must be positive"),
            (self.coral_weight >= 0, f"adapt.coral_weight {self.coral_weight} must be >= 0"),
            (self.lr_schedule in ("dann", "cosine"), f"adapt.lr_schedule {self.lr_schedule!r} must be dann or cosine"),
            (self.projection in ("tsne", "pca", "none"), f"adapt.projection {self.projection!r} must be tsne, pca or none"),
            (self.projection_points >= 10, f"adapt.projection_points {self.projection_points} must be >= 10"),
            (self.select in ("last", "best"), f"adapt.select {self.select!r} must be last or best"),
            (self.adabn_images >= 0, f"adapt.adabn_images {self.adabn_images} must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(value: Any, annotation: str, key: str) -> Any:
    """Text from the command line (``--set adapt.lambda_max=0.3``) -> the field's type."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if "None" in annotation and text.lower() in ("", "none", "null"):
        return None
    try:
        if annotation.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if annotation.startswith("int"):
            return int(text)
        if annotation.startswith("float"):
            return float(text)
    except ValueError:
        raise ConfigError(f"adapt.{key}: cannot read {value!r} as {annotation}; fix the value") from None
    return text


def adapt_cfg_from_dict(raw: Mapping[str, Any]) -> AdaptCfg:
    """Build an AdaptCfg (text values converted to the fields' types); unknown keys are refused."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(AdaptCfg)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown adapt option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return AdaptCfg(**{k: _convert(v, fields[k], k) for k, v in raw.items()})
