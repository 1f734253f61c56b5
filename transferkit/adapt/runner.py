"""Domain adaptation as a hook on the engine's one Trainer: source-only baseline, then the adaptation.

Flow (every method), all in one :class:`~transferkit.engine.trainer.Trainer` run: the trainer scans the
labelled source folder (its split), builds the model, plan and optimizer and runs the epoch loop;
:class:`AdaptHook` adds the target folder (as unlabelled images), appends the adaptation epochs (CORAL or
DANN) to the plan, gives those epochs their joint step objective (:mod:`transferkit.adapt.objective`), a
fresh optimizer and their own learning-rate schedule, saves the source-only weights as
``baseline.safetensors`` when the baseline phase ends, and at the end applies AdaBN where asked, saves
``model.safetensors`` and evaluates both models side by side (:mod:`transferkit.adapt.results`). So an
adapt run has the trainer's checkpoints and resume (``Trainer.resume(run_dir)``), data roles and run folder.

Source data roles (:func:`transferkit.data.datasets.prepare_data`): ``train`` fits both phases; the
``selection`` split is scored after every epoch for metrics.jsonl (adapt trains a fixed budget and keeps
the last epoch of each phase, so nothing is chosen on it; ``engine.select last`` drops it and trains on
those images too); the source ``test`` split is only reported. The target folder's labels are never read;
the labelled target folder is read only by the evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import yaml

from transferkit.adapt.bn import adabn
from transferkit.adapt.config import AdaptCfg, adapt_cfg_from_dict
from transferkit.adapt.data import cycle_batches, labelled_eval_samples, unlabelled_samples
from transferkit.adapt.layers import DomainDiscriminator, dann_lr_factor
from transferkit.adapt.objective import JointObjective
from transferkit.adapt.results import BASELINE_FILE, evaluate_models, write_results
from transferkit.config import RunCfg
from transferkit.data.datasets import ImageDataset, make_loader
from transferkit.data.transforms import eval_transform, resize_size, train_transform
from transferkit.engine.checkpoint import flatten_optimizer, unflatten_optimizer
from transferkit.engine.hooks import Objective, TrainerHook
from transferkit.engine.trainer import RunResult, Trainer, default_run_dir
from transferkit.errors import ConfigError, StrategyError, TransferKitError
from transferkit.export.runfiles import load_run, save_model
from transferkit.fileio import write_json, write_text
from transferkit.models.transfer import build_model
from transferkit.strategy.optim import apply_plan, build_optimizer, lr_factor, set_learning_rates
from transferkit.strategy.plan import Plan, make_plan

__all__ = ["Adapter", "AdaptHook", "hook_for_run", "BASELINE_FILE"]

JOINT = ("coral", "dann")  # the methods that train on source + target batches


class AdaptHook(TrainerHook):
    """The adaptation phase and the side-by-side evaluation, plugged into the Trainer.

    Args:
        acfg: the adaptation settings (target folder, method, ...).
        baseline_from: an earlier ``adapt`` run folder whose source-only baseline (same source, split,
            backbone and seed) is reused instead of training it again.
    """

    factory = "transferkit.adapt.runner:hook_for_run"  # Trainer.resume rebuilds the hook from the run folder

    def __init__(self, acfg: AdaptCfg, baseline_from: str | Path | None = None) -> None:
        self.acfg = acfg
        self.baseline_from = None if baseline_from is None else Path(baseline_from)
        self.trainer: Trainer | None = None
        self.baseline_epochs = 0  # the plan's source-only epochs; the adaptation epochs follow them
        self.first_step = 0  # global step of the adaptation phase's first step (its schedules start there)
        self.adabn_images = 0  # target images the final BatchNorm statistics come from (0: AdaBN not applied)
        self.discriminator: DomainDiscriminator | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None

    # --- what results.py reads (the trainer's set-up, seen through the hook) -------------------------

    cfg = property(lambda self: self.trainer.cfg)
    spec = property(lambda self: self.trainer.spec)
    data = property(lambda self: self.trainer.data)
    model = property(lambda self: self.trainer.model)
    device = property(lambda self: self.trainer.device)
    run_dir = property(lambda self: self.trainer.run_dir)
    reporter = property(lambda self: self.trainer.reporter)
    run_plan = property(lambda self: self.trainer.plan)  # (``plan`` is the hook's method)

    @property
    def skipped(self) -> dict[str, str]:
        return self.trainer.state.skipped

    @property
    def epoch(self) -> int:
        """Epochs trained in this run (a reused baseline's are not)."""
        return self.trainer.state.epoch - (self.baseline_epochs if self.baseline_from else 0)

    @property
    def fixed_budget(self) -> bool:
        """The baseline keeps its last epoch; so does the adaptation unless ``adapt.select`` is best."""
        just_done = self.trainer.state.epoch - 1 if self.trainer else 0
        return self.acfg.select == "last" or self.acfg.method not in JOINT or just_done < self.baseline_epochs

    @property
    def selected_epoch(self) -> int:
        """The kept epoch (1-based, counted over both phases)."""
        return self.trainer.state.best_epoch + 1 if self.trainer.state.best_epoch >= 0 else self.trainer.state.epoch

    def _on_failed(self, dataset: ImageDataset):
        return self.trainer._failed_handler(dataset)

    # --- set-up ----------------------------------------------------------------------------------

    def plan(self, trainer: Trainer, plan: Plan) -> Plan:
        """The baseline's plan, then the adaptation epochs: warm start repeats its last row, cold start
        runs the strategy's plan again."""
        self.baseline_epochs = len(plan.scales)
        if self.acfg.method not in JOINT:
            return plan
        if self.acfg.warm_start:
            rows = (plan.scales[-1],) * self.acfg.epochs
        else:
            rows = make_plan(trainer.cfg.strategy, trainer.index.names[:-1], self.acfg.epochs).scales
        return Plan(plan.strategy, plan.groups, plan.scales + rows, plan.bn, plan.pretrained)

    def on_setup(self, trainer: Trainer) -> None:
        if trainer.dist.enabled:
            raise ConfigError("adapt runs in one process; start it without torchrun")
        if self.acfg.select == "best" and not trainer.data.selection:
            raise ConfigError("adapt.select best chooses on the source selection split, but engine.select last has "
                              "none; use adapt.select last, or engine.select best")
        self.trainer = trainer
        draft = resize_size(trainer.spec)
        self.target, target_skipped = unlabelled_samples(self.acfg.target, draft, check=trainer.cfg.data.validate)
        self.eval_samples: list = []
        eval_skipped: list = []
        if self.acfg.target_eval:
            self.eval_samples, eval_skipped = labelled_eval_samples(self.acfg.target_eval, trainer.data.classes, draft)
        for path, reason in target_skipped + eval_skipped:
            trainer.state.skipped.setdefault(path, reason)
        if self.acfg.method == "dann":
            self._build_discriminator()
        if self.baseline_from is not None:
            self._load_baseline()
            trainer.state.epoch = self.baseline_epochs  # the baseline's epochs are done (a resume restores its own)

    def _build_discriminator(self) -> None:
        """DANN's domain classifier, initialised from its own seed (the training randomness stays the trainer's)."""
        t, acfg = self.trainer, self.acfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.cfg.engine.seed * 7 + 3)
            self.discriminator = DomainDiscriminator(t.spec.feature_dim, acfg.disc_hidden, acfg.disc_layers,
                                                     acfg.disc_dropout).to(t.device)
        self.disc_optimizer = torch.optim.AdamW(
            [{"params": list(self.discriminator.parameters()), "lr_scale": acfg.disc_lr_scale}],
            lr=acfg.lr or t.cfg.optim.lr, weight_decay=t.cfg.optim.weight_decay)

    def _load_baseline(self) -> None:
        t = self.trainer
        other = load_run(self.baseline_from, weights_name=BASELINE_FILE)
        if other.classes != t.data.classes or other.spec.input_size != t.spec.input_size or other.spec.arch != t.spec.arch:
            raise ConfigError(
                f"--baseline-from {self.baseline_from}: its baseline ({other.spec.name}, {other.spec.input_size}px, "
                f"classes {other.classes}) does not match this run ({t.spec.name}, {t.spec.input_size}px, "
                f"classes {t.data.classes}); train the baseline here instead"
            )
        t.model.load_state_dict(other.model.state_dict())

    def on_header(self, trainer: Trainer) -> None:
        run = trainer.run_dir
        write_text(run / "adapt.yaml", yaml.safe_dump(self.acfg.to_dict(), sort_keys=False))
        split = trainer.data.split_record()
        split["target"] = [s.path for s in self.target]  # paths only: the target's labels are not read
        split["target_eval"] = [[s.path, s.label] for s in self.eval_samples]
        write_json(run / "split.json", split)
        d = trainer.data
        trainer.reporter.say(f"target: {len(self.target)} unlabelled images; method {self.acfg.method}; run folder {run}")
        if self.baseline_from is not None:
            save_model(run, trainer.model, d.classes, trainer._head_meta(), name=BASELINE_FILE)
            trainer.reporter.say(f"source-only baseline reused from {self.baseline_from}")

    # --- the epochs ------------------------------------------------------------------------------

    def _joint(self, epoch: int) -> bool:
        return self.acfg.method in JOINT and epoch >= self.baseline_epochs

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """At the adaptation phase's start: cold start reloads the pretrained model, a fresh optimizer. Under
        BatchNorm 'train' every BatchNorm layer stays live: BatchNorm statistics are domain statistics
        rather than weights, so with frozen lower groups they must still follow the domain of the batch."""
        if epoch == self.baseline_epochs and self._joint(epoch):
            cfg = trainer.cfg
            if not self.acfg.warm_start:
                fresh = build_model(trainer.spec, len(trainer.data.classes), head=cfg.model.head, hidden=cfg.model.head_hidden,
                                    dropout=cfg.model.dropout, pretrained=cfg.model.pretrained, weights=cfg.model.weights)
                trainer.model.load_state_dict(fresh.state_dict())
            trainer.optimizer = build_optimizer(trainer.index, cfg.optim)
            apply_plan(trainer.model, trainer.index, trainer.optimizer, trainer.plan, epoch)
            self.first_step = trainer.state.step
        if trainer.plan.bn == "train":
            trainer.model.pin_batchnorm([])

    def objective(self, trainer: Trainer, epoch: int) -> Objective | None:
        """CORAL / DANN epochs: the joint step, its target batches and the phase's learning-rate schedule.

        Schedule ``dann``: mu_p = mu_0 / (1 + 10 p) ** 0.75 over the phase's progress p (Ganin et al.; AdamW
        instead of their SGD with momentum, as everywhere in the engine); ``cosine``: the engine's decay.
        The discriminator has its own AdamW on the same schedule, at ``disc_lr_scale`` x the head's rate.
        The target batches of each epoch are a pure function of (seed, epoch), so a resumed run sees the same.
        """
        if not self._joint(epoch):
            return None
        cfg, acfg = trainer.cfg, self.acfg
        first, phase_steps = self.first_step, trainer.steps_per_epoch * acfg.epochs
        lr = acfg.lr or cfg.optim.lr
        optimizers = [trainer.optimizer] + ([self.disc_optimizer] if self.disc_optimizer is not None else [])

        def set_lr(step: int) -> None:
            if acfg.lr_schedule == "dann":
                factor = dann_lr_factor((step - first) / phase_steps)
            else:
                factor = lr_factor(step - first, phase_steps, 0, cfg.optim.min_lr_ratio)
            for optimizer in optimizers:
                set_learning_rates(optimizer, lr, factor)

        target_set = self._target_dataset(train=True)
        passes = (epoch - self.baseline_epochs) * 1000  # each epoch's passes over the target: their own shuffles
        target = cycle_batches(target_set, trainer.local_batch, cfg.engine.seed * 7 + 1, passes, cfg.data.workers)
        return JointObjective(acfg.method, target, first, phase_steps, set_lr, acfg.per_domain_bn, acfg.lambda_max,
                              acfg.coral_weight, self.discriminator, self.disc_optimizer)

    def _target_dataset(self, train: bool) -> ImageDataset:
        """Unlabelled target images: augmented like the source for training, plain for AdaBN."""
        t = self.trainer
        limit = self.acfg.adabn_images or len(self.target)
        transform = train_transform(t.spec, t.cfg.data.augment) if train else eval_transform(t.spec)
        return ImageDataset(self.target if train else self.target[:limit], transform, resize_size(t.spec))

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        record["phase"] = self.acfg.method if self._joint(epoch) else "source-only"
        if self._joint(epoch):
            record["lr_head"] = next(g["lr"] for g in trainer.optimizer.param_groups if g["layer_group"] == "head")
        if epoch == self.baseline_epochs - 1:  # the source-only baseline is complete
            save_model(trainer.run_dir, trainer.model, trainer.data.classes, trainer._head_meta(), name=BASELINE_FILE)

    # --- checkpoint ------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        info: dict[str, Any] = {"first_step": self.first_step,
                                "baseline_from": None if self.baseline_from is None else str(self.baseline_from)}
        tensors: dict[str, torch.Tensor] = {}
        if self.discriminator is not None and self.disc_optimizer is not None:
            tensors = {f"disc.{k}": v for k, v in self.discriminator.state_dict().items()}
            opt_tensors, info["disc_optimizer"] = flatten_optimizer(self.disc_optimizer)
            tensors.update({f"disc_opt.{k}": v for k, v in opt_tensors.items()})
        return info, tensors

    def load_state(self, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.first_step = int(info.get("first_step", 0))
        self.baseline_from = None if info.get("baseline_from") is None else Path(info["baseline_from"])
        if self.discriminator is not None and self.disc_optimizer is not None:
            self.discriminator.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
            opt = {k[len("disc_opt."):]: v for k, v in tensors.items() if k.startswith("disc_opt.")}
            self.disc_optimizer.load_state_dict(unflatten_optimizer(opt, info["disc_optimizer"]))

    # --- the end ---------------------------------------------------------------------------------

    def finish(self, trainer: Trainer, started: float, trainable: int, total: int, interrupted: bool) -> RunResult:
        """AdaBN where asked, model.safetensors, both models evaluated, summary.json."""
        if interrupted:
            raise TransferKitError(f"interrupted after epoch {trainer.state.epoch}: continue the run with "
                                   f"transferkit.adapt.resume({str(trainer.run_dir)!r})")
        baseline = load_run(trainer.run_dir, weights_name=BASELINE_FILE, device=str(trainer.device)).model.state_dict()
        if not self.fixed_budget:  # adapt.select best: the chosen adaptation epoch, saved by the trainer
            trainer.model.load_state_dict(load_run(trainer.run_dir, device=str(trainer.device)).model.state_dict())
        after = trainer.plan.bn == "train" if self.acfg.adabn is None else self.acfg.adabn
        if self.acfg.method == "adabn" or (self.acfg.method in JOINT and after):
            self.adabn_images = self._adabn()
        save_model(trainer.run_dir, trainer.model, trainer.data.classes, trainer._head_meta())
        results = evaluate_models(self, baseline)
        summary = write_results(self, results, trainable, total, time.perf_counter() - started)
        return RunResult(trainer.run_dir, summary)

    def _adabn(self) -> int:
        """Re-estimate BatchNorm statistics on the (un-augmented) unlabelled target images."""
        t, e = self.trainer, self.trainer.cfg.engine
        loader = make_loader(self._target_dataset(train=False), e.batch_size * 2, False, e.seed, 0, t.cfg.data.workers)
        n = adabn(t.model, loader, t.device, e.channels_last)
        t.reporter.say(f"AdaBN: BatchNorm statistics re-estimated on {n} target images")
        return n


def hook_for_run(run_dir: Path, cfg: RunCfg) -> AdaptHook:
    """The hook of an adapt run folder (its adapt.yaml), for ``Trainer.resume``."""
    path = Path(run_dir) / "adapt.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} lists the adapt hook but has no adapt.yaml; it cannot be resumed")
    return AdaptHook(adapt_cfg_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}))


def _check(cfg: RunCfg, acfg: AdaptCfg) -> None:
    if not cfg.data.path:
        raise ConfigError("no source folder given; pass --source FOLDER (labelled class sub-folders)")
    if not acfg.target:
        raise ConfigError("no target folder given; pass --target FOLDER (unlabelled target-domain images)")
    if cfg.strategy.name == "auto":
        raise ConfigError("adapt needs an explicit strategy (e.g. finetune); 'auto' is for train")
    if cfg.engine.logit_adjust == "tuned":
        raise ConfigError("adapt does not support engine.logit_adjust tuned (post-hoc logit adjustment is a train "
                          "feature); use --class-weights balanced for imbalanced source classes")
    if cfg.strategy.l2sp:
        raise ConfigError("adapt does not support strategy.l2sp (the pull toward the pretrained weights); set it to 0")
    if acfg.method in JOINT and cfg.strategy.name == "feature-extraction":
        raise StrategyError(
            f"--method {acfg.method} adapts the backbone's features, but feature-extraction freezes the backbone; "
            "use --strategy finetune (or partial), or --method adabn"
        )


class Adapter:
    """One adaptation end to end: ``Adapter(cfg, acfg).fit()`` -> RunResult (a Trainer with an AdaptHook).

    Args:
        cfg: the shared run configuration; ``data.path`` is the labelled source folder and
            ``engine.epochs`` the source-only baseline's epochs.
        acfg: the adaptation settings (target folder, method, ...).
        run_dir: the run folder (default ``cfg.out`` or ``runs/<time>-adapt-<method>``).
        quiet: no console output.
        baseline_from: an earlier ``adapt`` run folder whose source-only baseline is reused.
    """

    def __init__(self, cfg: RunCfg, acfg: AdaptCfg, run_dir: str | Path | None = None, quiet: bool = False,
                 baseline_from: str | Path | None = None) -> None:
        _check(cfg, acfg)
        self.hook = AdaptHook(acfg, baseline_from)
        run = run_dir or cfg.out or default_run_dir(f"adapt-{acfg.method}")
        self.trainer = Trainer(cfg, run_dir=run, quiet=quiet, hooks=[self.hook])

    def fit(self) -> RunResult:
        return self.trainer.fit()
