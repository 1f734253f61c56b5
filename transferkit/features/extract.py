"""The embedding data path, tuned for small CPUs (measured in benchmarks/speed.py).

* JPEG draft-mode decoding: ``load_rgb(draft_size=...)`` lets libjpeg decode at 1/2, 1/4 or 1/8
  scale when the target is smaller, instead of decoding every pixel and throwing most away.
* Decoding overlaps the forward pass: DataLoader workers decode and resize the next batches while
  the main process runs the backbone.
* Workers send uint8 images (a quarter of the bytes of float32 through shared memory) and the main
  process converts and normalises the whole batch at once, in channels_last layout.
* channels_last + ``torch.inference_mode``: on CPU, oneDNN's depthwise/pointwise convolutions are
  much faster in NHWC, and inference mode skips autograd bookkeeping entirely.
* BatchNorm folded into the convolutions of a copy of the frozen backbone (:mod:`.fuse`).
* Thread counts: one decoding worker up to 4 cores, and the forward gets the remaining cores, so
  the two never fight over a core (the one CPU policy, :func:`transferkit.data.datasets.cpu_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from transferkit.data.datasets import ImageDataset, collate_skipping, cpu_plan, torch_threads
from transferkit.data.scan import Sample
from transferkit.models.runtime import autocast_for
from transferkit.features.fuse import fold_batchnorm
from transferkit.features.keys import file_digest

__all__ = ["EmbedBatch", "embed_images", "split_normalize", "torch_threads", "default_embed_workers", "forward_threads"]


def split_normalize(transform: Any) -> tuple[Any, torch.Tensor | None, torch.Tensor | None]:
    """(the transform up to uint8, mean, std) when it ends in ToDtype(float, scale) + Normalize, else (it, None, None).

    The two dropped steps are applied to the whole batch in :func:`_normalise`, which computes the same
    ``(x / 255 - mean) / std`` as one fused multiply-add.
    """
    ops = list(getattr(transform, "transforms", []))
    if (len(ops) >= 2 and isinstance(ops[-1], T.Normalize) and isinstance(ops[-2], T.ToDtype)
            and getattr(ops[-2], "scale", False) and not ops[-1].inplace):
        mean = torch.tensor(ops[-1].mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(ops[-1].std, dtype=torch.float32).view(1, -1, 1, 1)
        return T.Compose(ops[:-2]), mean, std
    return transform, None, None


class _Unchanged:
    """``verify`` for ImageDataset: the file's bytes are still those hashed before decoding (picklable for workers).

    The cache files each row under the hash taken before decoding, so a file replaced meanwhile must
    not leave an embedding of other content under that hash.
    """

    def __init__(self, paths: Sequence[str], digests: np.ndarray) -> None:
        self.paths, self.digests = paths, digests

    def __call__(self, index: int) -> str | None:
        try:
            if file_digest(self.paths[index]) == bytes(self.digests[index]):
                return None
        except OSError:
            pass
        return "the file changed while it was being embedded; run again"


def default_embed_workers(requested: int = -1) -> int:
    """Decoding workers for embedding: the one CPU policy (:func:`transferkit.data.datasets.cpu_plan`)."""
    return cpu_plan(requested).workers


def forward_threads(workers: int) -> int:
    """torch threads for the forward beside ``workers`` decoding workers (:func:`~transferkit.data.datasets.cpu_plan`).

    Oversubscribing (2 threads + 1 worker on 2 cores) stalls every intra-op barrier whenever the
    worker runs; benchmarks/speed.py measured 1 thread + 1 worker clearly faster on a 2-core machine.
    """
    return cpu_plan(workers).threads


@dataclass
class EmbedBatch:
    """Features of the readable files of one batch, and the unreadable ones with their reasons."""

    indices: np.ndarray  # positions in the ``paths`` given to embed_images
    features: np.ndarray  # float32, (len(indices), feature_dim)
    failed: list[tuple[int, str]]


def _normalise(images: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None,
               device: torch.device, channels_last: bool) -> torch.Tensor:
    x = images.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)  # on uint8: 4x less to shuffle than float
    if mean is None:
        return x.float()
    scale = 1.0 / (255.0 * std.to(device))
    return torch.addcmul(-(mean.to(device) / std.to(device)), x.float(), scale)


def embed_images(
    backbone: nn.Module | None,
    paths: Sequence[str],
    transform: Callable,
    *,
    draft_size: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = -1,
    channels_last: bool = True,
    amp: bool = False,
    seeds: Sequence[int] | None = None,
    threads: int | None = None,
    digests: np.ndarray | None = None,
    fold_bn: bool = True,
    runner: Callable[[torch.Tensor], np.ndarray] | None = None,
) -> Iterator[EmbedBatch]:
    """Yield the backbone's pooled features for ``paths`` batch by batch (the backbone runs in eval mode).

    Args:
        backbone: returns (N, feature_dim) pooled features (None when ``runner`` computes them).
        paths: image files; unreadable ones come back in ``EmbedBatch.failed``.
        transform: the per-image transform (eval, or a train transform for augmented views).
        seeds: one torch seed per file, set before its transform (augmented views).
        threads: torch threads for the forward (default: :func:`forward_threads`).
        digests: SHA-256 of each file taken earlier; a file whose bytes differ after decoding is
            reported as failed, so a cache never files an embedding under another content's hash.
        fold_bn: run a copy of the backbone with BatchNorm folded into the convolutions (checked
            against the original on the first batch; see :mod:`transferkit.features.fuse`).
        runner: computes the features of a uint8 ``[N, 3, H, W]`` batch instead of ``backbone``
            (ONNX Runtime, whose graph normalises itself); ``transform`` must end in ToDtype + Normalize.
    """
    device = torch.device(device)
    pre, mean, std = split_normalize(transform)
    n_workers = default_embed_workers(workers)
    paths = list(paths)
    dataset = ImageDataset([Sample(p, -1) for p in paths], pre, draft_size, item_seeds=seeds,
                           verify=None if digests is None else _Unchanged(paths, digests))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=n_workers, collate_fn=collate_skipping, pin_memory=device.type == "cuda", prefetch_factor=4 if n_workers else None,
        # its own generator: with workers, a loader otherwise draws their base seed from the global RNG,
        # so a cold run (which embeds) and a warm run (which does not) would train with different dropout
        generator=torch.Generator().manual_seed(0),
    )
    if backbone is None and runner is None:
        raise ValueError("embed_images needs a backbone or a runner")
    was_training = backbone is not None and backbone.training
    if backbone is not None:
        backbone.eval()
    if channels_last and runner is None:
        backbone.to(memory_format=torch.channels_last)
    net = None
    try:
        with torch_threads(threads or forward_threads(n_workers)), torch.inference_mode():
            for batch in loader:
                if batch["images"] is None:
                    yield EmbedBatch(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), batch["failed"])
                    continue
                if runner is not None:
                    if mean is None:
                        raise ValueError("an engine runner needs a transform ending in ToDtype(scale) + Normalize")
                    yield EmbedBatch(batch["indices"].numpy(), np.asarray(runner(batch["images"]), np.float32), batch["failed"])
                    continue
                x = _normalise(batch["images"], mean, std, device, channels_last)
                if net is None:
                    net = fold_batchnorm(backbone, x[:2]) if fold_bn else backbone
                with autocast_for(device, amp):
                    features = net(x)
                yield EmbedBatch(batch["indices"].numpy(), features.float().cpu().numpy(), batch["failed"])
    finally:
        if backbone is not None:
            backbone.train(was_training)
