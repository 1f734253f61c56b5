"""The training and evaluation loops: flat, readable, one place that owns the optimizer step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

# device choice, autocast and batched inference live in models.runtime (the features layer uses them too);
# re-exported here because the loops and their callers read them as part of the engine's vocabulary
from transferkit.engine.hooks import Objective
from transferkit.models.runtime import autocast_for, pick_device, predict_loader, to_device

__all__ = ["StepContext", "classification_loss", "optimizer_step", "train_one_epoch", "predict_loader", "autocast_for", "pick_device"]


@dataclass
class StepContext:
    """What one optimisation step needs besides the batch."""

    optimizer: torch.optim.Optimizer
    set_lr: Callable[[int], None]  # step -> sets every group's lr from the pure schedule
    device: torch.device
    amp: bool = False
    channels_last: bool = False
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None  # per-class loss weights (imbalanced data), on ``device``
    extra_loss: Callable[[], torch.Tensor] | None = None  # e.g. L2-SP
    drop_grads_of: list[torch.nn.Parameter] = field(default_factory=list)  # DDP: scale-0 groups


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Cross-entropy with the run's label smoothing and class weights.

    With weights: ``sum_i w_{y_i} l_i / B``, the batch mean of the weighted per-image losses. The weights
    are normalised to mean 1 over the training images (:func:`transferkit.data.balance.class_weights`), so
    this is an unbiased estimate of the class-weighted risk on the scale of the plain loss. Not PyTorch's
    ``reduction="mean"``, which divides by the batch's own weight sum: that ratio depends on how a batch
    happens to mix classes, and under torchrun the average of each process's ratio is not the ratio of the
    whole batch, so one process and two would train differently. This mean averages exactly across processes.
    """
    if ctx.class_weights is None:
        return F.cross_entropy(logits.float(), labels, label_smoothing=ctx.label_smoothing)
    per_image = F.cross_entropy(logits.float(), labels, weight=ctx.class_weights,
                                label_smoothing=ctx.label_smoothing, reduction="none")
    return per_image.mean()


def optimizer_step(ctx: StepContext, loss: torch.Tensor, step: int) -> None:
    """The only place gradients become updates: backward, clip, schedule, step, zero."""
    loss.backward()
    for p in ctx.drop_grads_of:
        p.grad = None
    if ctx.grad_clip:
        params = [p for g in ctx.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if params:
            torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip)
    ctx.set_lr(step)
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    ctx: StepContext,
    start_step: int,
    on_failed: Callable[[list[tuple[int, str]]], None],
    on_batch: Callable[[float], None] | None = None,
    objective: Objective | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; returns mean loss and accuracy over the samples seen.

    ``objective`` replaces plain cross-entropy as the step's loss (e.g. a domain-adaptation loss); the
    loop, the optimizer step and the bookkeeping stay the same. Its ``epoch_record()`` joins the result.
    """
    model.train()
    step, total_loss, correct, seen = start_step, 0.0, 0, 0
    min_batch = 0 if objective is None else objective.min_batch
    for batch in batches:
        if batch["failed"]:
            on_failed(batch["failed"])
        if batch["images"] is None or batch["images"].shape[0] < min_batch:
            continue
        images, labels = to_device(batch, ctx.device, ctx.channels_last)
        if objective is None:
            with autocast_for(ctx.device, ctx.amp):
                logits = model(images)
            loss = classification_loss(logits, labels, ctx)
        else:
            loss, logits = objective.loss(model, images, labels, step, ctx)
        if ctx.extra_loss is not None:
            loss = loss + ctx.extra_loss()
        optimizer_step(ctx, loss, step)
        if objective is not None:
            objective.after_step()
        step += 1
        n = labels.numel()
        total_loss += float(loss.detach()) * n
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += n
        if on_batch is not None:
            on_batch(float(loss.detach()))
    out = {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "steps": step - start_step, "seen": seen}
    return out if objective is None else {**out, **objective.epoch_record()}
