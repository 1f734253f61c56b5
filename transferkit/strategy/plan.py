"""Strategies as pure plans: (epoch) -> the learning-rate scale of every layer group (0 = frozen).

A plan never adds or removes optimizer groups; it only changes scales. That keeps the optimizer built
once over every parameter (schedulers, checkpoints and resume stay valid) and makes every strategy a
unit-testable function that a resumed run simply recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass

from transferkit.config import StrategyCfg
from transferkit.errors import StrategyError

__all__ = ["Plan", "make_plan", "base_scales", "HEAD"]

HEAD = "head"


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


def make_plan(cfg: StrategyCfg, backbone_groups: list[str], epochs: int) -> Plan:
    """The plan for ``cfg.name`` over ``epochs`` epochs (``auto`` must be resolved before)."""
    n = len(backbone_groups)
    base = base_scales(cfg, backbone_groups)
    name = cfg.name
    if name == "feature-extraction":
        rows = [_row(base, n)] * epochs
    elif name == "finetune":
        rows = [_row(base, 0)] * epochs
    elif name == "scratch":
        rows = [tuple([1.0] * (n + 1))] * epochs  # random init: every layer learns at the full rate
    elif name == "partial":
        if cfg.unfreeze > n:
            raise StrategyError(f"--unfreeze {cfg.unfreeze} exceeds the {n} layer groups of this backbone")
        rows = [_row(base, n - cfg.unfreeze)] * epochs
    elif name == "lp-ft":
        if cfg.warmup_epochs >= epochs:
            raise StrategyError(
                f"lp-ft: --warmup-epochs {cfg.warmup_epochs} leaves no fine-tuning epoch of {epochs}; "
                "raise --epochs or lower --warmup-epochs"
            )
        rows = [_row(base, n if e < cfg.warmup_epochs else 0) for e in range(epochs)]
    elif name == "gradual":
        rows = [_row(base, n - min(n, e // cfg.unfreeze_every)) for e in range(epochs)]
    else:
        raise StrategyError(f"strategy {name!r} has no plan (resolve 'auto' with the recommender first)")
    plan = Plan(name, tuple(backbone_groups) + (HEAD,), tuple(rows), "train", pretrained=name != "scratch")
    return Plan(plan.strategy, plan.groups, plan.scales, _resolve_bn(cfg.bn, plan), plan.pretrained)


def _resolve_bn(policy: str, plan: Plan) -> str:
    """``auto``: frozen whenever the plan freezes any backbone group at any epoch, else train."""
    if policy != "auto":
        if policy == "frozen" and plan.strategy == "scratch":
            raise StrategyError("--bn frozen makes no sense with scratch: random BatchNorm statistics would stay random")
        return policy
    return "frozen" if plan.ever_frozen_backbone() else "train"
