"""TransferModel: a pretrained backbone returning pooled features, plus a new head sized to the task."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from transferkit.models.backbones import BackboneSpec, build_backbone

__all__ = ["TransferModel", "make_head", "build_model", "BN_TYPES"]

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def make_head(kind: str, feature_dim: int, num_classes: int, hidden: int = 512, dropout: float = 0.2) -> nn.Module:
    """A linear head (dropout + linear) or a small MLP (linear-ReLU-dropout-linear)."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
    raise ValueError(f"unknown head kind {kind!r}")


class TransferModel(nn.Module):
    """Backbone (pooled features) + head.

    BatchNorm layers listed by :meth:`pin_batchnorm` stay in eval mode even after ``model.train()``,
    so their running statistics never move (re-applied on every ``train()`` call, which is exactly
    where Keras/fastai-style freezing goes wrong).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: BackboneSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec
        self._pinned_bn: list[str] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def pin_batchnorm(self, module_names: Iterable[str]) -> None:
        """Keep these BatchNorm modules (names relative to the model) in eval mode from now on."""
        self._pinned_bn = sorted(set(module_names))
        self.train(self.training)

    @property
    def pinned_batchnorm(self) -> list[str]:
        return list(self._pinned_bn)

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        if mode and self._pinned_bn:
            modules = dict(self.named_modules())
            for name in self._pinned_bn:
                modules[name].eval()
        return self


def build_model(
    spec: BackboneSpec,
    num_classes: int,
    head: str = "linear",
    hidden: int = 512,
    dropout: float = 0.2,
    pretrained: bool = True,
    weights: str | None = None,
) -> TransferModel:
    """Backbone with its weights + a freshly initialised head."""
    backbone = build_backbone(spec, pretrained=pretrained, weights=weights)
    return TransferModel(backbone, make_head(head, spec.feature_dim, num_classes, hidden, dropout), spec)
