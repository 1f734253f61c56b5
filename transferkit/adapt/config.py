"""The adaptation settings (everything the shared RunCfg does not already describe)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from transferkit.config import coerce_value, did_you_mean, flat_settings, setting
from transferkit.errors import ConfigError

__all__ = ["AdaptCfg", "ADAPT_DEFAULTS", "ADAPT_SETTINGS", "BN_BY_METHOD", "METHODS", "adapt_cfg_from_dict"]

METHODS = ("dann", "coral", "adabn", "source-only")

# adapt's own defaults for the shared settings (train's differ): the backbone must be able to adapt,
# so fine-tuning; flips and crops can change what an image shows (digits), so no augmentation by default.
# Post-hoc logit adjustment is a train feature: the adaptation writes its own results (no tau is chosen).
ADAPT_DEFAULTS = {"strategy.name": "finetune", "data.augment": "none", "engine.epochs": 3, "engine.logit_adjust": "none"}
# BatchNorm by method, unless set: AdaBN needs a model trained with BatchNorm statistics it can swap
# (train mode); the others did best with ImageNet statistics kept frozen (MNIST->MNIST-M test, seed 0, an
# early benchmark: source-only 0.21 train vs 0.58 frozen; DANN 0.56 per-domain BN + AdaBN vs 0.67 frozen;
# benchmarks/adapt_mnistm.py now makes this choice on a target dev split).
BN_BY_METHOD = {"adabn": "train", "source-only": "frozen", "coral": "frozen", "dann": "frozen"}


@dataclass(frozen=True)
class AdaptCfg:
    """How the source-only model is adapted to the target domain.

    The source-only baseline is trained with the shared RunCfg (``engine.epochs`` epochs, the chosen
    strategy and BatchNorm policy). ``coral`` and ``dann`` then train ``epochs`` more epochs on balanced
    source + target batches, starting from the baseline (``warm_start``) or from the pretrained backbone.
    Each field's help is its ``adapt`` option and its keyword of :func:`transferkit.adapt.adapt` (flat name).
    """

    target: str = setting("", "Target-domain images; sub-folder names (labels) are ignored.", flag=None)
    target_eval: str | None = setting(None, "Labelled target folder, read by the evaluation only.", flag=None)
    method: str = setting("dann", f"Adaptation method: {' | '.join(METHODS)}.")
    epochs: int = setting(5, "CORAL/DANN epochs after the baseline (an epoch = one pass over the source images).",
                          flag="adapt_epochs")
    lr: float | None = setting(None, "Head learning rate of the adaptation phase (default: --lr); the backbone "
                                     "gets its strategy scale.", flag="adapt_lr")
    # last: a fixed budget, the last adaptation epoch is kept (the source selection split is only logged);
    # best: keep the adaptation epoch scoring best on the source selection split (engine.monitor), and stop
    # after engine.patience epochs without improvement. Source accuracy is not target accuracy: a choice only.
    select: str = setting("last", "last: keep the last adaptation epoch; best: the epoch best on the source "
                                  "selection split.", flag="adapt_select")
    warm_start: bool = setting(True, "Adapt from the source-only baseline (off: from the pretrained backbone).")
    per_domain_bn: bool = setting(True, "Separate source / target forward passes, so BatchNorm batch statistics "
                                        "are per domain.")
    # after coral / dann: re-estimate BatchNorm statistics on the target images; None = when BatchNorm
    # trained in train mode (per-domain statistics). A model trained with frozen (ImageNet) statistics has
    # learned with those and gets worse with target statistics (measured on MNIST-M: 0.58 -> 0.27).
    adabn: bool | None = setting(None, "After CORAL/DANN, re-estimate BatchNorm statistics on the target images "
                                       "(default: when BatchNorm trains in train mode).")
    lr_schedule: str = setting("dann", "dann: mu0 / (1 + 10 p) ** 0.75 (Ganin et al.); cosine: the engine's "
                                       "schedule.", flag=None)
    lambda_max: float = setting(1.0, "DANN: cap of the ramped adaptation weight cap * (2 / (1 + exp(-10 p)) - 1).")
    disc_hidden: int = setting(256, "DANN: hidden units of the domain discriminator.", flag=None)
    disc_layers: int = setting(2, "DANN: hidden layers of the domain discriminator.", flag=None)
    disc_dropout: float = setting(0.5, "DANN: dropout in the domain discriminator.", flag=None)
    # 5 scored best on MNIST-M *test* in an early benchmark (1: 0.651, 5: 0.671 after 3 epochs; 10 with 1024
    # hidden units diverged to 0.589), i.e. chosen on test labels; benchmarks/adapt_mnistm.py chooses it on a
    # target dev split instead
    disc_lr_scale: float = setting(5.0, "DANN: discriminator learning rate relative to the head's.")
    # the loss is ~0.004 on pooled Lite0 features, so weight 1 barely acts (MNIST-M test, early benchmark:
    # 0.644 vs 0.687 with 30; chosen on test labels; benchmarks/adapt_mnistm.py tunes it on a target dev split)
    coral_weight: float = setting(30.0, "CORAL: weight of the CORAL loss.")
    # evaluation and figures
    adabn_images: int = setting(0, "Target images used to estimate BatchNorm statistics (0 = all).", flag=None)
    projection: str = setting("tsne", "Feature projection figure: tsne | pca | none.")
    projection_points: int = setting(400, "Points per domain in the projection figure.", flag=None)

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


# The adaptation settings under their flat names (adapt_epochs, lambda_max, ...): keywords of
# transferkit.adapt.adapt and options of `transferkit adapt`, generated like the run settings.
ADAPT_SETTINGS = flat_settings([("adapt.", AdaptCfg)])


def adapt_cfg_from_dict(raw: Mapping[str, Any]) -> AdaptCfg:
    """Build an AdaptCfg (text values converted to the fields' types); unknown keys are refused."""
    fields = {f.name: f.type for f in dataclasses.fields(AdaptCfg)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown adapt option {unknown[0]!r}{did_you_mean(unknown[0], fields)}; "
                          f"known: {', '.join(fields)}")
    return AdaptCfg(**{k: coerce_value(v, fields[k], f"adapt.{k}") for k, v in raw.items()})
