"""The joint source + target step of Deep CORAL and DANN, as an objective of the engine's one epoch loop.

Each step takes the labelled source batch the trainer's loop hands over and the next unlabelled target
batch of the same size. With ``per_domain_bn`` the two go through the backbone in separate forward
passes, so every BatchNorm layer normalises each domain with that domain's own batch statistics (Li et
al.'s AdaBN argument applied during training; one concatenated batch would normalise MNIST-like and
MNIST-M-like images together). The loop, the optimizer step and the bookkeeping are the engine's
(:func:`~transferkit.engine.loop.train_one_epoch`); this module only says what a step minimises.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from transferkit.adapt.layers import DomainDiscriminator, coral_loss, dann_lambda, grad_reverse
from transferkit.engine.hooks import Objective
from transferkit.engine.loop import StepContext, autocast_for, classification_loss
from transferkit.models.transfer import TransferModel

__all__ = ["JointObjective"]


def _features(model: TransferModel, xs: torch.Tensor, xt: torch.Tensor, per_domain: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if per_domain:
        return model.features(xs), model.features(xt)
    both = model.features(torch.cat([xs, xt]))
    return both[: len(xs)], both[len(xs):]


class JointObjective(Objective):
    """Cross-entropy on the source batch + the adaptation loss (CORAL, or DANN's reversed domain BCE).

    Args:
        method: "coral" | "dann".
        target: endless unlabelled target batches (one is drawn per step).
        first_step: global step of the adaptation phase's first step; ``phase_steps``: its length
            (progress p = (step - first_step) / phase_steps drives DANN's lambda).
        set_lr: step -> learning rates of the model's and the discriminator's optimizers.
        discriminator, disc_optimizer: DANN's domain classifier and its optimizer (None for CORAL).
    """

    min_batch = 2  # BatchNorm in train mode needs two images per domain

    def __init__(self, method: str, target: Iterator[dict[str, Any]], first_step: int, phase_steps: int,
                 set_lr: Callable[[int], None], per_domain_bn: bool = True, lambda_max: float = 1.0,
                 coral_weight: float = 1.0, discriminator: DomainDiscriminator | None = None,
                 disc_optimizer: torch.optim.Optimizer | None = None) -> None:
        self.method, self.target, self.first_step, self.phase_steps = method, target, first_step, phase_steps
        self.set_lr, self.per_domain_bn = set_lr, per_domain_bn
        self.lambda_max, self.coral_weight = lambda_max, coral_weight
        self.discriminator, self.disc_optimizer = discriminator, disc_optimizer
        if discriminator is not None:
            discriminator.train()
        self.sums = {"loss": 0.0, "adapt_loss": 0.0, "domain_accuracy": 0.0}
        self.steps, self.coeff = 0, 0.0

    def _domain_loss(self, fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, float]:
        """BCE of the discriminator on reversed features (source 0, target 1) and its accuracy."""
        assert self.discriminator is not None
        feats = grad_reverse(torch.cat([fs, ft]).float(), self.coeff)
        logits = self.discriminator(feats)
        labels = torch.cat([torch.zeros(len(fs)), torch.ones(len(ft))]).to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        return loss, float(((logits.detach() > 0).float() == labels).float().mean())

    def loss(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int,
             ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        xt = next(self.target)["images"].to(ctx.device, non_blocking=True)
        if ctx.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with autocast_for(ctx.device, ctx.amp):
            fs, ft = _features(model, images, xt, self.per_domain_bn)  # type: ignore[arg-type]
            logits = model.head(fs)  # type: ignore[union-attr]
        loss = classification_loss(logits, labels, ctx)  # the run's class weights, as in the baseline epochs
        if self.method == "dann":
            self.coeff = dann_lambda((step - self.first_step) / max(1, self.phase_steps), self.lambda_max)
            adapt_loss, dom_acc = self._domain_loss(fs, ft)
            total = loss + adapt_loss  # the reversal layer applies -coeff to the features' share
        else:
            adapt_loss, dom_acc = coral_loss(fs, ft), 0.0
            total = loss + self.coral_weight * adapt_loss
        self.steps += 1
        for key, value in (("loss", float(loss.detach())), ("adapt_loss", float(adapt_loss.detach())), ("domain_accuracy", dom_acc)):
            self.sums[key] += value
        return total, logits

    def after_step(self) -> None:
        if self.disc_optimizer is not None:  # its gradients came from the same backward pass
            self.disc_optimizer.step()
            self.disc_optimizer.zero_grad(set_to_none=True)

    def epoch_record(self) -> dict[str, Any]:
        """Means over the epoch's steps: classification loss (as train_loss), adaptation loss, the
        discriminator's accuracy and the last lambda (both None for CORAL)."""
        means = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        dann = self.method == "dann"
        return {"train_loss": means["loss"], "adapt_loss": means["adapt_loss"],
                "domain_accuracy": means["domain_accuracy"] if dann else None, "lambda": self.coeff if dann else None}
