"""The Trainer: config in, run folder out. Wires data -> model -> plan -> loops -> metrics -> files."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml

from transferkit.config import RunCfg, config_from_dict, config_to_dict
from transferkit.data.datasets import DataSplits, ImageDataset, cpu_plan, make_loader, prepare_data, torch_threads
from transferkit.data.transforms import augment_seed, eval_transform, resize_size, train_transform
from transferkit.data.gpu import EncodedDataset, GpuPreprocessor, collate_encoded
from transferkit.engine import distributed as ddp
from transferkit.engine.hooks import HOOKS_FILE, TrainerHook, hooks_of_run
from transferkit.engine.checkpoint import (
    RunState, load_training_state, prepare_fresh_run, save_training_state, verify_split,
)
from transferkit.data.balance import class_weights, measure_balance, resolve_balancing
from transferkit.engine.balancing import choose_tau, fold_into_head
from transferkit.engine.calibration import fit_calibration, fits_temperature, temperature_of, tempered, test_calibration
from transferkit.engine.l2sp import L2SP
from transferkit.engine.loop import StepContext, pick_device, predict_loader, train_one_epoch
from transferkit.engine.oom import oom_guard
from transferkit.engine.progress import Reporter
from transferkit.engine.seen import SEEN_FILE, seen_record
from transferkit.engine.summary import run_summary
from transferkit.errors import ConfigError, TransferKitError
from transferkit.export.runfiles import record_in_head, save_model
from transferkit.features.headfit import CachedHead
from transferkit.fileio import append_jsonl, write_json, write_text
from transferkit.metrics.classification import detailed_metrics, summary_metrics
from transferkit.models.backbones import BackboneSpec, resolve_spec
from transferkit.models.transfer import TransferModel, build_model
from transferkit.models.runtime import prediction_rows
from transferkit.strategy.optim import (
    GroupIndex,
    apply_plan,
    build_optimizer,
    count_parameters,
    index_groups,
    lr_factor,
    set_learning_rates,
)
from transferkit.strategy.plan import AUTO, Plan, check_strategy_name, make_plan, uses_pretrained

__all__ = ["Trainer", "RunResult", "seed_everything", "default_run_dir"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def default_run_dir(strategy: str) -> Path:
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{strategy}"


def _epoch_seed(seed: int, epoch: int) -> int:
    """Dropout / main-process augmentation randomness: a pure function of (seed, epoch) for resume."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63)


class _Mapped:
    """A loader whose batches pass through ``fn`` (the GPU preprocessor); keeps len() for the progress bar."""

    def __init__(self, loader, fn) -> None:
        self.loader, self.fn = loader, fn

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return (self.fn(batch) for batch in self.loader)


# settings added after runs were written: a config.yaml without them resumes as it was trained
_LEGACY = {"data": {"min_per_class": 1, "sampler": "none"}, "optim": {"class_weights": "none"},
           "engine": {"logit_adjust": "none", "calibrate": "none"}}


def _legacy_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for section, values in _LEGACY.items():
        if isinstance(out.get(section), dict):
            for key, value in values.items():
                out[section].setdefault(key, value)
    return out


class Trainer:
    """Runs one configuration end to end. ``Trainer(cfg).fit()`` or ``Trainer.resume(run_dir).fit()``."""

    def __init__(self, cfg: RunCfg, run_dir: str | Path | None = None, quiet: bool = False,
                 after_fit: Sequence[Callable[[Path, torch.nn.Module], None]] = (),
                 hooks: Sequence[TrainerHook] = ()) -> None:
        """``after_fit``: called on the main process with (run folder, selected model) once summary.json is
        written; transferkit.workflow passes the report writer (the engine never imports the report stack).
        ``hooks``: plug-ins (:mod:`transferkit.engine.hooks`), e.g. transferkit.adapt's domain adaptation."""
        if cfg.strategy.name == AUTO:
            raise ConfigError("strategy 'auto' must be resolved by the recommender before training (use transferkit.train)")
        check_strategy_name(cfg.strategy.name)  # the strategy registry, before anything is loaded
        if not cfg.data.path:
            raise ConfigError("no data folder given; pass DATA (a folder of class sub-folders)")
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.out or default_run_dir(cfg.strategy.name))
        self.dist, dist_device = ddp.setup_distributed(cfg.engine.device)  # torchrun sets the environment
        self.device = dist_device or pick_device(cfg.engine.device)
        self.cpu = cpu_plan(cfg.data.workers, accelerator=self.device.type != "cpu")  # shown in the run header
        self.reporter = Reporter(quiet=quiet or not self.dist.main)  # one voice under torchrun
        if cfg.engine.batch_size % self.dist.world_size:
            raise ConfigError(f"--batch-size {cfg.engine.batch_size} is the global batch and must divide by the "
                              f"{self.dist.world_size} processes; choose a multiple of {self.dist.world_size}")
        self.local_batch = cfg.engine.batch_size // self.dist.world_size
        self.state = RunState()
        self._resuming = False
        self.after_fit = tuple(after_fit)
        self.hooks = tuple(hooks)

    @classmethod
    def resume(cls, run_dir: str | Path, quiet: bool = False,
               after_fit: Sequence[Callable[[Path, torch.nn.Module], None]] = ()) -> "Trainer":
        run = Path(run_dir)
        cfg_path = run / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"{run} is not a run folder (no config.yaml); pass the --out folder of an earlier run")
        cfg = config_from_dict(_legacy_defaults(yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}))
        trainer = cls(cfg, run_dir=run, quiet=quiet, after_fit=after_fit, hooks=hooks_of_run(run, cfg))
        trainer._resuming = True
        return trainer

    # --- set-up -------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.engine.seed)
        self.spec: BackboneSpec = resolve_spec(cfg.model.backbone, cfg.model.weights).with_input_size(
            cfg.model.input_size).with_normalization(cfg.model.mean, cfg.model.std)
        self.data: DataSplits = prepare_data(cfg.data, draft_size=resize_size(self.spec), select=cfg.engine.select)
        self.balance = measure_balance(self.data.classes, {"train": self.data.train, "selection": self.data.selection,
                                                           "test": self.data.test})
        self.balancing = resolve_balancing(cfg, self.balance)  # monitor, class weights, sampler, logit adjustment
        w = self.balancing.weights
        self.loss_weights = None if w is None else torch.tensor(w, dtype=torch.float32, device=self.device)
        scratch = not uses_pretrained(cfg.strategy.name)  # random initialisation: no pretrained weights
        self.model: TransferModel = build_model(
            self.spec,
            len(self.data.classes),
            head=cfg.model.head,
            hidden=cfg.model.head_hidden,
            dropout=cfg.model.dropout,
            pretrained=cfg.model.pretrained and not scratch,
            weights=None if scratch else cfg.model.weights,
        ).to(self.device)
        if cfg.engine.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.index: GroupIndex = index_groups(self.model)
        self.plan: Plan = make_plan(cfg.strategy, self.index.names[:-1], cfg.engine.epochs)
        for hook in self.hooks:
            self.plan = hook.plan(self, self.plan)
        self.epochs = len(self.plan.scales)  # engine.epochs, unless a hook appends a phase
        bn_trains = self.plan.bn == "train" and any(self.index.batchnorms.get(g) for g in self.plan.ever_trainable())
        self.sync_bn = ddp.use_sync_bn(cfg.engine.sync_bn, self.dist, self.device, bn_trains)
        if self.sync_bn:  # before the optimizer: the conversion replaces the BatchNorm modules
            self.model = ddp.convert_sync_batchnorm(self.model)
            self.index = index_groups(self.model)
        self.optimizer = build_optimizer(self.index, cfg.optim, backbone_weight_decay=0.0 if cfg.strategy.l2sp else None)
        per_rank = math.ceil(len(self.data.train) / self.dist.world_size)  # DistributedSampler pads to this
        self.steps_per_epoch = max(1, math.ceil(per_rank / self.local_batch))
        self.total_steps = self.steps_per_epoch * cfg.engine.epochs
        self.warmup_steps = int(round(cfg.optim.lr_warmup_epochs * self.steps_per_epoch))
        self.l2sp = L2SP.for_run(self.model.backbone, cfg.strategy.l2sp)
        for path, reason in self.data.skipped:
            self.state.skipped[path] = reason
        # frozen backbone: embed each image once and train the head on the embeddings (transferkit.features)
        # (under torchrun the plain path is used: head training on embeddings takes seconds on one device)
        self.cached = None if self.dist.enabled else CachedHead.for_run(
            cfg, self.plan, self.model, self.device, self.data, self.reporter.say, self._skip)
        ever = set(self.plan.ever_trainable())
        params = {g: [p for _, p in self.index.params[g]] for g in self.index.names}
        self.train_model = ddp.wrap_for_training(
            self.model, [p for g in ever for p in params[g]], [p for g in params if g not in ever for p in params[g]],
            self.dist, self.device, cfg.engine.compile)
        for hook in self.hooks:
            hook.on_setup(self)

    def _uses_cache(self, epoch: int) -> bool:
        return self.cached is not None and self.cached.covers(epoch)

    def _write_run_header(self) -> None:
        run = self.run_dir
        run.mkdir(parents=True, exist_ok=True)
        write_text(run / "config.yaml", yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
        write_json(run / "classes.json", self.data.classes)
        write_json(run / "split.json", self.data.split_record())
        write_json(run / SEEN_FILE, seen_record(self.data))  # evaluate leaves these images out, by content
        write_json(run / "plan.json", self.plan.to_dict())
        write_json(run / "backbone.json", self.spec.to_dict())
        factories = [h.factory for h in self.hooks if h.factory]
        if factories:
            write_json(run / HOOKS_FILE, factories)
        for hook in self.hooks:
            hook.on_header(self)

    # --- the loop -----------------------------------------------------------------------------

    def fit(self) -> RunResult:
        """Train, keep the best epoch's model, evaluate it, and write the run folder."""
        with torch_threads(self.cpu.threads):  # the caller's thread count comes back afterwards
            return self._fit()

    def _fit(self) -> RunResult:
        started = time.perf_counter()
        self._setup()
        if self._resuming:
            self._restore()
        else:
            if (self.run_dir / "summary.json").exists():
                raise ConfigError(f"{self.run_dir} already holds a finished run; choose another --out or delete it")
            if self.dist.main:
                prepare_fresh_run(self.run_dir)  # refuse an unfinished run (resume it); drop leftovers of a dead one
                self._write_run_header()
            ddp.barrier()
        trainable, total = count_parameters(self.index, self.plan)
        self.reporter.header(self, trainable, total)
        interrupted = False
        try:
            with oom_guard(self.cfg.engine.batch_size, "training"):
                while self.state.epoch < self.epochs and not self._early_stop():
                    self._run_epoch(self.state.epoch)
        except KeyboardInterrupt:
            interrupted = True
            self.reporter.say("interrupted: keeping the best checkpoint so far")
        return self._finish(started, trainable, total, interrupted)

    def _run_epoch(self, epoch: int) -> None:
        if self.cached is not None and self.cached.probe and self.cached.covers(epoch):
            return self._fit_probe(epoch)
        cfg, state = self.cfg, self.state
        apply_plan(self.model, self.index, self.optimizer, self.plan, epoch, toggle_requires_grad=not self.dist.enabled)
        for hook in self.hooks:
            hook.on_epoch_start(self, epoch)
        torch.manual_seed(_epoch_seed(cfg.engine.seed, epoch))
        objective = next((o for o in (h.objective(self, epoch) for h in self.hooks) if o is not None), None)
        tick = time.perf_counter()
        if self._uses_cache(epoch):
            model, loader, on_failed = self.model.head, self.cached.train_batches(epoch), self._skip_many
        else:
            loader, on_failed = self._train_loader(epoch)
            model = self.train_model
        ctx = StepContext(
            optimizer=self.optimizer,
            set_lr=objective.set_lr if objective is not None and objective.set_lr else lambda step: set_learning_rates(
                self.optimizer, cfg.optim.lr, lr_factor(step, self.total_steps, self.warmup_steps, cfg.optim.min_lr_ratio)
            ),
            device=self.device,
            amp=cfg.engine.amp,
            channels_last=cfg.engine.channels_last,
            grad_clip=cfg.optim.grad_clip,
            label_smoothing=cfg.optim.label_smoothing,
            class_weights=self.loss_weights,
            extra_loss=self.l2sp.loss if self.l2sp else None,
            drop_grads_of=self._frozen_now(epoch) if self.dist.enabled else [],
        )
        with self.reporter.epoch_bar(epoch, self.epochs, len(loader)) as advance:
            train = train_one_epoch(model, loader, ctx, state.step, on_failed, advance, objective)
        state.step += train["steps"]
        train = self._reduce_train_stats(train)
        chosen = self._score_selection(cached=self._uses_cache(epoch))
        record = {
            "epoch": epoch + 1,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            **{f"selection_{k}": v for k, v in chosen.items()},
            "lr": {g["layer_group"]: g["lr"] for g in self.optimizer.param_groups},
            "trainable_groups": self.plan.trainable_groups(epoch),
            "time_s": time.perf_counter() - tick,
        }
        record.update({k: v for k, v in train.items() if k not in ("loss", "accuracy", "steps", "seen")})
        state.epoch = epoch + 1
        self._track_best(chosen, epoch)
        self._end_epoch(epoch, record)

    def _end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Hooks see the record; it is printed and logged, and the checkpoint committed (rank 0 writes)."""
        for hook in self.hooks:
            hook.on_epoch_end(self, epoch, record)
        self.reporter.epoch_line(record, improved=self.state.best_epoch == epoch, monitor=self.balancing.monitor)
        if self.dist.main:  # only rank 0 writes the run folder
            append_jsonl(self.run_dir / "metrics.jsonl", record)
            save_training_state(self.run_dir, self.model, self.optimizer, self.state.to_info(self._hook_infos()), self._hook_tensors())
        ddp.barrier()

    def _fit_probe(self, epoch: int) -> None:
        """The head-only epochs ``epoch .. frozen_epochs-1`` as one converged linear-probe fit.

        One metrics.jsonl line (numbered with the last epoch it replaces) and one checkpoint, so the
        plan's epoch count, resume and the later phases' learning-rate schedule (the step counter
        advances as if those epochs had run) are those of the epoch-wise run. The L2 strength is
        chosen by its held-out log loss (see transferkit.features.probe.SELECT_BY); the
        monitor that picks epochs is recorded for every candidate and breaks ties. A selection split below
        transferkit.features.probe.CV_BELOW images chooses by cross-validation over train + selection
        instead (the fold scores go into head_fit); the line printed says which, and whether the fit converged.
        """
        state, done = self.state, self.cached.frozen_epochs
        apply_plan(self.model, self.index, self.optimizer, self.plan, epoch, toggle_requires_grad=not self.dist.enabled)
        tick = time.perf_counter()
        selection = self.data.selection  # the split that chooses (epoch, L2 strength); a test split never does
        # refitted on train + selection once the strength is chosen, unless the selection split still chooses
        # something after the probe (a later phase's epoch, the temperature, tau, a hook); benchmarks/defaults_cv.py
        later = done < self.epochs or bool(self.hooks) or self.balancing.logit_adjust == "tuned" or fits_temperature(
            self.cfg.engine.calibrate, len(selection))
        fit = self.cached.fit_probe(selection, self._selection_score, self._probe_class_weight(), refit_with_selection=not later)
        self.reporter.say(f"head: {fit.describe()} in place of {done - epoch} head-only epoch(s); "
                          "engine.epochs, optim.lr, label smoothing and dropout do not apply to it")
        if fit.refit_on != "train":
            self.reporter.say("the selection figures below are in-sample (the probe was refitted on those images); "
                              "the held-out figures are the fold scores in summary.json's head_fit")
        chosen = self._score_selection(cached=True)
        state.step += self.steps_per_epoch * (done - epoch)
        state.head_fit = {"method": "probe", "replaces_epochs": done - epoch, **fit.record()}
        record = {"epoch": done, "train_loss": fit.train_loss, "train_accuracy": fit.train_accuracy,
                  **{f"selection_{k}": v for k, v in chosen.items()},
                  # frozen groups at rate 0 as in an epoch's line; the head has no learning rate (a solver fitted it)
                  "lr": {g: (0.0 if scale == 0 else None) for g, scale in self.plan.at(epoch).items()},
                  "trainable_groups": self.plan.trainable_groups(epoch),
                  "head_fit": {k: v for k, v in state.head_fit.items() if k != "fit_s"},  # values repeat bit for bit; times do not
                  "time_s": time.perf_counter() - tick,
                  **({"selection_in_sample": True} if fit.refit_on != "train" else {})}
        state.epoch = done
        self._track_best(chosen, done - 1)
        self._end_epoch(done - 1, record)

    def _probe_class_weight(self) -> dict[int, float] | None:
        """The probe's class weights: the run's loss weights; under the balanced sampler (a full-batch fit
        draws no batches) the inverse-frequency weights it equals in expectation."""
        w = self.balancing.weights
        if w is None and self.balancing.sampler == "balanced":
            w = class_weights(self.balance.train, "balanced")
        return None if w is None else {i: float(v) for i, v in enumerate(w)}

    def _selection_score(self, labels: np.ndarray, probs: np.ndarray) -> float:
        """The monitored metric, as _track_best ranks epochs (None counts as 0)."""
        return summary_metrics(labels, probs, len(self.data.classes)).get(self.balancing.monitor) or 0.0

    def _skip(self, path: str, reason: str) -> None:
        if path not in self.state.skipped:
            self.state.skipped[path] = reason
            self.reporter.say(f"skipped {path}: {reason}")

    def _skip_many(self, failed: list[tuple[str, str]]) -> None:
        for path, reason in failed:
            self._skip(path, reason)

    def _failed_handler(self, dataset: ImageDataset):
        return lambda failed: self._skip_many([(dataset.samples[index].path, reason) for index, reason in failed])

    def _gpu_decode(self) -> bool:
        return self.device.type == "cuda" and self.cfg.engine.gpu_decode

    def _loader(self, samples, train: bool, epoch: int):
        """(batches, on_failed): the CPU path (PIL in workers) or the GPU path (bytes -> nvJPEG)."""
        cfg, draft = self.cfg, resize_size(self.spec)
        batch = self.local_batch if train else self.local_batch * 2
        balanced = train and self.balancing.sampler == "balanced"
        common = dict(seed=cfg.engine.seed if train else 0, epoch=epoch if train else 0, workers=self.cpu.workers,
                      rank=self.dist.rank, world_size=self.dist.world_size, pin_memory=self.device.type == "cuda")
        if not self._gpu_decode():
            transform = train_transform(self.spec, cfg.data.augment) if train else eval_transform(self.spec)
            dataset = ImageDataset(samples, transform, draft, augment_seed(cfg.engine.seed, epoch) if train else None)
            return make_loader(dataset, batch, train, balanced=balanced, **common), self._failed_handler(dataset)
        dataset = EncodedDataset(samples, draft)
        loader = make_loader(dataset, batch, train, collate_fn=collate_encoded, balanced=balanced, **common)
        prep = GpuPreprocessor(self.spec, self.device, train, cfg.data.augment, samples,
                               seed=augment_seed(cfg.engine.seed, epoch))
        return _Mapped(loader, prep), self._failed_handler(dataset)

    def _train_loader(self, epoch: int):
        return self._loader(self.data.train, True, epoch)

    def _eval_loader(self, samples):
        return self._loader(samples, False, 0)

    def _frozen_now(self, epoch: int) -> list[torch.nn.Parameter]:
        """Under DDP requires_grad is fixed: parameters of groups frozen this epoch lose their gradient."""
        scales = self.plan.at(epoch)
        return [p for g, params in self.index.params.items() if scales[g] == 0 for _, p in params if p.requires_grad]

    def _reduce_train_stats(self, train: dict[str, float]) -> dict[str, float]:
        """Train loss/accuracy over all ranks' samples (weighted by each rank's count)."""
        if not self.dist.enabled:
            return train
        sums = ddp.all_reduce_sums({"loss": train["loss"] * train["seen"], "correct": train["accuracy"] * train["seen"],
                                    "seen": train["seen"]}, self.device)
        seen = max(sums["seen"], 1.0)
        return {**train, "loss": sums["loss"] / seen, "accuracy": sums["correct"] / seen, "seen": sums["seen"]}

    def _evaluate(self, samples, cached: bool = False) -> dict[str, Any]:
        if cached:
            out = self.cached.predict(samples)
        else:
            loader, on_failed = self._eval_loader(samples)
            with oom_guard(self.cfg.engine.batch_size, "evaluation"):  # eval batches are 2x: halving the flag halves them
                out = ddp.gather_predictions(predict_loader(
                    self.model, loader, self.device, self.cfg.engine.amp, self.cfg.engine.channels_last, on_failed
                ))
        probs, labels = out["outputs"], out["labels"]
        return {"metrics": summary_metrics(labels, probs, len(self.data.classes)), "probs": probs, "labels": labels, "indices": out["indices"]}

    def _score_selection(self, cached: bool) -> dict[str, Any]:
        """The selection split's metrics after an epoch ({} under --select last: there is none).
        The test split is never evaluated here: it is read once, by _finish."""
        return self._evaluate(self.data.selection, cached=cached)["metrics"] if self.data.selection else {}

    def _track_best(self, metrics: dict[str, Any], epoch: int) -> None:
        if self.cfg.engine.select == "last" or any(h.fixed_budget for h in self.hooks):  # the latest epoch is the model
            self.state.best_epoch, self.state.stale = epoch, 0
            if self.dist.main:
                save_model(self.run_dir, self.model, self.data.classes, self._head_meta())
            return
        monitor = self.balancing.monitor
        if monitor not in metrics:
            raise ConfigError(f"engine.monitor {monitor!r} is not a metric; use one of {', '.join(metrics)}")
        key = (metrics[monitor] or 0.0, -(metrics.get("nll") or 0.0))
        if self.state.best_key is None or key > self.state.best_key:
            self.state.best_key, self.state.best_epoch, self.state.stale = key, epoch, 0
            if self.dist.main:
                save_model(self.run_dir, self.model, self.data.classes, self._head_meta())
        else:
            self.state.stale += 1

    def _early_stop(self) -> bool:
        patience = self.cfg.engine.patience
        return patience > 0 and self.state.stale >= patience

    def _head_meta(self) -> dict[str, Any]:
        m = self.cfg.model
        return {"kind": m.head, "hidden": m.head_hidden, "dropout": m.dropout}

    def _hook_infos(self) -> list[dict[str, Any]]:
        return [hook.state()[0] for hook in self.hooks]

    def _hook_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v for i, hook in enumerate(self.hooks) for k, v in hook.state()[1].items()}

    def _restore(self) -> None:
        verify_split(self.run_dir, self.data.split_record())  # same images and classes, or the replay is not the run
        tensors: dict[str, torch.Tensor] = {}
        info = load_training_state(self.run_dir, self.model, self.optimizer, tensors)
        for i, (hook, hook_info) in enumerate(zip(self.hooks, info.get("hooks") or [{}] * len(self.hooks))):
            hook.load_state(hook_info, {k.partition(".")[2]: v for k, v in tensors.items() if k.partition(".")[0] == str(i)})
        self.state.restore(info)
        self.reporter.say(f"resuming {self.run_dir} after epoch {self.state.epoch} of {self.epochs}")

    # --- the end --------------------------------------------------------------------------------

    def _finish(self, started: float, trainable: int, total: int, interrupted: bool) -> RunResult:
        from transferkit.export.runfiles import load_run

        for hook in self.hooks:
            result = hook.finish(self, started, trainable, total, interrupted)
            if result is not None:
                return result
        if self.state.best_epoch < 0:
            raise TransferKitError("the run stopped before finishing its first epoch; nothing was saved")
        best = load_run(self.run_dir, device=str(self.device))
        self.model.load_state_dict(best.model.state_dict())
        applied = best.meta["head"].get("logit_adjustment")
        if applied:  # a finish that ran before (a resumed finished run, a crash after the save): start from the chosen model
            fold_into_head(self.model.head, np.asarray(applied["prior"]), -float(applied["tau"]))
        cached = self._uses_cache(self.state.epoch - 1)  # the backbone was never trained: embeddings still hold
        adjustment = self._adjust_logits(cached) if self.balancing.logit_adjust == "tuned" else None
        selection = self._evaluate(self.data.selection, cached) if self.data.selection else None
        calibration = fit_calibration(self.cfg.engine.calibrate, selection)  # the selection split's labels only
        temperature = temperature_of(calibration)
        if self.dist.main:  # model.json records it (1: none): predict, export and serve apply it
            record_in_head(self.run_dir, temperature=temperature)  # the weights stay as saved
        # the test split is evaluated here, once, with the model already chosen; nothing below chooses
        raw = self._evaluate(self.data.test, cached)
        test = tempered(raw, temperature)
        details = detailed_metrics(test["labels"], test["probs"], self.data.classes)
        if temperature != 1.0:
            calibration["test"] = test_calibration(test["labels"], raw["probs"], test["probs"], len(self.data.classes))
            details["calibration_before"] = {"ece": calibration["test"]["ece_before"], "bins": calibration["test"].pop("bins_before")}
            if selection is not None:  # its files hold what the model answers: calibrated probabilities
                selection = tempered(selection, temperature)
        summary = run_summary(self, details, selection["metrics"] if selection else None, adjustment,
                              {"trainable": trainable, "total": total}, time.perf_counter() - started, interrupted)
        summary["calibration"] = calibration
        if not self.dist.main:  # every rank evaluated (a collective); rank 0 alone writes
            return RunResult(self.run_dir, summary)
        write_json(self.run_dir / "test_metrics.json", details)
        self._write_predictions("test", self.data.test, test)
        if selection is not None:
            self._write_predictions("selection", self.data.selection, selection)
        write_json(self.run_dir / "skipped.json", summary["skipped_files"])
        write_json(self.run_dir / "summary.json", summary)
        for hook in self.after_fit:
            hook(self.run_dir, self.model)
        self.reporter.summary(summary, self.run_dir, details)
        return RunResult(self.run_dir, summary)

    def _adjust_logits(self, cached: bool) -> dict[str, Any]:
        """Choose tau on the selection split (1 without one) and fold the adjustment into the chosen model."""
        prior = self.balance.prior()
        if self.data.selection:
            sel = self._evaluate(self.data.selection, cached)
            k = len(self.data.classes)
            record = choose_tau(sel["labels"], sel["probs"], prior, lambda y, p: summary_metrics(y, p, k),
                                self.balancing.monitor)
            record["chosen_on"] = "selection"
        else:
            record = {"tau": 1.0, "chosen_on": "fixed (no selection split): Menon et al.'s tau = 1"}
        fold_into_head(self.model.head, prior, record["tau"])
        if self.dist.main:  # model.json records the shift, so a second finish can undo it instead of stacking it
            applied = {"tau": record["tau"], "prior": [float(p) for p in prior]}
            save_model(self.run_dir, self.model, self.data.classes, {**self._head_meta(), "logit_adjustment": applied})
        record["prior"] = [round(float(p), 6) for p in prior]
        self.reporter.say(f"logit adjustment: tau {record['tau']:g} ({record['chosen_on']})")
        return record

    def _write_predictions(self, split: str, samples, result: dict[str, Any]) -> None:
        """Per-image probabilities of the final model (the report's galleries and calibration use them)."""
        rows = prediction_rows([s.path for s in samples], result["indices"], result["labels"], result["probs"])
        write_json(self.run_dir / f"{split}_predictions.json", rows)
