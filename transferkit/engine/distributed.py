"""torch.distributed under torchrun: process group set-up, rank-0-only writes, metric reduction.

``torchrun --nproc_per_node N -m transferkit.cli train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; we
initialise the process group from them (NCCL on CUDA, gloo on the CPU). Nothing here is needed for a
single process: every helper degrades to the identity when the group is not initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.layers import convert_sync_batchnorm as timm_convert_sync_batchnorm

from transferkit.errors import ConfigError

__all__ = ["DistInfo", "setup_distributed", "is_main", "all_reduce_sums", "gather_predictions", "barrier", "cleanup",
           "convert_sync_batchnorm", "use_sync_bn"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_request: str = "auto") -> tuple[DistInfo, torch.device | None]:
    """Initialise the process group if launched by torchrun; returns (info, device to use or None)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_request != "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = None
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return DistInfo(rank, world, local), device or torch.device("cpu")


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sums(values: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """Sum each value over all ranks (for loss x count, correct, seen)."""
    if not dist.is_initialized():
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(keys, tensor.tolist()))


def gather_predictions(result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate every rank's predictions and drop the duplicates DistributedSampler pads with.

    Rows are identified by dataset index, so metrics over the gathered rows are exactly the
    single-process metrics.
    """
    if not dist.is_initialized():
        return result
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, result)
    outputs = np.concatenate([p["outputs"] for p in parts if len(p["indices"])])
    labels = np.concatenate([p["labels"] for p in parts if len(p["indices"])])
    indices = np.concatenate([p["indices"] for p in parts if len(p["indices"])])
    order = np.argsort(indices, kind="stable")
    indices, first = np.unique(indices[order], return_index=True)
    return {"outputs": outputs[order][first], "labels": labels[order][first], "indices": indices}


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_for_training(model: torch.nn.Module, trainable: list[torch.nn.Parameter], frozen: list[torch.nn.Parameter],
                      info: DistInfo, device: torch.device, compile_model: bool = False) -> torch.nn.Module:
    """The module the training loop calls: DDP (and/or torch.compile) around ``model``.

    requires_grad is fixed here, once, before wrapping (toggling it after wrapping breaks DDP):
    parameters that train at some epoch of the plan keep it; the rest never do. Groups that are
    frozen only for some epochs have their gradients dropped before the step instead.
    """
    wrapped = model
    if info.enabled:
        for p in trainable:
            p.requires_grad_(True)
        for p in frozen:
            p.requires_grad_(False)
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
    if compile_model:
        wrapped = torch.compile(wrapped)
    return wrapped


def convert_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every BatchNorm layer synchronised across the processes (same parameters, same statistics).

    timm's version, not torch's: timm backbones fuse BatchNorm with its activation (``BatchNormAct2d``,
    BN + ReLU6 in EfficientNet-Lite), and torch's conversion turns that into a plain SyncBatchNorm,
    silently dropping the activation. timm's keeps it (``SyncBatchNormAct``) and converts plain
    BatchNorm layers as torch does. The parameters are the same objects afterwards, so convert before
    building the optimizer or not at all.
    """
    return timm_convert_sync_batchnorm(model)


def use_sync_bn(setting: str, info: DistInfo, device: torch.device, batchnorm_trains: bool) -> bool:
    """Whether to convert BatchNorm to SyncBatchNorm: ``engine.sync_bn`` (auto | true | false) resolved.

    Only several processes whose BatchNorm statistics move need it. ``auto`` turns it on on CUDA;
    on the CPU torch's SyncBatchNorm refuses to train, so there every process normalises its own
    share of the batch (multi-process metrics then differ from single-process ones).
    """
    if setting == "false" or not info.enabled or not batchnorm_trains:
        return False
    if device.type == "cuda":
        return True
    if setting == "true":
        raise ConfigError(f"engine.sync_bn=true needs CUDA devices, but this run trains BatchNorm on {device.type} "
                          "(torch's SyncBatchNorm trains on GPUs only); use engine.sync_bn=auto or false, "
                          "or --bn frozen, or run on GPUs")
    return False
