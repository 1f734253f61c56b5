"""BatchNorm as a first-class part of adaptation: AdaBN and per-domain statistics.

AdaBN (Li et al. 2016): a network's BatchNorm running statistics describe the domain it was trained on.
Replacing them by statistics measured on unlabelled target images, and nothing else, often recovers much
of the accuracy lost to the shift. Here every BatchNorm layer is reset, switched to a cumulative average
(``momentum=None``) and fed the target images in train mode, without gradients; all other layers stay in
eval mode (dropout off), so the only thing that can change is BatchNorm's running mean and variance.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from transferkit.models.transfer import BN_TYPES

__all__ = ["adabn", "batchnorm_modules", "bn_statistics", "load_bn_statistics"]


def batchnorm_modules(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BatchNorm layer of ``model`` with its name."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BN_TYPES)]


def bn_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the running statistics (mean, var, count) of every BatchNorm layer, by state-dict key."""
    out = {}
    for name, m in batchnorm_modules(model):
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            value = getattr(m, key, None)
            if value is not None:
                out[f"{name}.{key}"] = value.detach().clone()
    return out


def load_bn_statistics(model: nn.Module, stats: dict[str, torch.Tensor]) -> None:
    """Put statistics saved by :func:`bn_statistics` back (e.g. the source domain's, for a source forward)."""
    modules = dict(batchnorm_modules(model))
    for key, value in stats.items():
        name, _, attr = key.rpartition(".")
        getattr(modules[name], attr).copy_(value)


@torch.no_grad()
def adabn(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    channels_last: bool = False,
    forward: Any = None,
) -> int:
    """Re-estimate every BatchNorm layer's running statistics on ``batches`` (unlabelled target images).

    Args:
        model: the network; left in eval mode afterwards.
        batches: loader batches (``{"images": ...}``); labels, if any, are ignored.
        device: where the model lives.
        channels_last: convert images to channels-last memory format (as the model was trained).
        forward: what to run per batch (default ``model.features`` if present, else ``model``): the
            head has no BatchNorm, so it need not run.

    Returns:
        The number of images the statistics were estimated from (0 leaves the model unchanged).
    """
    layers = [m for _, m in batchnorm_modules(model)]
    if not layers:
        return 0
    run = forward or getattr(model, "features", model)
    saved = {m: (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers}
    nn.Module.train(model, False)  # plain eval for everything (bypasses TransferModel's pinning logic) ...
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches, not an exponential one
        m.train()  # ... then train mode for BatchNorm only: batch statistics feed the running ones
    seen = 0
    try:
        for batch in batches:
            images = batch.get("images")
            if images is None or images.shape[0] < 2:
                continue  # one image has no variance (and BatchNorm refuses it in train mode)
            images = images.to(device)
            if channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            run(images)
            seen += images.shape[0]
    finally:
        for m in layers:
            momentum, mean, var, count = saved[m]
            m.momentum = momentum
            if seen == 0:  # nothing was read: keep the old statistics rather than reset ones
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        model.eval()
    return seen
