"""Class imbalance: measure it, and the two training-time remedies that live in the data layer.

* :func:`measure_balance`: per-class counts in every split and the largest/smallest class ratio of the
  training split. Above :data:`IMBALANCE_RATIO` a run is *imbalanced*: it selects on balanced accuracy,
  balances its loss, and leads its reports with balanced accuracy and per-class recall.
* :func:`class_weights`: per-class loss weights, inverse frequency ("balanced", as scikit-learn's
  ``class_weight="balanced"``) or by the effective number of samples (Cui et al. 2019, "Class-Balanced
  Loss Based on Effective Number of Samples": ``(1 - beta) / (1 - beta ** n_c)``).
* :class:`BalancedSampler`: class-balanced sampling with replacement that shards across torchrun
  processes like ``DistributedSampler``. Written here because torch's ``WeightedRandomSampler`` has no
  rank/epoch notion: under DDP every process would draw the same indices (or need its own seed and then
  overlap), and a resumed run could not replay an epoch's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["IMBALANCE_RATIO", "EFFECTIVE_BETA", "Balance", "Balancing", "measure_balance", "resolve_balancing",
           "class_counts", "class_weights", "balanced_indices", "draw_keys", "BalancedSampler", "adjust_logits"]

# Largest / smallest class count in the training split above which a run counts as imbalanced. At 3:1 a
# model that never predicts the smallest class can still score >= 75% accuracy on two classes, and the
# rare class's selection/test images become a handful: accuracy stops describing what the model does.
IMBALANCE_RATIO = 3.0
# Cui et al. 2019 report beta in {0.9, 0.99, 0.999, 0.9999}; 0.999 keeps weights between "none" (small
# beta) and inverse frequency (beta -> 1) for classes of tens to hundreds of images, our users' sizes.
EFFECTIVE_BETA = 0.999


def class_counts(labels: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)[:n_classes]


@dataclass(frozen=True)
class Balance:
    """Per-class counts of every split and the training split's largest/smallest ratio."""

    classes: tuple[str, ...]
    counts: Mapping[str, tuple[int, ...]]  # split -> count per class (class order)
    ratio: float  # max / min training count (inf when a class has no training image)
    threshold: float = IMBALANCE_RATIO

    @property
    def imbalanced(self) -> bool:
        return self.ratio > self.threshold

    @property
    def train(self) -> np.ndarray:
        return np.asarray(self.counts["train"], dtype=np.int64)

    def prior(self) -> np.ndarray:
        """Training class frequencies (what logit adjustment subtracts the log of)."""
        counts = self.train.astype(np.float64)
        return counts / counts.sum()

    def to_dict(self, lead_metric: str) -> dict[str, Any]:
        """The ``balance`` record of summary.json and split.json."""
        return {
            "ratio": None if math.isinf(self.ratio) else round(self.ratio, 3),
            "threshold": self.threshold,
            "imbalanced": self.imbalanced,
            "counts": {split: dict(zip(self.classes, map(int, counts))) for split, counts in self.counts.items()},
            "lead_metric": lead_metric,
        }

    def describe(self) -> str:
        """One line for the run header."""
        train = self.train
        smallest, largest = int(train.argmin()), int(train.argmax())
        ratio = "inf" if math.isinf(self.ratio) else f"{self.ratio:.1f}"
        if train[largest] == train[smallest]:
            return f"class balance: 1.0:1 (every class {train[largest]} training images)"
        text = (f"class balance: {ratio}:1 (largest class {self.classes[largest]!r}: {train[largest]}, "
                f"smallest class {self.classes[smallest]!r}: {train[smallest]} training images)")
        if self.imbalanced:
            text += f" - imbalanced (> {self.threshold:g}:1)"
        return text


def measure_balance(classes: Sequence[str], splits: Mapping[str, Sequence[Any]]) -> Balance:
    """Counts per class of each split (samples with a ``label``); the ratio is the ``train`` split's."""
    n = len(classes)
    counts = {name: tuple(int(c) for c in class_counts([s.label for s in samples], n)) for name, samples in splits.items()}
    train = np.asarray(counts["train"], dtype=np.float64)
    ratio = float("inf") if train.min() == 0 else float(train.max() / train.min())
    return Balance(tuple(classes), counts, ratio)


def class_weights(counts: Sequence[int] | np.ndarray, method: str, beta: float = EFFECTIVE_BETA) -> np.ndarray | None:
    """Per-class loss weights, normalised so the weighted number of training images equals the real one
    (``sum_c n_c w_c = N``): the loss keeps its scale and the learning rate its meaning.

    ``balanced``: ``w_c = N / (C n_c)`` (each class carries the same total weight; scikit-learn's
    "balanced"). ``effective``: ``w_c`` proportional to ``(1 - beta) / (1 - beta ** n_c)``. ``none``: None.
    A class without training images gets weight 0 (it contributes no loss term anyway).
    """
    if method == "none":
        return None
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    raw = np.zeros_like(n)
    if method == "balanced":
        raw[present] = 1.0 / n[present]
    elif method == "effective":
        raw[present] = (1.0 - beta) / (1.0 - np.power(beta, n[present]))
    else:
        raise ValueError(f"class weights {method!r}: use none, balanced or effective")
    return raw * (n.sum() / (raw * n).sum())


def balanced_indices(labels: Sequence[int] | np.ndarray, num_samples: int, generator: torch.Generator) -> np.ndarray:
    """``num_samples`` indices drawn with replacement, each class equally likely (then an image within it)."""
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y)
    weights = torch.as_tensor(1.0 / counts[y], dtype=torch.float64)
    return torch.multinomial(weights, num_samples, replacement=True, generator=generator).numpy()


def draw_keys(indices: np.ndarray, n: int) -> np.ndarray:
    """``index + k * n`` for the k-th repeat of an index within one epoch's draw.

    A dataset reads the image ``key % n`` and seeds its augmentation with the whole key, so an image drawn
    several times in an epoch gets a different crop each time (seeding by the image index alone would give
    every copy of a rare image the same view, where variety matters most).
    """
    seen: dict[int, int] = {}
    keys = np.empty(len(indices), dtype=np.int64)
    for pos, index in enumerate(indices.tolist()):
        k = seen.get(index, 0)
        seen[index] = k + 1
        keys[pos] = index + k * n
    return keys


class BalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement, the same draw on every rank, each rank taking its shard.

    An epoch draws ``ceil(N / world) * world`` indices from a generator seeded by (seed, epoch), so the
    epoch is as long as a plain one, every process agrees on the draw without communicating, and a
    resumed run replays it. Rank r takes draws r, r + world, ... (as DistributedSampler shards). It yields
    :func:`draw_keys` (the dataset reads ``key % N``), so repeated draws of an image get distinct views.
    """

    def __init__(self, labels: Sequence[int], seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        self.num_samples = math.ceil(len(self.labels) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch * 1_009 + 17)
        drawn = draw_keys(balanced_indices(self.labels, self.num_samples * self.num_replicas, g), len(self.labels))
        return iter(drawn[self.rank::self.num_replicas].tolist())


@dataclass(frozen=True)
class Balancing:
    """What a run does about imbalance: the ``auto`` settings resolved against the measured balance."""

    monitor: str  # the metric that chooses the epoch (and the probe's tie-break, and tau)
    class_weights: str  # none | balanced | effective
    weights: np.ndarray | None  # per-class loss weights (None: plain cross-entropy)
    sampler: str  # none | balanced
    logit_adjust: str  # none | tuned

    @property
    def lead_metric(self) -> str:
        return "balanced_accuracy" if self.monitor == "balanced_accuracy" else "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "class_weights": self.class_weights, "sampler": self.sampler,
                "logit_adjust": self.logit_adjust,
                "weights": None if self.weights is None else [round(float(w), 6) for w in self.weights]}

    def describe(self) -> str:
        remedies = [f"{self.class_weights} class weights" if self.class_weights != "none" else "",
                    "class-balanced sampling" if self.sampler != "none" else "",
                    "logit adjustment (tau chosen on the selection split)" if self.logit_adjust != "none" else ""]
        done = ", ".join(r for r in remedies if r) or "no rebalancing"
        return f"balancing: {done}; the epoch is chosen on {self.monitor.replace('_', ' ')}"


def resolve_balancing(cfg: Any, balance: Balance) -> Balancing:
    """Resolve ``engine.monitor``, ``optim.class_weights`` and ``engine.logit_adjust`` (``auto``) for ``balance``.

    Imbalanced data (ratio above :data:`IMBALANCE_RATIO`) gets one balancing method, never two stacked:
    balanced class weights, unless the sampler is asked for (it balances the batches instead), and logit
    adjustment only when neither is on (it corrects the same prior after training). Balanced data keeps
    plain cross-entropy and accuracy, so balanced folders train exactly as before.
    """
    imbalanced = balance.imbalanced
    monitor = cfg.engine.monitor
    if monitor == "auto":
        monitor = "balanced_accuracy" if imbalanced else "accuracy"
    sampler = cfg.data.sampler
    method = cfg.optim.class_weights
    if method == "auto":  # one method: not with the sampler, nor with logit adjustment asked for by name
        method = "balanced" if imbalanced and sampler == "none" and cfg.engine.logit_adjust != "tuned" else "none"
    adjust = cfg.engine.logit_adjust
    if adjust == "auto":
        adjust = "tuned" if imbalanced and method == "none" and sampler == "none" else "none"
    return Balancing(monitor, method, class_weights(balance.train, method), sampler, adjust)


def adjust_logits(log_probs: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment (Menon et al. 2021): ``log p(y|x) - tau * log prior(y)``.

    log-softmax outputs are logits up to a per-row constant, so adjusting them ranks classes exactly as
    adjusting the logits would. A class without training images (prior 0) is left as it is.
    """
    with np.errstate(divide="ignore"):
        shift = np.where(prior > 0, np.log(np.where(prior > 0, prior, 1.0)), 0.0)
    return log_probs - tau * shift
