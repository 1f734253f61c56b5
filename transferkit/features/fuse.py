"""Folding eval-mode BatchNorm into the convolution before it, for the embedding pass only.

A frozen backbone's BatchNorm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a bias. On a CPU the separate BatchNorm passes over every
activation map cost a large share of an EfficientNet-Lite forward (measured in benchmarks/speed.py).
torch already does the arithmetic (``fuse_conv_bn_eval``); what it does not do is find the pairs in an
arbitrary timm model, so :func:`fold_batchnorm` finds them by watching one forward pass: a BatchNorm is
folded only when its input is exactly the output of a Conv2d that nothing else consumes. The folded
model is a copy (the caller's backbone, which is saved and maybe fine-tuned later, is untouched) and is
used only if its output matches the original's on the example batch; otherwise the original is kept.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]

log = logging.getLogger(__name__)


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where the BatchNorm's only input is the conv's output."""
    conv_out: dict[int, str] = {}
    bn_in: dict[str, int] = {}
    consumers: Counter[int] = Counter()
    keep: list[torch.Tensor] = []  # hold every tensor seen, so no id() is recycled during the pass

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            keep.extend((args[0], output))
            consumers[id(args[0])] += 1
            if isinstance(module, nn.Conv2d):  # subclasses too (timm's Conv2dSame); the output check catches odd ones
                conv_out[id(output)] = name
            elif isinstance(module, nn.BatchNorm2d):
                bn_in[name] = id(args[0])

        return record

    watched = [(n, m) for n, m in model.named_modules() if n and (not list(m.children()) or isinstance(m, nn.BatchNorm2d))]
    handles = [m.register_forward_hook(hook(n)) for n, m in watched]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return [(conv_out[t], bn) for bn, t in bn_in.items() if t in conv_out and consumers[t] == 1]


def _after_bn(bn: nn.Module) -> nn.Module:
    """What remains of a BatchNorm once its affine map lives in the conv: timm's fused dropout + activation."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    parts = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def fold_batchnorm(model: nn.Module, example: torch.Tensor, rtol: float = 1e-3, atol: float = 1e-4) -> nn.Module:
    """An eval-mode copy of ``model`` with Conv2d -> BatchNorm2d pairs folded, or ``model`` itself.

    ``model`` itself comes back when it has no foldable pair, when ``example`` cannot run through it,
    or when the folded copy's output on ``example`` differs beyond (rtol, atol).
    """
    was_training = model.training
    model.eval()
    try:
        pairs = _conv_bn_pairs(model, example)
        if not pairs:
            return model
        fused = copy.deepcopy(model)
        for conv_name, bn_name in pairs:
            conv, bn = fused.get_submodule(conv_name), fused.get_submodule(bn_name)
            _replace(fused, conv_name, fuse_conv_bn_eval(conv, bn))
            _replace(fused, bn_name, _after_bn(bn))
        with torch.inference_mode():
            same = torch.allclose(model(example), fused(example), rtol=rtol, atol=atol)
    except Exception as exc:  # noqa: BLE001 - an optimisation: on any surprise, keep the model as it is
        log.debug("BatchNorm folding skipped: %s", exc)
        return model
    finally:
        model.train(was_training)
    if not same:
        log.debug("BatchNorm folding skipped: the folded model's output differs")
        return model
    return fused.eval()
