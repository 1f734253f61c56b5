"""Parameter groups, the optimizer (built once), the LR schedule, and applying a plan each epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from transferkit.config import OptimCfg
from transferkit.models.backbones import layer_groups
from transferkit.models.transfer import BN_TYPES, TransferModel
from transferkit.strategy.plan import HEAD, Plan

__all__ = [
    "GroupIndex",
    "index_groups",
    "build_optimizer",
    "lr_factor",
    "apply_plan",
    "set_learning_rates",
    "count_parameters",
]


@dataclass
class GroupIndex:
    """Which parameters and BatchNorm modules belong to which layer group."""

    names: list[str]  # backbone groups stem..last, then "head"
    params: dict[str, list[tuple[str, nn.Parameter]]]
    batchnorms: dict[str, list[str]]  # group -> BN module names (relative to the TransferModel)


def index_groups(model: TransferModel) -> GroupIndex:
    """Assign every parameter and BatchNorm module of ``model`` to exactly one layer group."""
    groups = layer_groups(model.backbone)
    owner: dict[str, str] = {}
    for group, names in groups:
        for pname in names:
            owner[pname] = group
    params: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g, _ in groups}
    params[HEAD] = []
    for pname, p in model.backbone.named_parameters():
        params[owner[pname]].append((f"backbone.{pname}", p))
    for pname, p in model.head.named_parameters():
        params[HEAD].append((f"head.{pname}", p))
    batchnorms: dict[str, list[str]] = {g: [] for g in params}
    for mname, module in model.backbone.named_modules():
        if isinstance(module, BN_TYPES):
            group = owner.get(f"{mname}.weight") or owner.get(f"{mname}.bias") or groups[0][0]
            batchnorms[group].append(f"backbone.{mname}")
    return GroupIndex([g for g, _ in groups] + [HEAD], params, batchnorms)


def build_optimizer(index: GroupIndex, cfg: OptimCfg, backbone_weight_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW over every parameter, two optimizer groups per layer group (with / without decay).

    Built once: unfreezing later only changes the ``lr_scale`` of existing groups. Biases and
    normalisation parameters (1-D tensors) get no weight decay, as timm and nanoGPT do.
    """
    param_groups = []
    for group in index.names:
        decay = cfg.weight_decay if group == HEAD or backbone_weight_decay is None else backbone_weight_decay
        with_decay = [p for _, p in index.params[group] if p.ndim > 1]
        no_decay = [p for _, p in index.params[group] if p.ndim <= 1]
        for params, wd in ((with_decay, decay), (no_decay, 0.0)):
            if params:
                param_groups.append(
                    {"params": params, "weight_decay": wd, "layer_group": group, "lr_scale": 0.0, "lr": 0.0}
                )
    return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` (a pure function of the step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rates(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    """Every group's lr = base lr x schedule factor x its own lr_scale (never one lr for all)."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor * group["lr_scale"]


def apply_plan(
    model: TransferModel,
    index: GroupIndex,
    optimizer: torch.optim.Optimizer,
    plan: Plan,
    epoch: int,
    toggle_requires_grad: bool = True,
) -> None:
    """Make ``epoch``'s plan true: lr scales, requires_grad, and which BatchNorm layers are pinned.

    Frozen groups get ``requires_grad=False`` (no gradient, so AdamW skips them entirely: no
    moment update, no weight decay, the weights stay bit-identical). Under DDP, requires_grad must
    not change after wrapping; pass ``toggle_requires_grad=False`` and the engine drops the
    gradients of scale-0 groups before the step instead.
    """
    scales = plan.at(epoch)
    for group in optimizer.param_groups:
        group["lr_scale"] = scales[group["layer_group"]]
    if toggle_requires_grad:
        for group, params in index.params.items():
            for _, p in params:
                p.requires_grad_(scales[group] > 0)
    pinned = []
    for group, bn_names in index.batchnorms.items():
        if plan.bn == "frozen" or scales[group] == 0:
            pinned.extend(bn_names)  # a frozen layer's statistics never move, whatever the policy
    model.pin_batchnorm(pinned)


def count_parameters(index: GroupIndex, plan: Plan) -> tuple[int, int]:
    """(parameters trained at some point of the plan, all parameters)."""
    ever = set(plan.ever_trainable())
    total = sum(p.numel() for params in index.params.values() for _, p in params)
    trainable = sum(p.numel() for g, params in index.params.items() if g in ever for _, p in params)
    return trainable, total
