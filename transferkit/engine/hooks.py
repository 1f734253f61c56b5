"""How other packages plug into the one Trainer without a second epoch loop.

Two small objects, both optional:

- :class:`Objective`: what one optimisation step minimises, given the labelled batch. The engine's
  :func:`~transferkit.engine.loop.train_one_epoch` calls it in place of plain cross-entropy (e.g. the
  domain-adaptation losses of ``transferkit.adapt``, which pair each source batch with a target batch).
- :class:`TrainerHook`: called by :class:`~transferkit.engine.trainer.Trainer` at fixed points
  (set-up, run header, each epoch's start and end, the checkpoint, the end of fit). Every method is a
  no-op by default. A hook that must survive ``Trainer.resume`` names a ``factory`` ("module:function",
  inside ``transferkit``) that rebuilds it from the run folder; the engine imports it by name, so the
  engine never imports the packages that plug into it.

The trainer keeps set-up, the epoch loop, selection, checkpoints, resume and the run folder.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.strategy.plan import Plan

# the trainer, its RunResult and the loop's StepContext are passed in, never imported: they import this module
Trainer = Any
RunResult = Any
StepContext = Any

__all__ = ["Objective", "TrainerHook", "HOOKS_FILE", "hooks_of_run"]

HOOKS_FILE = "hooks.json"  # the run folder's record of the hooks to rebuild on resume


class Objective:
    """One training step's loss for a labelled batch; the epoch loop owns everything else.

    Attributes:
        min_batch: batches with fewer images are skipped (BatchNorm in train mode needs two).
        set_lr: step -> sets the learning rates (None: the trainer's schedule).
    """

    min_batch: int = 1
    set_lr: Callable[[int], None] | None = None

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int,
             ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to minimise, the class logits of ``images``)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """After the shared optimizer step (e.g. step a second optimizer fed by the same backward)."""

    def epoch_record(self) -> dict[str, Any]:
        """Fields for the epoch's metrics.jsonl line (they replace the loop's own of the same name)."""
        return {}


class TrainerHook:
    """A plug-in to the Trainer; override what you need.

    Attributes:
        factory: "transferkit.module:function" taking (run folder, RunCfg) and returning this hook for a
            resumed run; None: the hook is not rebuilt on resume.
        fixed_budget: keep the last epoch (the selection split is still scored and logged, never chosen on).
    """

    factory: str | None = None
    fixed_budget: bool = False

    def plan(self, trainer: Trainer, plan: Plan) -> Plan:
        """The per-epoch plan the trainer runs (e.g. with extra epochs appended); before the optimizer exists."""
        return plan

    def on_setup(self, trainer: Trainer) -> None:
        """After the trainer's set-up (data, model, optimizer), before a checkpoint is restored."""

    def on_header(self, trainer: Trainer) -> None:
        """A fresh run's folder was just created and its header written; add files to it."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """After the epoch's plan was applied, before its batches."""

    def objective(self, trainer: Trainer, epoch: int) -> Objective | None:
        """The step objective of ``epoch`` (None: cross-entropy on the labelled batch)."""
        return None

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """The epoch's record, before it is logged and the checkpoint written (it may add fields)."""

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON info, tensors) saved with every checkpoint, given back to :meth:`load_state` on resume."""
        return {}, {}

    def load_state(self, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned."""

    def finish(self, trainer: Trainer, started: float, trainable: int, total: int,
               interrupted: bool) -> RunResult | None:
        """Write the run's results instead of the trainer (None: the trainer evaluates and writes them)."""
        return None


def hooks_of_run(run: Path, cfg: Any) -> list[TrainerHook]:
    """The hooks a run folder was started with (its hooks.json), rebuilt by their factories for resume."""
    path = Path(run) / HOOKS_FILE
    if not path.is_file():
        return []
    hooks = []
    for factory in json.loads(path.read_text(encoding="utf-8")):
        module, _, name = str(factory).partition(":")
        if not module.startswith("transferkit.") or not name:
            raise ConfigError(f"{path}: {factory!r} is not a transferkit hook factory ('transferkit.module:function')")
        hooks.append(getattr(importlib.import_module(module), name)(run, cfg))
    return hooks
