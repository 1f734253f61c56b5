"""One epoch of joint source + target training (Deep CORAL or DANN), next to the engine's own loops.

Each step takes one labelled source batch and one unlabelled target batch of the same size. With
``per_domain_bn`` the two go through the backbone in separate forward passes, so every BatchNorm layer
normalises each domain with that domain's own batch statistics (Li et al.'s AdaBN argument applied
during training; one concatenated batch would normalise MNIST-like and MNIST-M-like images together).
The optimizer step itself is the engine's :func:`~transferkit.engine.loop.optimizer_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from transferkit.adapt.layers import DomainDiscriminator, coral_loss, dann_lambda, grad_reverse
from transferkit.engine.loop import StepContext, autocast_for, optimizer_step
from transferkit.models.transfer import TransferModel

__all__ = ["JointSpec", "joint_epoch"]


@dataclass
class JointSpec:
    """What the joint loop needs besides the model and the optimizer context."""

    method: str  # "coral" | "dann"
    first_step: int  # global step of this phase's first step (for the schedules)
    phase_steps: int  # total steps of the adaptation phase (progress p = (step - first) / phase_steps)
    per_domain_bn: bool = True
    lambda_max: float = 1.0
    coral_weight: float = 1.0
    discriminator: DomainDiscriminator | None = None
    disc_optimizer: torch.optim.Optimizer | None = None


def _images(batch: dict[str, Any], ctx: StepContext) -> torch.Tensor:
    images = batch["images"].to(ctx.device, non_blocking=True)
    if ctx.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def _features(model: TransferModel, xs: torch.Tensor, xt: torch.Tensor, per_domain: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if per_domain:
        return model.features(xs), model.features(xt)
    both = model.features(torch.cat([xs, xt]))
    return both[: len(xs)], both[len(xs):]


def _domain_loss(spec: JointSpec, fs: torch.Tensor, ft: torch.Tensor, coeff: float) -> tuple[torch.Tensor, float]:
    """BCE of the discriminator on reversed features (source 0, target 1) and its accuracy."""
    assert spec.discriminator is not None
    feats = grad_reverse(torch.cat([fs, ft]).float(), coeff)
    logits = spec.discriminator(feats)
    labels = torch.cat([torch.zeros(len(fs)), torch.ones(len(ft))]).to(logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    accuracy = float(((logits.detach() > 0).float() == labels).float().mean())
    return loss, accuracy


def joint_epoch(
    model: TransferModel,
    source: Iterable[dict[str, Any]],
    target: Iterator[dict[str, Any]],
    ctx: StepContext,
    spec: JointSpec,
    start_step: int,
    on_failed: Callable[[list[tuple[int, str]]], None],
    on_batch: Callable[[float], None] | None = None,
) -> dict[str, float]:
    """One pass over the source batches, each paired with the next target batch.

    Returns the means of the classification loss, source accuracy, the adaptation loss (domain BCE or
    CORAL), the discriminator's accuracy and the last lambda (DANN; None for CORAL), plus steps and samples seen.
    """
    model.train()
    if spec.discriminator is not None:
        spec.discriminator.train()
    step, sums, seen, n_steps = start_step, {"loss": 0.0, "adapt_loss": 0.0, "domain_accuracy": 0.0}, 0, 0
    correct, coeff = 0, 0.0
    for batch in source:
        if batch["failed"]:
            on_failed(batch["failed"])
        if batch["images"] is None or batch["images"].shape[0] < 2:
            continue  # BatchNorm in train mode needs two images per domain
        xs, ys = _images(batch, ctx), batch["labels"].to(ctx.device)
        xt = _images(next(target), ctx)
        progress = (step - spec.first_step) / max(1, spec.phase_steps)
        with autocast_for(ctx.device, ctx.amp):
            fs, ft = _features(model, xs, xt, spec.per_domain_bn)
            logits = model.head(fs)
        loss = F.cross_entropy(logits.float(), ys, label_smoothing=ctx.label_smoothing)
        if spec.method == "dann":
            coeff = dann_lambda(progress, spec.lambda_max)
            adapt_loss, dom_acc = _domain_loss(spec, fs, ft, coeff)
            total = loss + adapt_loss  # the reversal layer applies -coeff to the features' share
        else:
            adapt_loss, dom_acc = coral_loss(fs, ft), 0.0
            total = loss + spec.coral_weight * adapt_loss
        if ctx.extra_loss is not None:
            total = total + ctx.extra_loss()
        optimizer_step(ctx, total, step)
        if spec.disc_optimizer is not None:  # its gradients came from the same backward pass
            spec.disc_optimizer.step()
            spec.disc_optimizer.zero_grad(set_to_none=True)
        step += 1
        n_steps += 1
        seen += len(ys)
        correct += int((logits.detach().argmax(1) == ys).sum())
        for key, value in (("loss", float(loss.detach())), ("adapt_loss", float(adapt_loss.detach())), ("domain_accuracy", dom_acc)):
            sums[key] += value
        if on_batch is not None:
            on_batch(float(total.detach()))
    means: dict[str, Any] = {k: v / max(n_steps, 1) for k, v in sums.items()}
    dann = spec.method == "dann"
    if not dann:  # no discriminator
        means["domain_accuracy"] = None
    return {**means, "lambda": coeff if dann else None, "accuracy": correct / max(seen, 1), "steps": n_steps, "seen": seen}
