"""Transforms built from the backbone's spec, never hard-coded (the seeds' 'wrong preprocessing' pitfall).

The operations before tensor conversion (:func:`train_ops`, :func:`eval_ops`) are shared by the CPU
path (PIL images in loader workers) and the GPU path (uint8 tensors, ``transferkit/data/gpu.py``), so
both apply the same crop, flip and colour jitter with the same parameter ranges.

Seed semantics: the random parameters of one image in one epoch come from the CPU torch RNG seeded
with ``image_seed(augment_seed(seed, epoch), index)`` (``index`` = the sample's position in the split).
Both paths draw them with the same torchvision ops in the same order, so a given image in a given
epoch gets the identical crop box, flip and jitter factors on both paths, whatever the loader's worker
count, batch composition or number of processes.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from typing import Iterator

from torchvision.transforms import v2 as T
from torchvision.transforms import InterpolationMode
import torch

from transferkit.spec import BackboneSpec

__all__ = [
    "eval_transform",
    "train_transform",
    "eval_ops",
    "train_ops",
    "resize_size",
    "describe_transform",
    "tta_views",
    "TTA_MODES",
    "TTA_VIEWS",
    "augment_seed",
    "image_seed",
    "image_rng",
]

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


def eval_ops(spec: BackboneSpec) -> list:
    """The eval geometry (PIL image or uint8 CHW tensor in, same type out): resize, centre crop."""
    interp = _INTERP.get(spec.interpolation, InterpolationMode.BILINEAR)
    return [T.Resize(resize_size(spec), interpolation=interp, antialias=True), T.CenterCrop(spec.input_size)]


def train_ops(spec: BackboneSpec, augment: str = "light") -> list:
    """The training augmentation before tensor conversion; ``augment="none"`` gives :func:`eval_ops`."""
    if augment == "none":
        return eval_ops(spec)
    interp = _INTERP.get(spec.interpolation, InterpolationMode.BILINEAR)
    return [
        T.RandomResizedCrop(spec.input_size, scale=(0.5, 1.0), interpolation=interp, antialias=True),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.1, 0.1, 0.1),
    ]


def eval_transform(spec: BackboneSpec) -> T.Compose:
    """Resize the shorter side to input/crop_pct, centre-crop input_size, normalise with the spec."""
    return T.Compose(eval_ops(spec) + _to_tensor(spec))


def train_transform(spec: BackboneSpec, augment: str = "light") -> T.Compose:
    """Light, standard augmentation: random resized crop (scale 0.5-1), horizontal flip, colour jitter."""
    if augment == "none":
        return eval_transform(spec)
    return T.Compose(train_ops(spec, augment) + _to_tensor(spec))


TTA_MODES = ("none", "flip", "flip-crops")
TTA_VIEWS = {"none": 1, "flip": 2, "flip-crops": 10}  # views per image of each mode


class _Views:
    """PIL image -> uint8 ``[V, 3, H, W]``: the test-time views of :func:`tta_views` (picklable for workers)."""

    def __init__(self, spec: BackboneSpec, mode: str) -> None:
        interp = _INTERP.get(spec.interpolation, InterpolationMode.BILINEAR)
        self.mode = mode
        if mode == "flip-crops":  # the classic ten-crop: centre and four corners of the resized image, and their mirrors
            self.geometry = T.Compose([T.Resize(resize_size(spec), interpolation=interp, antialias=True),
                                       T.TenCrop(spec.input_size)])
        else:
            self.geometry = T.Compose(eval_ops(spec))
        self.to_image = T.ToImage()

    def __call__(self, image) -> torch.Tensor:
        if self.mode == "flip-crops":
            return torch.stack([self.to_image(crop) for crop in self.geometry(image)])
        x = self.to_image(self.geometry(image))
        return torch.stack([x, x.flip(-1)]) if self.mode == "flip" else x.unsqueeze(0)

    def __repr__(self) -> str:
        return f"TTAViews({self.mode}, {self.geometry!r})"


def tta_views(spec: BackboneSpec, mode: str = "none") -> _Views:
    """Test-time augmentation views as uint8 ``[V, 3, H, W]`` (normalise afterwards; the ONNX graph does it itself).

    ``none``: the eval view (V=1); ``flip``: it and its mirror (V=2); ``flip-crops``: ten crops (V=10): the
    centre and the four corners of the image resized to ``input_size / crop_pct``, each also mirrored.
    Predictions average the views' probabilities.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta mode {mode!r} is not one of {', '.join(TTA_MODES)}")
    return _Views(spec, mode)


def describe_transform(spec: BackboneSpec) -> str:
    """A stable text description of the eval transform (part of the embedding-cache key)."""
    return (
        f"resize{resize_size(spec)}-{spec.interpolation}-crop{spec.input_size}"
        f"-mean{tuple(round(v, 6) for v in spec.mean)}-std{tuple(round(v, 6) for v in spec.std)}"
    )


def _mix(*parts: int) -> int:
    # A hash instead of arithmetic on the seeds: nearby (seed, epoch, index) triples must not
    # collide or give related RNG streams, and the value must not depend on PYTHONHASHSEED.
    text = ":".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def augment_seed(seed: int, epoch: int) -> int:
    """Base seed of one epoch's augmentation: a pure function of the run seed and the epoch.

    The process rank is deliberately not part of it: sample indices are global, so every image
    still gets its own stream, and a run on N processes augments each image exactly like one
    process does.
    """
    return _mix(seed, epoch)


def image_seed(base: int, index: int) -> int:
    """Seed of one image's random parameters under the epoch's base seed (see :func:`augment_seed`)."""
    return _mix(base, index)


@contextmanager
def image_rng(base: int, index: int) -> Iterator[None]:
    """Seed the CPU torch RNG for one image's transform, restoring the caller's state afterwards.

    torchvision's random transforms draw from the global CPU generator (also for CUDA tensors).
    Only that generator is seeded: ``torch.manual_seed`` would also reseed the CUDA generators,
    which dropout on the GPU draws from.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(image_seed(base, index))
        yield
