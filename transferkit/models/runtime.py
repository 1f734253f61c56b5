"""Running a model: choosing the device, bf16 autocast, and batched inference over a loader.

Below the features and engine layers, so the embedding cache (features) and the loops (engine) share one
inference path without importing each other.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["pick_device", "autocast_for", "to_device", "predict_loader", "prediction_rows", "top_k_row"]


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast_for(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no GradScaler needed for bf16); nothing on the CPU."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, Any], ctx_device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch["images"].to(ctx_device, non_blocking=True)
    if channels_last and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["labels"].to(ctx_device, non_blocking=True)


@torch.inference_mode()
def predict_loader(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    on_failed: Callable[[list[tuple[int, str]]], None] | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Outputs of ``forward`` (default: softmax probabilities) for every readable item, in loader order."""
    model.eval()
    outputs, labels, indices = [], [], []
    for batch in batches:
        if batch["failed"] and on_failed is not None:
            on_failed(batch["failed"])
        if batch["images"] is None:
            continue
        images, y = to_device(batch, device, channels_last)
        with autocast_for(device, amp):
            out = forward(images) if forward is not None else model(images).float().softmax(dim=1)
        outputs.append(out.float().cpu())
        labels.append(y.cpu())
        indices.append(batch["indices"])
    if not outputs:
        return {"outputs": np.zeros((0, 0), np.float32), "labels": np.zeros(0, np.int64), "indices": np.zeros(0, np.int64)}
    return {
        "outputs": torch.cat(outputs).numpy(),
        "labels": torch.cat(labels).numpy(),
        "indices": torch.cat(indices).numpy(),
    }


def prediction_rows(paths: Sequence[str], indices: Iterable[Any], labels: Iterable[Any],
                    probs: Iterable[Sequence[float]]) -> list[dict[str, Any]]:
    """The one per-image prediction row: ``{"path", "label", "probs"}``.

    ``label`` is the true class index (-1 for an unlabelled image) and ``probs`` the softmax over the
    classes, rounded to 6 decimals. ``paths[index]`` is the file of each dataset index. Written as a run's
    ``test_predictions.json`` / ``selection_predictions.json``, by ``evaluate`` and by ``adapt``, and read by
    the report and ``compare``; ``predict`` renders its top-k answer from it (:func:`top_k_row`).
    """
    return [{"path": paths[int(i)], "label": int(y), "probs": [round(float(p), 6) for p in pr]}
            for i, y, pr in zip(indices, labels, probs)]


def top_k_row(row: dict[str, Any], classes: Sequence[str], k: int) -> dict[str, Any]:
    """``predict``'s answer for one prediction row: ``{"path", "predictions": [{"label", "probability"}]}``,
    the k most probable classes by name, most probable first."""
    probs = np.asarray(row["probs"], dtype=np.float64)
    order = np.argsort(-probs, kind="stable")[:k]
    return {"path": row["path"], "predictions": [{"label": classes[c], "probability": float(probs[c])} for c in order]}
