"""Training the head on cached embeddings, with the engine's own loops.

While every backbone layer group is frozen (all of ``feature-extraction``, the head-only warm-up
of ``lp-ft``, the first phase of ``gradual``), the backbone maps each image to the same vector in
every epoch (frozen weights, BatchNorm pinned to its running statistics). So the Trainer embeds
each image once through :class:`FeatureCache` and feeds :func:`train_one_epoch` /
:func:`predict_loader` batches of embeddings with ``model.head`` as the model: the same optimizer
step, schedule, loss, metrics, early stopping and run folder, at a fraction of the cost.

Augmentation survives through ``engine.cache_views = K``: K augmented views of each training image
are cached and every epoch draws one of them per image; with K = 0 the head trains on the eval view.

A linear head is not trained by those epochs at all when the rows fit in memory
(``model.head_fit`` auto or probe, :func:`probe_planned`): the whole head-only phase becomes one
converged, L2-tuned logistic regression (:mod:`transferkit.features.probe`), fitted on the cached
training rows (every cached view is an extra row) with the L2 strength chosen on held-out data (the
selection split, or k-fold cross-validation over train + selection when the selection split is small). Epochs of the optimizer stop wherever the schedule ends, regularised by label smoothing, dropout
and the epoch budget rather than by a strength chosen on held-out data. The MLP head, and
any training set beyond :data:`~transferkit.features.probe.PROBE_MAX_BYTES`, keep the epochs
(streamed from the store above :data:`MEMORY_BUDGET`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from transferkit.config import RunCfg
from transferkit.data.balance import balanced_indices
from transferkit.models.runtime import predict_loader
from transferkit.features.cache import FeatureCache, ViewRows
from transferkit.features.extract import torch_threads
from transferkit.features.probe import ProbeFit, Score, fit_linear_probe, probe_fits_in_memory
from transferkit.models.transfer import TransferModel
from transferkit.strategy.plan import HEAD, Plan

__all__ = ["MEMORY_BUDGET", "HEAD_THREADS", "FeatureSet", "FeatureBatches", "CachedHead", "frozen_prefix", "probe_planned"]

MEMORY_BUDGET = 1 << 30  # bytes of float16 embeddings held in RAM; a larger split streams from the store
HEAD_THREADS = 1


def probe_planned(cfg: RunCfg, plan: Plan, train_rows: int, feature_dim: int) -> bool:
    """Whether the head-only phase is one converged probe fit instead of optimizer epochs.

    Yes for a linear head with a head-only phase, when ``model.head_fit`` is ``probe``, or ``auto``
    with the embedding cache on (``--no-cache`` under ``auto`` keeps the reference path: the head
    trains through the whole model, as the seed recipes did), and the ``train_rows`` (images x cached
    views) fit a full-batch solver's memory. Decided from counts before anything is embedded.
    """
    m = cfg.model
    if m.head_fit == "sgd" or m.head != "linear" or frozen_prefix(plan) == 0:
        return False
    if m.head_fit == "auto" and not cfg.engine.cache:
        return False
    return probe_fits_in_memory(train_rows, feature_dim)


def frozen_prefix(plan: Plan) -> int:
    """How many leading epochs of ``plan`` train the head only (every backbone group at scale 0)."""
    count = 0
    for row in plan.scales:
        if any(scale > 0 for group, scale in zip(plan.groups, row) if group != HEAD):
            break
        count += 1
    return count


def _cached_views(cfg: RunCfg) -> int:
    """Augmented training views the run caches (0: the head trains on the eval view)."""
    return cfg.engine.cache_views if cfg.engine.cache_views > 0 and cfg.data.augment != "none" else 0


class FeatureSet:
    """The embeddings (one or more views) and labels of one split, served as mini-batches.

    Held in memory as float16 when ``n x views x dim x 2`` bytes fit ``memory_budget``, otherwise
    every batch is read from the store with ``pread`` (resident memory stays at one batch). The
    batch order is the same either way: a permutation drawn from (seed, epoch).
    """

    def __init__(self, views: Sequence[ViewRows], labels: Sequence[int], memory_budget: int = MEMORY_BUDGET) -> None:
        common = views[0].positions
        for v in views[1:]:
            common = np.intersect1d(common, v.positions)
        self.views = list(views)
        self.which = [np.searchsorted(v.positions, common) for v in views]
        self.indices = common  # positions in the split's sample list
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)[common])
        self.dim = views[0].dim
        self.failed = {k: r for v in views for k, r in v.failed.items()}
        self.streamed = len(common) * len(views) * self.dim * 2 > memory_budget
        self.data = None if self.streamed else torch.from_numpy(np.stack([v.read(w) for v, w in zip(views, self.which)]))

    def __len__(self) -> int:
        return int(self.indices.size)

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Every view's rows stacked, (views x n, dim) float16, and their labels: one row per (view, item)."""
        n = len(self)
        if self.data is not None:
            rows = self.data.numpy().reshape(-1, self.dim)
        else:
            rows = np.concatenate([self.rows(np.full(n, v), np.arange(n)).numpy().astype(np.float16) for v in range(len(self.views))])
        return rows, np.tile(self.labels.numpy(), len(self.views))

    def rows(self, view: np.ndarray, sel: np.ndarray) -> torch.Tensor:
        """float32 embeddings of items ``sel`` (positions in this set), view ``view[i]`` for item i."""
        if self.data is not None:
            return self.data[torch.as_tensor(view), torch.as_tensor(sel)].float()
        out = np.empty((len(sel), self.dim), dtype=np.float16)
        for v in np.unique(view):
            mask = view == v
            out[mask] = self.views[v].read(self.which[v][sel[mask]], stream=True)
        return torch.from_numpy(out).float()

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                balanced: bool = False) -> "FeatureBatches":
        """Mini-batches in the dict form of the engine's image loaders; order and views a pure function of (seed, epoch).

        ``balanced``: as many rows as a plain epoch, drawn with replacement, every class equally likely
        (``data.sampler balanced``, as :class:`transferkit.data.balance.BalancedSampler` on images).
        """
        g = torch.Generator().manual_seed(seed * 100_003 + epoch * 1_009)
        n = len(self)
        if balanced:
            order = balanced_indices(self.labels.numpy(), n, g)
        else:
            order = torch.randperm(n, generator=g).numpy() if shuffle else np.arange(n)
        view = torch.randint(len(self.views), (n,), generator=g).numpy() if shuffle and len(self.views) > 1 else np.zeros(n, np.int64)
        if balanced and len(self.views) > 1:  # a view per draw, so repeated draws of a rare image differ
            return FeatureBatches(self, batch_size, order, view)
        return FeatureBatches(self, batch_size, order, view[order])


class FeatureBatches:
    """An iterable with ``len`` (the progress bar needs it), yielding {"images", "labels", "indices", "failed"}."""

    def __init__(self, features: FeatureSet, batch_size: int, order: np.ndarray, view: np.ndarray) -> None:
        """``order``: the items of the epoch in batch order (repeats allowed); ``view``: the cached view of each
        position of ``order``."""
        self.features, self.batch_size, self.order, self.view = features, batch_size, order, view

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        fs = self.features
        # One torch thread while the consumer trains or evaluates the head on these batches (the setting
        # holds between yields and is restored when the loop ends): a head's ops are far too small for
        # intra-op threads, whose barriers made an epoch 10x slower on a busy 2-core machine (measured).
        with torch_threads(HEAD_THREADS):
            for start in range(0, len(self.order), self.batch_size):
                sel = self.order[start:start + self.batch_size]
                yield {
                    "images": fs.rows(self.view[start:start + self.batch_size], sel),
                    "labels": fs.labels[sel],
                    "indices": torch.from_numpy(fs.indices[sel]),
                    "failed": [],
                }


class CachedHead:
    """What the Trainer calls while the backbone is frozen: batches of embeddings and cached predictions."""

    def __init__(self, cfg: RunCfg, plan: Plan, model: TransferModel, device: torch.device, data: Any,
                 say: Callable[[str], None], on_skip: Callable[[str, str], None]) -> None:
        self.cfg, self.model, self.device, self.data, self.on_skip = cfg, model, device, data, on_skip
        self.frozen_epochs = frozen_prefix(plan)
        e = cfg.engine
        self.train_views: list[int | None] = list(range(_cached_views(cfg))) or [None]
        self.probe = probe_planned(cfg, plan, len(data.train) * len(self.train_views), model.spec.feature_dim)
        self.cache = FeatureCache(  # enabled=False (head_fit probe with --no-cache): embeddings held in memory only
            model.backbone, model.spec, weights=cfg.model.weights, pretrained=cfg.model.pretrained, enabled=e.cache,
            cache_dir=e.cache_dir, device=device, amp=e.amp, batch_size=e.batch_size * 2, workers=cfg.data.workers,
            channels_last=e.channels_last, augment=cfg.data.augment, say=say,
        )
        self._sets: dict[int, FeatureSet] = {}

    @classmethod
    def for_run(cls, cfg: RunCfg, plan: Plan, model: TransferModel, device: torch.device, data: Any,
                say: Callable[[str], None], on_skip: Callable[[str, str], None]) -> "CachedHead | None":
        """A CachedHead when the plan starts with head-only epochs and either caching is on or the probe
        is planned without it (embeddings then live in memory for the run), else None."""
        if frozen_prefix(plan) == 0:
            return None
        if not cfg.engine.cache:
            if not probe_planned(cfg, plan, len(data.train) * max(1, _cached_views(cfg)), model.spec.feature_dim):
                return None
        return cls(cfg, plan, model, device, data, say, on_skip)

    def covers(self, epoch: int) -> bool:
        """True when every epoch up to ``epoch`` kept the backbone frozen (so cached embeddings are its output)."""
        return 0 <= epoch < self.frozen_epochs

    def train_batches(self, epoch: int) -> FeatureBatches:
        e = self.cfg.engine
        return self._set(self.data.train).batches(e.batch_size, shuffle=True, seed=e.seed, epoch=epoch,
                                                  balanced=self.cfg.data.sampler == "balanced")

    def fit_probe(self, selection: Sequence[Any], score: Score, class_weight: Mapping[int, float] | None = None,
                  refit_with_selection: bool = False) -> ProbeFit:
        """Fit the converged linear probe on the training rows, choose its L2 strength with ``selection``
        (the split that chooses; never a test split) and ``score(labels, probs)``, and load the folded
        weights into the head's Linear (its Dropout stays for later fine-tuning; it is inert in eval).

        How the strength is chosen (:func:`~transferkit.features.probe.fit_linear_probe`): on the selection
        split when it has at least :data:`~transferkit.features.probe.CV_BELOW` images; with fewer, by
        k-fold cross-validation over train + selection; with none (``--select last``), by k-fold
        cross-validation on train. The cached views of one image stay in one fold. The chosen probe is fitted on
        train, or on train + selection with ``refit_with_selection`` (the trainer asks for it only when the
        selection split chooses nothing after the probe).
        """
        linears = [m for m in self.model.head.modules() if isinstance(m, torch.nn.Linear)]
        if len(linears) != 1:
            raise ValueError(f"the probe fits a head with one Linear layer; this head has {len(linears)}")
        train = self._set(self.data.train)
        train_x, train_y = train.matrix()
        groups = np.tile(np.arange(len(train)), len(train.views))  # matrix() stacks the views view by view
        chooser = self._set(selection).matrix() if len(selection) else None
        fit = fit_linear_probe(train_x, train_y, chooser, n_classes=linears[0].out_features, score=score, groups=groups,
                               class_weight=None if class_weight is None else dict(class_weight),
                               refit_with_selection=refit_with_selection and chooser is not None)
        fit.load_into(linears[0])
        return fit

    def predict(self, samples: Sequence[Any]) -> dict[str, np.ndarray]:
        """Softmax outputs of the head on the eval embeddings of ``samples`` (predict_loader's result)."""
        fs = self._set(samples)
        return predict_loader(self.model.head, fs.batches(self.cfg.engine.batch_size * 2), self.device, self.cfg.engine.amp)

    def _set(self, samples: Sequence[Any]) -> FeatureSet:
        if not self._sets:
            self._prepare()
        if id(samples) not in self._sets:  # a list the run did not announce: embed it on its own
            self._sets[id(samples)] = self._build([samples], [None])[0]
        return self._sets[id(samples)]

    def _prepare(self) -> None:
        """Embed the splits that train and choose (train and selection) in one pass per view (one worker
        pool, one shard), then split the rows. Not the test split: its images are read once, when the
        trainer's finish evaluates it after everything is chosen (then :meth:`_set` embeds it on its own)."""
        d = self.data
        eval_splits = [x for x in (d.selection,) if x] + ([d.train] if self.train_views == [None] else [])
        for samples, fs in zip(eval_splits, self._build(eval_splits, [None])):
            self._sets[id(samples)] = fs
        if self.train_views != [None]:
            self._sets[id(d.train)] = self._build([d.train], self.train_views)[0]
        self.model.train(self.model.training)  # re-pin BatchNorm: embedding switched the backbone to eval and back

    def _build(self, splits: list[Sequence[Any]], views: list[int | None]) -> list[FeatureSet]:
        paths = [s.path for samples in splits for s in samples]
        rows = [self.cache.lookup(paths, view) for view in views]
        out, start = [], 0
        for samples in splits:
            parts = [r.select(start, start + len(samples)) for r in rows]
            fs = FeatureSet(parts, [s.label for s in samples], memory_budget=MEMORY_BUDGET)  # looked up per call, so it can be lowered
            for pos, reason in sorted(fs.failed.items()):
                self.on_skip(samples[pos].path, reason)
            out.append(fs)
            start += len(samples)
        return out
