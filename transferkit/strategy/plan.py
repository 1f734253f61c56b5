"""Strategies as pure plans: (epoch) -> the learning-rate scale of every layer group (0 = frozen).

A plan never adds or removes optimizer groups; it only changes scales. That keeps the optimizer built
once over every parameter (schedulers, checkpoints and resume stay valid) and makes every strategy a
unit-testable function that a resumed run simply recomputes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from transferkit.config import StrategyCfg
from transferkit.errors import ConfigError, StrategyError
from transferkit.registry import Registry

__all__ = [
    "Plan",
    "make_plan",
    "base_scales",
    "HEAD",
    "AUTO",
    "Strategy",
    "STRATEGIES",
    "register_strategy",
    "get_strategy",
    "strategy_names",
    "check_strategy_name",
    "default_comparison",
    "uses_pretrained",
]

HEAD = "head"
AUTO = "auto"  # not a plan: the recommender replaces it by a registered strategy (transferkit/recommender.py)


@dataclass(frozen=True)
class Plan:
    """Per-epoch lr scales for ``groups`` (backbone groups stem..last, then ``head``)."""

    strategy: str
    groups: tuple[str, ...]
    scales: tuple[tuple[float, ...], ...]  # scales[epoch][group]
    bn: str  # "frozen" or "train": the resolved BatchNorm policy
    pretrained: bool = True

    def at(self, epoch: int) -> dict[str, float]:
        row = self.scales[min(epoch, len(self.scales) - 1)]
        return dict(zip(self.groups, row))

    def trainable_groups(self, epoch: int) -> list[str]:
        return [g for g, s in self.at(epoch).items() if s > 0]

    def ever_trainable(self) -> list[str]:
        return [g for i, g in enumerate(self.groups) if any(row[i] > 0 for row in self.scales)]

    def ever_frozen_backbone(self) -> bool:
        return any(row[i] == 0 for row in self.scales for i, g in enumerate(self.groups) if g != HEAD)

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "groups": list(self.groups),
            "bn": self.bn,
            "epochs": [dict(zip(self.groups, row)) for row in self.scales],
        }

    def describe(self) -> str:
        """Human-readable table: one line per distinct phase."""
        lines, start = [], 0
        for epoch in range(1, len(self.scales) + 1):
            if epoch == len(self.scales) or self.scales[epoch] != self.scales[start]:
                row = self.at(start)
                frozen = [g for g, s in row.items() if s == 0]
                train = ", ".join(f"{g} x{s:g}" for g, s in row.items() if s > 0)
                span = f"epoch {start + 1}" if epoch - start == 1 else f"epochs {start + 1}-{epoch}"
                lines.append(f"  {span}: train [{train}]" + (f"; frozen {len(frozen)} group(s)" if frozen else ""))
                start = epoch
        return f"plan '{self.strategy}' (BatchNorm {self.bn}):\n" + "\n".join(lines)


def base_scales(cfg: StrategyCfg, backbone_groups: list[str]) -> list[float]:
    """Discriminative rates for the backbone groups (the head is always 1.0).

    Priority: explicit per-group multipliers, then layer-wise decay (decay ** distance from the head,
    so the last block gets ``decay`` and the stem the smallest rate), then one uniform backbone scale.
    """
    n = len(backbone_groups)
    if cfg.group_lr_scales is not None:
        scales = list(cfg.group_lr_scales)
        if len(scales) == n + 1:
            if scales[-1] != 1.0:
                raise StrategyError(
                    f"strategy.group_lr_scales: the last value is the head and must be 1.0 (got {scales[-1]}); "
                    "set the head's rate with --lr"
                )
            scales = scales[:-1]
        if len(scales) != n:
            raise StrategyError(
                f"strategy.group_lr_scales has {len(cfg.group_lr_scales)} values but the backbone has {n} "
                f"layer groups ({', '.join(backbone_groups)}); give {n} values (optionally + 1.0 for the head)"
            )
        if any(s < 0 for s in scales):
            raise StrategyError("strategy.group_lr_scales must all be >= 0")
        return [float(s) for s in scales]
    if cfg.layer_decay is not None:
        return [float(cfg.layer_decay ** (n - i)) for i in range(n)]
    return [float(cfg.backbone_lr_scale)] * n


def _row(backbone: list[float], trainable_from: int) -> tuple[float, ...]:
    """Scales with backbone groups before index ``trainable_from`` frozen; head always 1.0."""
    return tuple(s if i >= trainable_from else 0.0 for i, s in enumerate(backbone)) + (1.0,)


# --- the strategy registry: the only list of strategy names ------------------------------------------------
# A strategy is one plan function, registered below with @register_strategy; name validation, compare's default
# set, the report and the recommender read STRATEGIES, and the CLI's --strategy help lists strategy_names().
#
# Why here and not in config.py: a name means nothing without its plan, and config sits below strategy in
# the one-way flow (config -> data -> models -> strategy), so config cannot read this list without an upward
# import (and a registry defined down there would be empty until this module happened to be imported).
# config.py therefore checks the shape of StrategyCfg only; the name is checked against this registry where a
# config enters the strategy layer: check_strategy_name() (the Trainer, before anything is loaded; the API
# and CLI may call it earlier) and make_plan(). This module imports only config, errors and registry (no torch),
# so the CLI can build its help from strategy_names() cheaply.

RowsFn = Callable[[StrategyCfg, list[float], int], list[tuple[float, ...]]]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its plan function and the properties other layers ask about.

    ``rows(cfg, base, epochs)`` returns one row per epoch: a scale per backbone group (``base`` holds the
    discriminative rates of :func:`base_scales`), then the head's 1.0.
    """

    name: str
    rows: RowsFn
    uses_pretrained: bool = True  # False: the backbone starts from random weights (BatchNorm cannot be frozen)
    options: tuple[str, ...] = ()  # StrategyCfg fields the plan reads besides the rates (e.g. "warmup_epochs")
    compare: bool = True  # in transferkit.compare's default set of strategies
    description: str = ""  # one line, for help texts (the plan function's docstring)


STRATEGIES: Registry[Strategy] = Registry("strategy")


def register_strategy(name: str, *, uses_pretrained: bool = True, options: tuple[str, ...] = (),
                      compare: bool = True) -> Callable[[RowsFn], RowsFn]:
    """Decorator: register a plan function under ``name`` (its docstring's first line is the description)."""
    def decorate(rows: RowsFn) -> RowsFn:
        if name == AUTO:
            raise ValueError(f"{AUTO!r} is reserved for the recommender")
        description = (rows.__doc__ or "").strip().split("\n", 1)[0]
        STRATEGIES.register(name, Strategy(name, rows, uses_pretrained, tuple(options), compare, description))
        return rows
    return decorate


def strategy_names(include_auto: bool = True) -> list[str]:
    """Every valid ``strategy.name`` in registration order (``auto`` last): for validation and help texts."""
    return STRATEGIES.names() + ([AUTO] if include_auto else [])


def check_strategy_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a registered strategy or ``auto``."""
    if name == AUTO or name in STRATEGIES:
        return
    close = difflib.get_close_matches(str(name), strategy_names(), n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"strategy.name {name!r} is not one of {', '.join(strategy_names())}{hint}")


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; ``auto`` and unknown names raise (see :func:`make_plan`)."""
    if name == AUTO:
        raise StrategyError(f"strategy {name!r} has no plan (resolve 'auto' with the recommender first)")
    check_strategy_name(name)
    return STRATEGIES.get(name)


def default_comparison() -> tuple[str, ...]:
    """The strategies ``transferkit compare`` runs when none are named."""
    return tuple(name for name in STRATEGIES if STRATEGIES.get(name).compare)


def uses_pretrained(name: str | None) -> bool:
    """Whether strategy ``name`` starts from the pretrained backbone (unknown or missing names: True)."""
    return STRATEGIES.get(name).uses_pretrained if name in STRATEGIES else True


@register_strategy("scratch", uses_pretrained=False)
def _scratch(cfg: StrategyCfg, base: list[float], epochs: int) -> list[tuple[float, ...]]:
    """Random initialisation: every layer learns at the full rate."""
    return [tuple([1.0] * (len(base) + 1))] * epochs


@register_strategy("feature-extraction")
def _feature_extraction(cfg: StrategyCfg, base: list[float], epochs: int) -> list[tuple[float, ...]]:
    """The backbone stays frozen; only the head trains."""
    return [_row(base, len(base))] * epochs


@register_strategy("finetune")
def _finetune(cfg: StrategyCfg, base: list[float], epochs: int) -> list[tuple[float, ...]]:
    """Every layer trains from the start, the backbone at its discriminative rates."""
    return [_row(base, 0)] * epochs


@register_strategy("partial", options=("unfreeze",), compare=False)
def _partial(cfg: StrategyCfg, base: list[float], epochs: int) -> list[tuple[float, ...]]:
    """The last --unfreeze layer groups train with the head; the rest stay frozen."""
    n = len(base)
    if cfg.unfreeze > n:
        raise StrategyError(f"--unfreeze {cfg.unfreeze} exceeds the {n} layer groups of this backbone")
    return [_row(base, n - cfg.unfreeze)] * epochs


@register_strategy("lp-ft", options=("warmup_epochs",))
def _lp_ft(cfg: StrategyCfg, base: list[float], epochs: int) -> list[tuple[float, ...]]:
    """Head only for --warmup-epochs, then every layer (linear probe, then fine-tune)."""
    if cfg.warmup_epochs >= epochs:
        raise StrategyError(
            f"lp-ft: --warmup-epochs {cfg.warmup_epochs} leaves no fine-tuning epoch of {epochs}; "
            "raise --epochs or lower --warmup-epochs"
        )
    n = len(base)
    return [_row(base, n if e < cfg.warmup_epochs else 0) for e in range(epochs)]


@register_strategy("gradual", options=("unfreeze_every",))
def _gradual(cfg: StrategyCfg, base: list[float], epochs: int) -> list[tuple[float, ...]]:
    """Head first, then one more layer group from the top every --unfreeze-every epochs."""
    n = len(base)
    return [_row(base, n - min(n, e // cfg.unfreeze_every)) for e in range(epochs)]


def make_plan(cfg: StrategyCfg, backbone_groups: list[str], epochs: int) -> Plan:
    """The plan for ``cfg.name`` over ``epochs`` epochs (``auto`` must be resolved before)."""
    strategy = get_strategy(cfg.name)
    rows = strategy.rows(cfg, base_scales(cfg, backbone_groups), epochs)
    plan = Plan(cfg.name, tuple(backbone_groups) + (HEAD,), tuple(rows), "train", pretrained=strategy.uses_pretrained)
    return Plan(plan.strategy, plan.groups, plan.scales, _resolve_bn(cfg.bn, plan), plan.pretrained)


def _resolve_bn(policy: str, plan: Plan) -> str:
    """``auto``: frozen whenever the plan freezes any backbone group at any epoch, else train."""
    if policy != "auto":
        if policy == "frozen" and not plan.pretrained:
            raise StrategyError(f"--bn frozen makes no sense with {plan.strategy}: random BatchNorm statistics would stay random")
        return policy
    return "frozen" if plan.ever_frozen_backbone() else "train"
