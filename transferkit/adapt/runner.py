"""The Adapter: source-only baseline, then the chosen adaptation, then both evaluated side by side.

Flow (every method): scan the labelled source folder (the engine's split) and the target folder (as
unlabelled images), train the source-only baseline with the engine's plan/optimizer/loop, save it as
``baseline.safetensors``, adapt (AdaBN, CORAL or DANN; nothing for ``source-only``), save the adapted
model as ``model.safetensors`` (so ``predict``/``evaluate`` work on the run folder), evaluate both on the
source splits and, when given, the labelled target folder, and draw the feature projection.

Source data roles (:func:`transferkit.data.datasets.prepare_data`): ``train`` fits both phases; the
``selection`` split is scored after every epoch for metrics.jsonl (adapt trains a fixed budget and keeps
the last epoch of each phase, so nothing is chosen on it; ``engine.select last`` drops it and trains on
those images too); the source ``test`` split is only reported. The target folder's labels are never read;
the labelled target folder is read only by the evaluation.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from transferkit.adapt.bn import adabn
from transferkit.adapt.config import AdaptCfg
from transferkit.adapt.data import cycle_batches, labelled_eval_samples, unlabelled_samples
from transferkit.adapt.layers import DomainDiscriminator, dann_lr_factor
from transferkit.adapt.loop import JointSpec, joint_epoch
from transferkit.adapt.results import BASELINE_FILE, evaluate_models, write_results
from transferkit.config import RunCfg, config_to_dict
from transferkit.data.datasets import ImageDataset, make_loader, prepare_data
from transferkit.data.transforms import eval_transform, resize_size, train_transform
from transferkit.engine.loop import StepContext, pick_device, predict_loader, train_one_epoch
from transferkit.engine.progress import Reporter
from transferkit.engine.trainer import RunResult, default_run_dir, seed_everything
from transferkit.errors import ConfigError, StrategyError
from transferkit.export.runfiles import load_run, save_model
from transferkit.fileio import append_jsonl, write_json, write_text
from transferkit.metrics.classification import summary_metrics
from transferkit.models.backbones import resolve_spec
from transferkit.models.transfer import build_model
from transferkit.strategy.optim import apply_plan, build_optimizer, count_parameters, index_groups, lr_factor, set_learning_rates
from transferkit.strategy.plan import Plan, make_plan

__all__ = ["Adapter", "BASELINE_FILE"]



def _epoch_seed(seed: int, epoch: int) -> int:
    """Dropout/augmentation randomness per epoch: a pure function of (seed, epoch), as the trainer's."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63)


class Adapter:
    """Runs one adaptation end to end: ``Adapter(cfg, acfg).fit()`` -> RunResult.

    Args:
        cfg: the shared run configuration; ``data.path`` is the labelled source folder and
            ``engine.epochs`` the source-only baseline's epochs.
        acfg: the adaptation settings (target folder, method, ...).
        run_dir: the run folder (default ``cfg.out`` or ``runs/<time>-adapt-<method>``).
        quiet: no console output.
        baseline_from: an earlier ``adapt`` run folder whose source-only baseline (same source, split,
            backbone and seed) is reused instead of training it again.
    """

    def __init__(self, cfg: RunCfg, acfg: AdaptCfg, run_dir: str | Path | None = None, quiet: bool = False,
                 baseline_from: str | Path | None = None) -> None:
        if not cfg.data.path:
            raise ConfigError("no source folder given; pass --source FOLDER (labelled class sub-folders)")
        if not acfg.target:
            raise ConfigError("no target folder given; pass --target FOLDER (unlabelled target-domain images)")
        if cfg.strategy.name == "auto":
            raise ConfigError("adapt needs an explicit strategy (e.g. finetune); 'auto' is for train")
        if cfg.strategy.l2sp:
            raise ConfigError("adapt does not support strategy.l2sp (the pull toward the pretrained weights); set it to 0")
        if acfg.method in ("dann", "coral") and cfg.strategy.name == "feature-extraction":
            raise StrategyError(
                f"--method {acfg.method} adapts the backbone's features, but feature-extraction freezes the backbone; "
                "use --strategy finetune (or partial), or --method adabn"
            )
        self.cfg, self.acfg = cfg, acfg
        self.run_dir = Path(run_dir or cfg.out or default_run_dir(f"adapt-{acfg.method}"))
        self.reporter = Reporter(quiet=quiet)
        self.device = pick_device(cfg.engine.device)
        self.baseline_from = None if baseline_from is None else Path(baseline_from)
        self.skipped: dict[str, str] = {}
        self.step = 0
        self.epoch = 0
        self.adabn_images = 0  # target images the final BatchNorm statistics come from (0: AdaBN not applied)

    # --- set-up -------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.engine.seed)
        self.spec = resolve_spec(cfg.model.backbone, cfg.model.weights).with_input_size(
            cfg.model.input_size).with_normalization(cfg.model.mean, cfg.model.std)
        draft = resize_size(self.spec)
        self.data = prepare_data(cfg.data, draft_size=draft, select=cfg.engine.select)
        self.target, target_skipped = unlabelled_samples(self.acfg.target, draft, check=cfg.data.validate)
        self.eval_samples: list = []
        eval_skipped: list = []
        if self.acfg.target_eval:
            self.eval_samples, eval_skipped = labelled_eval_samples(self.acfg.target_eval, self.data.classes, draft)
        for path, reason in list(self.data.skipped) + target_skipped + eval_skipped:
            self.skipped[path] = reason
        self.model = build_model(self.spec, len(self.data.classes), head=cfg.model.head, hidden=cfg.model.head_hidden,
                                 dropout=cfg.model.dropout, pretrained=cfg.model.pretrained and cfg.strategy.name != "scratch",
                                 weights=None if cfg.strategy.name == "scratch" else cfg.model.weights).to(self.device)
        if cfg.engine.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.index = index_groups(self.model)
        self.plan = make_plan(cfg.strategy, self.index.names[:-1], cfg.engine.epochs)
        self.steps_per_epoch = max(1, math.ceil(len(self.data.train) / cfg.engine.batch_size))

    def _write_header(self) -> None:
        run = self.run_dir
        if (run / "summary.json").exists():
            raise ConfigError(f"{run} already holds a finished run; choose another --out or delete it")
        run.mkdir(parents=True, exist_ok=True)
        write_text(run / "config.yaml", yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
        write_text(run / "adapt.yaml", yaml.safe_dump(self.acfg.to_dict(), sort_keys=False))
        write_json(run / "classes.json", self.data.classes)
        split = self.data.split_record()
        split["target"] = [s.path for s in self.target]  # paths only: the target's labels are not read
        split["target_eval"] = [[s.path, s.label] for s in self.eval_samples]
        write_json(run / "split.json", split)
        write_json(run / "plan.json", self.plan.to_dict())
        write_json(run / "backbone.json", self.spec.to_dict())

    def _head_meta(self) -> dict[str, Any]:
        m = self.cfg.model
        return {"kind": m.head, "hidden": m.head_hidden, "dropout": m.dropout}

    def _on_failed(self, dataset: ImageDataset):
        def handle(failed: list[tuple[int, str]]) -> None:
            for index, reason in failed:
                self.skipped.setdefault(dataset.samples[index].path, reason)

        return handle

    def _ctx(self, optimizer: torch.optim.Optimizer, base_lr: float, schedule, extra: list[torch.optim.Optimizer] = ()) -> StepContext:
        def set_lr(step: int) -> None:
            factor = schedule(step)
            for opt in (optimizer, *extra):
                set_learning_rates(opt, base_lr, factor)

        e, o = self.cfg.engine, self.cfg.optim
        return StepContext(optimizer=optimizer, set_lr=set_lr, device=self.device, amp=e.amp, channels_last=e.channels_last,
                           grad_clip=o.grad_clip, label_smoothing=o.label_smoothing)

    def _apply_plan(self, plan: Plan, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """The engine's plan, except that under BatchNorm 'train' every BatchNorm layer stays live.

        The engine pins the BatchNorm of frozen layer groups (their statistics never move). For adaptation
        BatchNorm statistics are domain statistics rather than weights: with frozen lower groups they must
        still follow the domain of the batch, or per-domain batches and AdaBN would only reach the top.
        """
        apply_plan(self.model, self.index, optimizer, plan, epoch)
        if plan.bn == "train":
            self.model.pin_batchnorm([])

    def _source_dataset(self) -> ImageDataset:
        return ImageDataset(self.data.train, train_transform(self.spec, self.cfg.data.augment), resize_size(self.spec))

    def _selection_metrics(self) -> dict[str, Any]:
        """Source selection-split metrics of the current weights, as train's metrics.jsonl has them per epoch
        ({} under ``engine.select last``: there is no selection split). Logged only; nothing is chosen on them."""
        if not self.data.selection:
            return {}
        e = self.cfg.engine
        dataset = ImageDataset(self.data.selection, eval_transform(self.spec), resize_size(self.spec))
        out = predict_loader(self.model, make_loader(dataset, e.batch_size * 2, False, 0, 0, self.cfg.data.workers),
                             self.device, e.amp, e.channels_last, self._on_failed(dataset))
        return {f"selection_{k}": v for k, v in summary_metrics(out["labels"], out["outputs"], len(self.data.classes)).items()}

    def _log(self, record: dict[str, Any]) -> None:
        record.update(self._selection_metrics())
        append_jsonl(self.run_dir / "metrics.jsonl", record)
        quiet_keys = ("time_s", "selection_balanced_accuracy", "selection_macro_f1", "selection_roc_auc")
        parts = [f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float) and k not in quiet_keys]
        self.reporter.say(f"[{record['phase']}] epoch {record['epoch']}: " + "  ".join(parts) + f"  {record['time_s']:.0f}s")

    # --- phases --------------------------------------------------------------------------------

    def _train_baseline(self) -> None:
        """Source-only training with the engine's loop, schedule and plan (or reuse an earlier baseline)."""
        if self.baseline_from is not None:
            self._load_baseline()
            return
        cfg = self.cfg
        optimizer = build_optimizer(self.index, cfg.optim, backbone_weight_decay=None)
        total = self.steps_per_epoch * cfg.engine.epochs
        warmup = int(round(cfg.optim.lr_warmup_epochs * self.steps_per_epoch))
        ctx = self._ctx(optimizer, cfg.optim.lr, lambda s: lr_factor(s, total, warmup, cfg.optim.min_lr_ratio))
        dataset = self._source_dataset()
        for epoch in range(cfg.engine.epochs):
            tick = time.perf_counter()
            self._apply_plan(self.plan, optimizer, epoch)
            torch.manual_seed(_epoch_seed(cfg.engine.seed, epoch))
            loader = make_loader(dataset, cfg.engine.batch_size, True, cfg.engine.seed, epoch, cfg.data.workers)
            with self.reporter.epoch_bar(epoch, cfg.engine.epochs, len(loader)) as advance:
                out = train_one_epoch(self.model, loader, ctx, self.step, self._on_failed(dataset), advance)
            self.step += out["steps"]
            self.epoch += 1
            self._log({"phase": "source-only", "epoch": self.epoch, "train_loss": out["loss"],
                       "train_accuracy": out["accuracy"], "time_s": time.perf_counter() - tick})
        save_model(self.run_dir, self.model, self.data.classes, self._head_meta(), name=BASELINE_FILE)

    def _load_baseline(self) -> None:
        other = load_run(self.baseline_from, weights_name=BASELINE_FILE)
        if other.classes != self.data.classes or other.spec.input_size != self.spec.input_size or other.spec.arch != self.spec.arch:
            raise ConfigError(
                f"--baseline-from {self.baseline_from}: its baseline ({other.spec.name}, {other.spec.input_size}px, "
                f"classes {other.classes}) does not match this run ({self.spec.name}, {self.spec.input_size}px, "
                f"classes {self.data.classes}); train the baseline here instead"
            )
        self.model.load_state_dict(other.model.state_dict())
        save_model(self.run_dir, self.model, self.data.classes, self._head_meta(), name=BASELINE_FILE)
        self.reporter.say(f"source-only baseline reused from {self.baseline_from}")

    def _target_dataset(self, train: bool) -> ImageDataset:
        """Unlabelled target images: augmented like the source for training, plain for AdaBN."""
        limit = self.acfg.adabn_images or len(self.target)
        transform = train_transform(self.spec, self.cfg.data.augment) if train else eval_transform(self.spec)
        return ImageDataset(self.target if train else self.target[:limit], transform, resize_size(self.spec))

    def _adabn(self) -> int:
        """Re-estimate BatchNorm statistics on the (un-augmented) unlabelled target images."""
        e = self.cfg.engine
        dataset = self._target_dataset(train=False)
        loader = make_loader(dataset, e.batch_size * 2, False, e.seed, 0, self.cfg.data.workers)
        n = adabn(self.model, loader, self.device, e.channels_last)
        self.reporter.say(f"AdaBN: BatchNorm statistics re-estimated on {n} target images")
        return n

    def _adapt_plan(self) -> Plan:
        """Warm start: the baseline's last row for every adaptation epoch; cold start: the strategy's plan."""
        epochs = self.acfg.epochs
        if not self.acfg.warm_start:
            return make_plan(self.cfg.strategy, self.index.names[:-1], epochs)
        return Plan(self.plan.strategy, self.plan.groups, (self.plan.scales[-1],) * epochs, self.plan.bn, self.plan.pretrained)

    def _joint_setup(self) -> tuple[JointSpec, torch.optim.Optimizer, StepContext]:
        """Fresh optimizer(s) for the adaptation phase, the discriminator (DANN) and the LR schedule.

        Schedule ``dann``: mu_p = mu_0 / (1 + 10 p) ** 0.75 over the phase's progress p (Ganin et al.; AdamW
        instead of their SGD with momentum, as everywhere in the engine); ``cosine``: the engine's decay.
        The discriminator has its own AdamW on the same schedule, at ``disc_lr_scale`` x the head's rate.
        """
        cfg, acfg = self.cfg, self.acfg
        optimizer = build_optimizer(self.index, cfg.optim)
        first, phase_steps = self.step, self.steps_per_epoch * acfg.epochs
        spec = JointSpec(acfg.method, first, phase_steps, acfg.per_domain_bn, acfg.lambda_max, acfg.coral_weight)
        extra: list[torch.optim.Optimizer] = []
        lr = acfg.lr or cfg.optim.lr
        if acfg.method == "dann":
            spec.discriminator = DomainDiscriminator(self.spec.feature_dim, acfg.disc_hidden, acfg.disc_layers,
                                                     acfg.disc_dropout).to(self.device)
            spec.disc_optimizer = torch.optim.AdamW(
                [{"params": list(spec.discriminator.parameters()), "lr_scale": acfg.disc_lr_scale}],
                lr=lr, weight_decay=cfg.optim.weight_decay)
            extra.append(spec.disc_optimizer)
        if acfg.lr_schedule == "dann":
            schedule = lambda s: dann_lr_factor((s - first) / phase_steps)  # noqa: E731
        else:
            schedule = lambda s: lr_factor(s - first, phase_steps, 0, cfg.optim.min_lr_ratio)  # noqa: E731
        return spec, optimizer, self._ctx(optimizer, lr, schedule, extra)

    def _train_joint(self) -> None:
        """CORAL or DANN on balanced source + target batches (one target batch per source batch)."""
        cfg, acfg = self.cfg, self.acfg
        if not acfg.warm_start:
            fresh = build_model(self.spec, len(self.data.classes), head=cfg.model.head, hidden=cfg.model.head_hidden,
                                dropout=cfg.model.dropout, pretrained=cfg.model.pretrained, weights=cfg.model.weights)
            self.model.load_state_dict(fresh.state_dict())
        plan = self._adapt_plan()
        spec, optimizer, ctx = self._joint_setup()
        source = self._source_dataset()
        target = cycle_batches(self._target_dataset(train=True), cfg.engine.batch_size, cfg.engine.seed * 7 + 1, 0,
                               cfg.data.workers)
        for epoch in range(acfg.epochs):
            tick = time.perf_counter()
            self._apply_plan(plan, optimizer, epoch)
            torch.manual_seed(_epoch_seed(cfg.engine.seed, self.epoch))
            loader = make_loader(source, cfg.engine.batch_size, True, cfg.engine.seed, self.epoch, cfg.data.workers)
            with self.reporter.epoch_bar(epoch, acfg.epochs, len(loader)) as advance:
                out = joint_epoch(self.model, loader, target, ctx, spec, self.step, self._on_failed(source), advance)
            self.step += out["steps"]
            self.epoch += 1
            head_lr = next(g["lr"] for g in optimizer.param_groups if g["layer_group"] == "head")
            self._log({"phase": acfg.method, "epoch": self.epoch, "train_loss": out["loss"], "train_accuracy": out["accuracy"],
                       "adapt_loss": out["adapt_loss"], "domain_accuracy": out["domain_accuracy"], "lambda": out["lambda"],
                       "lr_head": head_lr, "time_s": time.perf_counter() - tick})

    # --- the whole run -------------------------------------------------------------------------

    def fit(self) -> RunResult:
        """Baseline, adaptation, evaluation, figures; returns the run folder and its summary."""
        started = time.perf_counter()
        self._setup()
        self._write_header()
        trainable, total = count_parameters(self.index, self.plan)
        d = self.data
        self.reporter.say(f"source: {len(d.train)} train / {len(d.selection)} selection / {len(d.test)} test, {len(d.classes)} classes; "
                          f"target: {len(self.target)} unlabelled images; method {self.acfg.method}; run folder {self.run_dir}")
        self._train_baseline()
        baseline_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.acfg.method in ("coral", "dann"):
            self._train_joint()
        after = self.plan.bn == "train" if self.acfg.adabn is None else self.acfg.adabn
        if self.acfg.method == "adabn" or (self.acfg.method in ("coral", "dann") and after):
            self.adabn_images = self._adabn()
        save_model(self.run_dir, self.model, self.data.classes, self._head_meta())
        results = evaluate_models(self, baseline_state)
        summary = write_results(self, results, trainable, total, time.perf_counter() - started)
        return RunResult(self.run_dir, summary)
