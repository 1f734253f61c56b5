"""The building blocks of domain adaptation: gradient reversal, the domain discriminator, the DANN
schedules (adaptation weight and learning rate) and the Deep CORAL loss.

All are small and exact on purpose: the gradient-reversal layer is a ``torch.autograd.Function`` so its
backward is *defined* as ``-lambda * grad`` (not the result of a numerical trick such as
``x.detach() + lambda * (x - x.detach())``), which the tests check to the last bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "GradReverse",
    "grad_reverse",
    "GradientReversal",
    "DomainDiscriminator",
    "dann_lambda",
    "dann_lr_factor",
    "coral_loss",
]


class GradReverse(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``-coeff`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad_output.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """``x`` unchanged forward; gradient ``-coeff * g`` backward (Ganin & Lempitsky 2015)."""
    return GradReverse.apply(x, coeff)


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`; ``coeff`` is set by the training loop every step."""

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff:g}"


class DomainDiscriminator(nn.Module):
    """MLP on pooled features -> one logit (target = 1, source = 0).

    Args:
        in_dim: feature dimension of the backbone.
        hidden: width of each hidden layer.
        layers: number of hidden layers (0 = a linear discriminator).
        dropout: dropout after each hidden layer (Ganin et al. use 0.5 with their deep models).
    """

    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            # no BatchNorm here: fed one domain at a time it would erase the very mean shift it must detect
            blocks += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


def dann_lambda(progress: float, cap: float = 1.0, gamma: float = 10.0) -> float:
    """Adaptation weight ``cap * (2 / (1 + exp(-gamma p)) - 1)``: 0 at p=0, ``cap`` as p -> 1."""
    p = min(max(progress, 0.0), 1.0)
    return cap * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def dann_lr_factor(progress: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """The paper's annealing ``1 / (1 + alpha p) ** beta`` (mu_p = mu_0 x this factor)."""
    p = min(max(progress, 0.0), 1.0)
    return 1.0 / (1.0 + alpha * p) ** beta


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL (Sun & Saenko 2016): ``||C_s - C_t||_F^2 / (4 d^2)`` between feature covariances.

    Written out because it is three lines and no installed library provides it for torch.
    Covariances are computed in float32 whatever the autocast dtype (bf16 is too coarse for them).
    """
    if source.shape[1] != target.shape[1]:
        raise ValueError(f"feature dimensions differ: {source.shape[1]} vs {target.shape[1]}")
    d = source.shape[1]
    cs = torch.cov(source.float().T)
    ct = torch.cov(target.float().T)
    return ((cs - ct) ** 2).sum() / (4.0 * d * d)
