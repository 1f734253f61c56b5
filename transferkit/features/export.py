"""``embed_folder``: embeddings + labels + paths of an image folder, for scikit-learn, UMAP or a vector store."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from transferkit.models.runtime import pick_device
from transferkit.errors import ConfigError
from transferkit.export.deploy import resolve_engine
from transferkit.features.cache import FeatureCache, Part
from transferkit.features.warm import assemble, check_request, folder_samples, memo_key, remember, write_npz
from transferkit.models.backbones import build_backbone, resolve_spec

__all__ = ["embed_folder"]


def _torchrun_part() -> tuple[Part | None, bool]:
    """(this process's share when launched by torchrun (WORLD_SIZE > 1) else None, whether we started the group).

    Only a barrier is exchanged (the rows travel through the cache folder), so a gloo group serves
    CPU and GPU jobs alike. Across nodes, ``--cache-dir`` must be a folder every node shares.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, False
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend="gloo")
    return Part(dist.get_rank(), dist.get_world_size(), dist.barrier), started


def embed_folder(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | None = None,
    input_size: int | None = None,
    batch_size: int = 64,
    workers: int = -1,
    device: str = "auto",
    cache: bool = True,
    cache_dir: str | None = None,
    dtype: str = "float16",
    say: Any = None,
    engine: str = "auto",
) -> dict[str, Any]:
    """Embed every image of a class-folder dataset with a pretrained backbone (eval transform).

    Args:
        data: a folder of class sub-folders, or one with train/ val/ (test/) splits.
        out: optional ``.npz`` to write (atomically) with the arrays returned.
        backbone, weights, input_size: as for ``transferkit.train``.
        cache: read and fill the embedding cache (``cache_dir``, default the user cache folder).
        dtype: ``float16`` (as cached) or ``float32``.
        say: optional callable receiving progress lines.
        engine: ``auto`` (ONNX Runtime on the CPU when installed, PyTorch on a GPU), ``torch`` or ``onnx``;
            part of the cache key (the engines' features differ by ~1e-6).

    Under ``torchrun --nproc_per_node K -m transferkit.cli embed DATA`` the files still missing from the
    cache are split between the K processes (on every node: ``--nnodes`` with a shared ``--cache-dir``);
    each writes its part of the cache, then all read every row and rank 0 writes ``out``.

    Returns:
        ``embeddings`` (n, dim), ``labels`` (n,), ``paths`` (n,), ``splits`` (n,), ``classes``,
        ``skipped_paths`` / ``skipped_reasons`` (files not embedded), ``meta`` (JSON text: backbone,
        weights hash, transform). Only plain arrays: ``np.load(out)`` needs no pickle.
    """
    check_request(out, dtype)
    scans, names, samples, skipped = folder_samples(data)
    spec = resolve_spec(backbone, weights).with_input_size(input_size)
    part, started_group = _torchrun_part()
    dev = pick_device(device)
    if part is not None and dev.type == "cuda":  # one GPU per process of the node
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    chosen = resolve_engine(engine, dev)
    # built only if something is missing from the cache: a warm run never constructs the network
    fc = FeatureCache(lambda: build_backbone(spec, pretrained=True, weights=weights).to(dev), spec, weights=weights,
                      cache_dir=cache_dir, enabled=cache, device=dev, batch_size=batch_size, workers=workers, say=say,
                      engine=chosen)
    if part is not None and not cache:
        raise ConfigError("under torchrun the ranks exchange embeddings through the cache; drop --no-cache "
                          "(or point --cache-dir at a folder every node can read and write)")
    try:
        rows = fc.lookup([s.path for _, s in samples], part=part)
    finally:
        if started_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    skipped += [(samples[i][1].path, reason) for i, reason in sorted(rows.failed.items())]
    keep = rows.positions
    result = assemble(data, scans, names, samples, skipped, keep, rows.read(np.arange(keep.size)), fc.identity, dtype)
    if cache and part is None:  # a later warm run of the same request can skip torch, torchvision and timm (features.warm)
        remember(fc.root, memo_key(backbone, weights, input_size, device, engine), fc.namespace().key, fc.identity)
    if out is not None and (part is None or part.rank == 0):  # one writer per job
        write_npz(result, out)
    return result
