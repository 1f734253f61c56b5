"""Splits, datasets and loaders on top of the folder scan.

A bad file never crashes an epoch: ``__getitem__`` turns a :class:`DataError` into a failure record
that the collate function drops from the batch and reports, so the engine can list it as skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from transferkit.config import DataCfg
from transferkit.data.balance import BalancedSampler
from transferkit.data.decode import load_rgb
from transferkit.data.layout import scan_dataset
from transferkit.data.scan import Sample, ScanResult, validate
from transferkit.data.transforms import image_rng
from transferkit.errors import DataError

__all__ = ["ROLES", "DataSplits", "prepare_data", "stratified_split", "ImageDataset", "make_loader", "default_workers",
           "CpuPlan", "cpu_plan", "available_cores", "torch_threads"]

log = logging.getLogger(__name__)


ROLES = {
    "train": "fits the weights",
    "selection": "chooses everything that is chosen (best epoch, early stopping, probe L2 strength)",
    "test": "only reported; nothing is chosen on it",
}


@dataclass
class DataSplits:
    """The classes, the samples of each data role, and every file that was skipped (with its reason).

    Three roles (see ``ROLES``): ``train`` fits, ``selection`` chooses, ``test`` is only reported.
    ``selection`` is empty under ``engine.select last`` (a fixed budget, nothing chosen).
    ``sources`` says where each role's images came from (a folder, or a carve-out of one).
    """

    root: str
    layout: str  # "split" (train/ with val/ and/or test/ given) or "flat" (every role carved here by seed)
    classes: list[str]
    train: list[Sample]
    selection: list[Sample]
    test: list[Sample] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def protocol(self) -> dict[str, Any]:
        """Role, source and size of each split (recorded in split.json and summary.json)."""
        sizes = {"train": len(self.train), "selection": len(self.selection), "test": len(self.test)}
        record: dict[str, Any] = {name: {"role": ROLES[name], "source": self.sources.get(name, ""), "n": sizes[name]}
                                  for name in ROLES}
        if "unused" in self.sources:  # a given folder no role reads (val/ beside test/ under --select last)
            record["unused"] = self.sources["unused"]
        return record

    def split_record(self) -> dict[str, Any]:
        """Relative paths per split: written to split.json so a run's split is reproducible."""
        root = Path(self.root)

        def rel(samples: Sequence[Sample]) -> list[list[Any]]:
            return [[os.path.relpath(s.path, root), s.label] for s in samples]

        return {
            "root": str(root),
            "layout": self.layout,
            "classes": self.classes,
            "protocol": self.protocol(),
            "train": rel(self.train),
            "selection": rel(self.selection),
            "test": rel(self.test),
        }


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int,
                     min_held: int = 1) -> tuple[list[Sample], list[Sample]]:
    """Per-class shuffled split into (rest, held out ``fraction``); every class with >= 2 images holds out
    at least ``min_held`` images (as many as it can while keeping one in ``rest``), a class with one image
    stays in ``rest``. (:func:`prepare_data` refuses classes too small for its minimum before splitting.)

    Hand-written rather than sklearn's train_test_split because that one refuses classes with a
    single image instead of keeping them in train, and we want the order fully defined by the seed.
    """
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    rng = random.Random(seed)
    rest, held = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: s.path)
        rng.shuffle(items)
        n_held = int(round(len(items) * fraction))
        n_held = min(max(n_held, min_held, 1), len(items) - 1) if len(items) >= 2 else 0
        held.extend(items[:n_held])
        rest.extend(items[n_held:])
    return sorted(rest, key=lambda s: s.path), sorted(held, key=lambda s: s.path)


def prepare_data(cfg: DataCfg, draft_size: int | None = None, select: str = "best") -> DataSplits:
    """Scan, validate (decode each file once) and assign the folder ``cfg.path`` to the three roles.

    - ``train/ val/ test/``: used as named (val/ selects, test/ is reported). ``val/`` may be named
      ``valid/``, ``validation/`` or ``dev/`` (:mod:`transferkit.data.layout`).
    - ``train/ val/`` or ``train/ test/``: the selection split is carved from train/ (stratified,
      ``cfg.selection_fraction``, seeded by ``cfg.split_seed``) and the other folder is reported as the test split.
    - one folder of class sub-folders, or ``train/`` alone: stratified train / selection / test
      (``1 - selection_fraction - test_fraction`` / ``selection_fraction`` / ``test_fraction``, 70/15/15).
    - ``select="last"`` (a fixed budget, nothing chosen): no selection split; every image that is not
      test trains (a given val/ beside a test/ is then not used).

    Raises:
        DataError: no train/ beside val/ or test/, split names mixed with class folders, classes too small.
    """
    root = os.path.abspath(cfg.path)  # absolute paths: reports and predictions work from anywhere
    scans = scan_dataset(root)
    if cfg.validate:
        scans = {name: validate(scan, workers=max(1, os.cpu_count() or 1), draft_size=draft_size) for name, scan in scans.items()}
    skipped = [item for scan in scans.values() for item in scan.skipped]
    choose = select != "last"
    if "all" in scans:
        return _checked(_carve_all(cfg, scans["all"], root, skipped, choose), choose)
    if "train" not in scans:
        given = " ".join(_folder(scan) for scan in scans.values())
        raise DataError(
            f"{cfg.path} has {given} but no train/ folder: training needs its images in "
            f"{os.path.join(cfg.path, 'train', '<class>', 'img.jpg')!r}; add train/, or, to train on one of these "
            "folders alone, pass that folder as DATA (selection and test are then carved from it)"
        )
    return _checked(_given_splits(cfg, scans, skipped, choose), choose)


def _folder(scan: ScanResult) -> str:
    """``"train/"``: a split folder's own name, as the user wrote it."""
    return os.path.basename(scan.root.rstrip(os.sep)) + "/"


def _carve_all(cfg: DataCfg, scan: ScanResult, root: str, skipped: list[tuple[str, str]], choose: bool) -> DataSplits:
    """Every role carved from one folder of classes: the dataset itself, or its train/ when it has no other split."""
    where = "the folder" if os.path.normpath(scan.root) == os.path.normpath(root) else _folder(scan)
    sel_pct, test_pct = f"{cfg.selection_fraction:.0%}", f"{cfg.test_fraction:.0%}"
    carved = f"stratified, split seed {cfg.split_seed}"
    _require_two_classes(scan.samples, scan.classes, scan.root)
    _require_class_sizes(scan.samples, scan.classes, cfg.min_per_class, 2 if choose else 1, scan.root)
    rest, test = stratified_split(scan.samples, cfg.test_fraction, cfg.split_seed, cfg.min_per_class)
    sources = {"test": f"{test_pct} of {where} ({carved})"}
    selection: list[Sample] = []
    if choose:  # selection_fraction of the whole folder, taken from what the test split left
        share = cfg.selection_fraction / (1.0 - cfg.test_fraction)
        rest, selection = stratified_split(rest, share, cfg.split_seed + 1, cfg.min_per_class)
        sources["selection"] = f"{sel_pct} of {where} ({carved}; disjoint from test)"
    sources["train"] = f"the rest of {where}"
    return DataSplits(str(cfg.path), "flat", scan.classes, rest, selection, test, skipped, sources)


def _given_splits(cfg: DataCfg, scans: dict[str, ScanResult], skipped: list[tuple[str, str]],
                  choose: bool) -> DataSplits:
    """train/ with val/ and/or test/: folders used as named; a missing selection split is carved from train/."""
    train_scan = scans["train"]
    train_dir = _folder(train_scan)
    _require_two_classes(train_scan.samples, train_scan.classes, train_scan.root)
    for name in ("val", "test"):
        if name in scans and not scans[name].samples:
            raise DataError(f"{scans[name].root}: this {name} folder has no readable images; add images to it or remove it")
    train, selection = train_scan.samples, []
    if "val" in scans and "test" in scans:
        test, val_dir = scans["test"].samples, _folder(scans["val"])
        sources = {"train": train_dir, "test": _folder(scans["test"])}
        if choose:
            selection, sources["selection"] = scans["val"].samples, val_dir
        else:
            sources["unused"] = f"{val_dir} (--select last chooses nothing)"
        return DataSplits(str(cfg.path), "split", train_scan.classes, train, selection, test, skipped, sources)
    held = scans.get("test") or scans["val"]
    test = held.samples
    sources = {"test": _folder(held) if "test" in scans else f"{_folder(held)} (reported as the test split)"}
    if choose:
        _require_class_sizes(train_scan.samples, train_scan.classes, cfg.min_per_class, 1, train_scan.root)
        train, selection = stratified_split(train_scan.samples, cfg.selection_fraction, cfg.split_seed,
                                            cfg.min_per_class)
        sources["selection"] = (f"{cfg.selection_fraction:.0%} of {train_dir} "
                                f"(stratified, split seed {cfg.split_seed})")
        sources["train"] = f"the rest of {train_dir}"
    else:
        sources["train"] = train_dir
    return DataSplits(str(cfg.path), "split", train_scan.classes, train, selection, test, skipped, sources)


def _checked(data: DataSplits, choose: bool) -> DataSplits:
    if choose and not data.selection:
        raise DataError(
            f"{data.root}: no class has the 2 images a selection split needs (one to train, one to choose "
            "the epoch); add images, or pass --select last to train a fixed budget and choose nothing"
        )
    return data


def _require_class_sizes(samples: Sequence[Sample], classes: Sequence[str], minimum: int, carved: int,
                         where: str) -> None:
    """Refuse, up front and naming them, classes too small to give each of the ``carved`` held-out splits
    ``minimum`` images and keep one to train on (a rare class with one test image is a coin toss)."""
    need = carved * minimum + 1
    counts = {i: 0 for i in range(len(classes))}
    for s in samples:
        counts[s.label] += 1
    small = [f"{classes[i]!r} ({n})" for i, n in counts.items() if n < need]
    if small:
        splits = "selection and test splits" if carved == 2 else "selection split"
        raise DataError(
            f"{where}: class folder(s) {', '.join(small)} have fewer than {need} images: the {splits} need "
            f"{minimum} image(s) of every class (data.min_per_class) and training needs 1; add images, lower "
            f"--min-per-class, or give the split folders yourself (train/ val/ test/)"
        )


def _require_two_classes(samples: Sequence[Sample], classes: Sequence[str], where: str) -> None:
    """After validation a class may have lost all its files: refuse before training, naming it."""
    present = {s.label for s in samples}
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise DataError(
            f"{where}: class folder(s) {', '.join(repr(c) for c in empty)} have no readable images "
            "(see the skipped files); add images or remove the folder"
        )


class ImageDataset(Dataset):
    """Decodes and transforms one sample; a bad file yields a failure record instead of raising.

    The one image Dataset of every command (train, evaluate, predict, explain, embed, adapt, recommend);
    :func:`collate_skipping` is its collate. The GPU data path (:class:`transferkit.data.gpu.EncodedDataset`)
    differs on purpose: it ships undecoded JPEG bytes.

    Args:
        samples: (path, label) pairs; label -1 for unlabelled images.
        transform: the per-image transform.
        draft_size: lets libjpeg decode at a reduced scale when the target is smaller.
        augment_seed: ``transforms.augment_seed(seed, epoch)``: each image's random transform is seeded by
            (seed, epoch, index), as on the GPU path; without it the worker's RNG stream is used.
        item_seeds: one seed per sample instead (the embedding cache's augmented views: view j of a file is
            always the same crop, whatever else is in the batch).
        verify: ``verify(index) -> reason or None``, called after decoding; a reason turns the item into a
            failure (the embedding cache checks the file's bytes did not change under it).
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, draft_size: int | None = None,
                 augment_seed: int | None = None, item_seeds: Sequence[int] | None = None,
                 verify: Callable[[int], str | None] | None = None) -> None:
        if augment_seed is not None and item_seeds is not None:
            raise ValueError("give augment_seed or item_seeds, not both")
        self.samples = list(samples)
        self.transform = transform
        self.draft_size = draft_size
        self.augment_seed = augment_seed
        self.item_seeds = item_seeds
        self.verify = verify

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int) -> tuple[Any, int, int, str | None]:
        # a key past the end is a repeated draw of image key % n (BalancedSampler): same image, own augmentation
        index = key % len(self.samples)
        sample = self.samples[index]
        try:
            image = load_rgb(sample.path, draft_size=self.draft_size)
        except DataError as exc:
            # the reason alone (the path is reported next to it), as validate() records it
            return None, sample.label, index, getattr(exc, "reason", None) or str(exc)
        reason = self.verify(index) if self.verify is not None else None
        if reason is not None:
            return None, sample.label, index, reason
        if self.item_seeds is not None:
            with torch.random.fork_rng(devices=[]):  # leave the caller's RNG (dropout, resume) untouched
                torch.default_generator.manual_seed(int(self.item_seeds[index]))
                return self.transform(image), sample.label, index, None
        if self.augment_seed is None:
            return self.transform(image), sample.label, index, None
        with image_rng(self.augment_seed, key):
            return self.transform(image), sample.label, index, None


def collate_skipping(batch: list[tuple[Any, int, int, str | None]]) -> dict[str, Any]:
    """Stack the good items; report the bad ones as (index, reason)."""
    good = [item for item in batch if item[3] is None]
    failed = [(item[2], item[3]) for item in batch if item[3] is not None]
    if not good:
        return {"images": None, "labels": None, "indices": None, "failed": failed}
    return {
        "images": torch.stack([item[0] for item in good]),
        "labels": torch.tensor([item[1] for item in good], dtype=torch.long),
        "indices": torch.tensor([item[2] for item in good], dtype=torch.long),
        "failed": failed,
    }


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, shared with the other torchrun processes of this machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API on this OS
        cores = os.cpu_count() or 1
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    return max(1, cores // local_processes)


@dataclass(frozen=True)
class CpuPlan:
    """How a run splits its cores between torch's intra-op threads and the loader's decoding workers."""

    cores: int
    threads: int
    workers: int
    chosen_by: str  # what fixed the numbers: the default policy or the user's settings

    def describe(self) -> str:
        plural = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")  # noqa: E731
        return (f"cpu: {plural(self.threads, 'torch thread')} + {plural(self.workers, 'loader worker')} on "
                f"{plural(self.cores, 'core')} ({self.chosen_by})")


def cpu_plan(workers: int = -1, *, accelerator: bool = False, cores: int | None = None) -> CpuPlan:
    """Torch threads and loader workers that together never exceed the cores, unless the user chose them.

    An oversubscribed CPU stalls every intra-op barrier whenever a worker runs: a training step took
    7.4 s with 2 torch threads beside a decoding worker on 2 cores, 0.6 s with 1 thread. Defaults:
    with the maths on the CPU one decoding worker up to 4 cores, then a quarter of the cores (the
    forward dominates; benchmarks/speed.py); with an accelerator doing the maths the CPU mostly decodes,
    so every core but one decodes (at most 8). Torch gets the remaining cores.

    Explicit choices win: ``data.workers`` >= 0 (``workers``) fixes the workers, ``OMP_NUM_THREADS``
    fixes the threads (torchrun sets it to 1 for several processes), and a thread count already lowered
    with ``torch.set_num_threads`` is never raised.
    """
    cores = cores or available_cores()
    chosen = []
    if workers >= 0:
        chosen.append(f"data.workers={workers}")
    elif accelerator:
        workers = max(0, min(8, cores - 1))
    else:
        workers = 0 if cores < 2 else 1 if cores <= 4 else min(8, cores // 4)
    if os.environ.get("OMP_NUM_THREADS"):
        threads = torch.get_num_threads()
        chosen.append(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    else:
        threads = max(1, min(torch.get_num_threads(), cores - workers))
    return CpuPlan(cores, threads, workers, ", ".join(chosen) or "default: threads + workers <= cores")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_workers(requested: int = -1, accelerator: bool = False) -> int:
    """Decoding workers of :func:`cpu_plan` (``requested`` >= 0 is kept)."""
    return cpu_plan(requested, accelerator=accelerator).workers


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    workers: int = -1,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    collate_fn: Callable | None = None,
    balanced: bool = False,
) -> DataLoader:
    """A loader whose order and augmentation are a pure function of (seed, epoch, rank).

    A DistributedSampler with ``set_epoch`` is used even for one process: it gives the same
    permutation for the same epoch, which is what resuming mid-run and DDP both need.
    """
    sampler: DistributedSampler | BalancedSampler
    if balanced:  # class-balanced draws with replacement (data.sampler balanced), sharded the same way
        sampler = BalancedSampler([s.label for s in dataset.samples], seed=seed, num_replicas=world_size, rank=rank)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=False)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch * 1_009 + rank)
    n_workers = default_workers(workers, accelerator=pin_memory)  # pinned memory only serves an accelerator
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=n_workers,
        collate_fn=collate_fn or collate_skipping,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if n_workers > 0 else None,
    )
