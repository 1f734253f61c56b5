"""Transforms built from the backbone's spec, never hard-coded (the seeds' 'wrong preprocessing' pitfall)."""

from __future__ import annotations

import math

from torchvision.transforms import v2 as T
from torchvision.transforms import InterpolationMode
import torch

from transferkit.models.backbones import BackboneSpec

__all__ = ["eval_transform", "train_transform", "resize_size", "describe_transform"]

_INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def resize_size(spec: BackboneSpec) -> int:
    """Shorter side before the centre crop: input_size / crop_pct (timm's convention)."""
    return int(math.floor(spec.input_size / spec.crop_pct))


def _to_tensor(spec: BackboneSpec) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(spec.mean, spec.std)]


def eval_transform(spec: BackboneSpec) -> T.Compose:
    """Resize the shorter side to input/crop_pct, centre-crop input_size, normalise with the spec."""
    interp = _INTERP.get(spec.interpolation, InterpolationMode.BILINEAR)
    return T.Compose(
        [T.Resize(resize_size(spec), interpolation=interp, antialias=True), T.CenterCrop(spec.input_size)]
        + _to_tensor(spec)
    )


def train_transform(spec: BackboneSpec, augment: str = "light") -> T.Compose:
    """Light, standard augmentation: random resized crop (scale 0.5-1) and horizontal flip."""
    if augment == "none":
        return eval_transform(spec)
    interp = _INTERP.get(spec.interpolation, InterpolationMode.BILINEAR)
    return T.Compose(
        [
            T.RandomResizedCrop(spec.input_size, scale=(0.5, 1.0), interpolation=interp, antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.1, 0.1, 0.1),
        ]
        + _to_tensor(spec)
    )


def describe_transform(spec: BackboneSpec) -> str:
    """A stable text description of the eval transform (part of the embedding-cache key)."""
    return (
        f"resize{resize_size(spec)}-{spec.interpolation}-crop{spec.input_size}"
        f"-mean{tuple(round(v, 6) for v in spec.mean)}-std{tuple(round(v, 6) for v in spec.std)}"
    )
