"""L2-SP (Li et al. 2018, "Explicit inductive bias for transfer learning"): pull the fine-tuned backbone
toward its pretrained weights instead of toward zero.

A plug-in of the trainer's step (``StepContext.extra_loss``); the trainer also turns the backbone's
AdamW weight decay off when it is on, since decay toward zero would fight the pull toward the start.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["L2SP"]


class L2SP:
    """``0.5 * alpha * sum ||w - w0||^2`` over the backbone parameters that currently train.

    Args:
        backbone: the module whose current values are the anchor ``w0`` (copied now, before training).
        alpha: the strength (``strategy.l2sp``).
    """

    def __init__(self, backbone: nn.Module, alpha: float) -> None:
        self.alpha = alpha
        self.anchor = [(p, p.detach().clone()) for p in backbone.parameters()]

    @classmethod
    def for_run(cls, backbone: nn.Module, alpha: float) -> "L2SP | None":
        """The regulariser, or None when ``alpha`` is 0 (off)."""
        return cls(backbone, alpha) if alpha else None

    def loss(self) -> torch.Tensor:
        total = sum(((p - p0) ** 2).sum() for p, p0 in self.anchor if p.requires_grad)
        if isinstance(total, torch.Tensor):
            return 0.5 * self.alpha * total
        return torch.zeros((), device=self.anchor[0][0].device if self.anchor else None)
