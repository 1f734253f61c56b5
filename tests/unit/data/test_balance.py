"""Imbalance: measured per split, weights and sampling as documented, and a split that keeps rare classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_image_folder
from transferkit.config import DataCfg, RunCfg, config_from_dict
from transferkit.data.balance import (
    IMBALANCE_RATIO, BalancedSampler, balanced_indices, class_weights, draw_keys, measure_balance, resolve_balancing,
)
from transferkit.data.datasets import prepare_data
from transferkit.data.scan import Sample
from transferkit.engine.loop import StepContext, classification_loss
from transferkit.errors import DataError


def _samples(counts: list[int]) -> list[Sample]:
    return [Sample(f"{c}_{i}.png", c) for c, n in enumerate(counts) for i in range(n)]


# ---- class weights ----------------------------------------------------------------------------------------

def test_balanced_weights_are_inverse_frequency_and_keep_the_total():
    w = class_weights([80, 15, 5], "balanced")
    assert np.allclose(w, [100 / (3 * 80), 100 / (3 * 15), 100 / (3 * 5)])  # scikit-learn's "balanced"
    assert np.isclose((w * [80, 15, 5]).sum(), 100)


def test_effective_number_weights_follow_cui_et_al():
    beta, n = 0.999, np.array([80.0, 15.0, 5.0])
    raw = (1 - beta) / (1 - beta ** n)
    w = class_weights(n, "effective", beta)
    assert np.allclose(w, raw * n.sum() / (raw * n).sum())
    assert w[2] > w[1] > w[0] and class_weights(n, "none") is None
    assert np.allclose(class_weights([10, 10], "effective"), [1, 1])  # balanced data: no reweighting


def test_the_weighted_loss_on_a_toy_batch_equals_the_hand_computed_one():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -1.0, 3.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 1])
    weights = torch.tensor([0.5, 2.0, 3.0])
    ctx = StepContext(optimizer=None, set_lr=lambda step: None, device=torch.device("cpu"), class_weights=weights)
    nll = -torch.log_softmax(logits, dim=1)[torch.arange(4), labels]
    w = weights[labels]
    expected = (w * nll).sum() / len(labels)  # the batch mean of the weighted losses (not divided by sum w)
    assert torch.isclose(classification_loss(logits, labels, ctx), expected)
    halves = [classification_loss(logits[i:i + 2], labels[i:i + 2], ctx) for i in (0, 2)]
    assert torch.isclose((halves[0] + halves[1]) / 2, expected)  # what averaging two torchrun processes gives
    plain = StepContext(optimizer=None, set_lr=lambda step: None, device=torch.device("cpu"))
    assert torch.isclose(classification_loss(logits, labels, plain), nll.mean())
    smoothed = StepContext(optimizer=None, set_lr=lambda step: None, device=torch.device("cpu"), label_smoothing=0.1)
    assert torch.isclose(classification_loss(logits, labels, smoothed), F.cross_entropy(logits, labels, label_smoothing=0.1))


# ---- the sampler -------------------------------------------------------------------------------------------

def test_the_balanced_sampler_draws_every_class_equally_often():
    labels = np.array([0] * 900 + [1] * 80 + [2] * 20)
    sampler = BalancedSampler(labels, seed=3)
    drawn = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        keys = np.array(list(sampler))
        assert len(set(keys.tolist())) == len(keys)  # repeats of an image come as distinct keys (own augmentation)
        drawn += (keys % len(labels)).tolist()
    assert len(list(sampler)) == len(sampler) == 1000  # an epoch is as long as a plain one
    freq = np.bincount(labels[drawn], minlength=3) / len(drawn)
    assert np.allclose(freq, 1 / 3, atol=0.02), freq
    within = np.bincount(np.asarray(drawn)[labels[drawn] == 2] - 980, minlength=20)
    assert (within > 0).all()  # every rare image is drawn, each about equally
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first  # a resumed epoch replays its draw
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_the_balanced_sampler_shards_one_draw_across_ranks():
    labels = np.array([0] * 45 + [1] * 6)
    ranks = [BalancedSampler(labels, seed=1, num_replicas=2, rank=r) for r in range(2)]
    for s in ranks:
        s.set_epoch(4)
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 26  # ceil(51 / 2), as DistributedSampler pads
    whole = BalancedSampler(labels, seed=1, num_replicas=1)
    g = torch.Generator().manual_seed(1 * 100_003 + 4 * 1_009 + 17)
    draw = draw_keys(balanced_indices(labels, 52, g), len(labels))
    assert shards[0] == draw[0::2].tolist() and shards[1] == draw[1::2].tolist()  # interleaved, one draw
    assert len(whole) == 51


# ---- measuring and resolving ------------------------------------------------------------------------------

def test_balance_counts_every_split_and_the_training_ratio_decides():
    classes = ["ok", "dent", "scratch"]
    b = measure_balance(classes, {"train": _samples([60, 10, 4]), "selection": _samples([9, 2, 2]), "test": _samples([9, 2, 2])})
    assert b.ratio == 15.0 and b.imbalanced and b.threshold == IMBALANCE_RATIO
    record = b.to_dict("balanced_accuracy")
    assert record["counts"]["train"] == {"ok": 60, "dent": 10, "scratch": 4}
    assert record["counts"]["test"] == {"ok": 9, "dent": 2, "scratch": 2} and record["imbalanced"]
    assert np.allclose(b.prior(), np.array([60, 10, 4]) / 74)
    assert "15.0:1" in b.describe() and "imbalanced" in b.describe()
    even = measure_balance(classes, {"train": _samples([30, 12, 10])})
    assert even.ratio == 3.0 and not even.imbalanced  # the threshold itself is not imbalanced
    flat = measure_balance(classes, {"train": _samples([7, 7, 7])})
    assert flat.describe() == "class balance: 1.0:1 (every class 7 training images)"


def test_balance_line_quotes_class_names_and_says_which_is_largest():
    # classes named by numbers read as counts without quotes ("1 128 vs 8 122 training images")
    b = measure_balance(["1", "8"], {"train": _samples([128, 122])})
    assert b.describe() == ("class balance: 1.0:1 (largest class '1': 128, smallest class '8': 122 "
                            "training images)")
    rare = measure_balance(["ok", "dent"], {"train": _samples([60, 4])})
    assert rare.describe() == ("class balance: 15.0:1 (largest class 'ok': 60, smallest class 'dent': 4 "
                               "training images) - imbalanced (> 3:1)")


@pytest.mark.parametrize(("counts", "overrides", "expected"), [
    ([60, 10, 4], {}, ("balanced_accuracy", "balanced", "none", "none")),
    ([30, 12, 10], {}, ("accuracy", "none", "none", "none")),  # balanced data trains as before
    ([60, 10, 4], {"data": {"sampler": "balanced"}}, ("balanced_accuracy", "none", "balanced", "none")),
    ([60, 10, 4], {"optim": {"class_weights": "none"}}, ("balanced_accuracy", "none", "none", "tuned")),
    ([60, 10, 4], {"optim": {"class_weights": "effective"}, "engine": {"monitor": "macro_f1"}},
     ("macro_f1", "effective", "none", "none")),
    ([30, 12, 10], {"engine": {"logit_adjust": "tuned"}}, ("accuracy", "none", "none", "tuned")),
    ([60, 10, 4], {"engine": {"logit_adjust": "tuned"}}, ("balanced_accuracy", "none", "none", "tuned")),  # not stacked
])
def test_auto_settings_resolve_to_one_balancing_method(counts, overrides, expected):
    balance = measure_balance(["a", "b", "c"], {"train": _samples(counts)})
    b = resolve_balancing(config_from_dict(overrides), balance)
    assert (b.monitor, b.class_weights, b.sampler, b.logit_adjust) == expected
    assert (b.weights is None) == (b.class_weights == "none")


# ---- splits keep rare classes measurable -------------------------------------------------------------------

def test_a_flat_split_gives_every_class_the_minimum_in_selection_and_test(tmp_path: Path):
    root = make_image_folder(tmp_path / "flat", {"ok": 40, "rare": 5}, size=24)
    data = prepare_data(DataCfg(path=str(root), validate=False))
    for split in (data.selection, data.test):
        counts = np.bincount([s.label for s in split], minlength=2)
        assert (counts >= 2).all(), counts  # 15% of 5 rounds to 1; the minimum lifts it to 2
    assert sum(s.label == data.classes.index("rare") for s in data.train) == 1
    more = prepare_data(DataCfg(path=str(root), validate=False, min_per_class=1))
    assert sum(s.label == more.classes.index("rare") for s in more.test) == 1


def test_a_class_too_small_to_split_is_refused_naming_it(tmp_path: Path):
    root = make_image_folder(tmp_path / "flat", {"ok": 40, "rare": 4}, size=24)
    with pytest.raises(DataError, match=r"'rare' \(4\).*fewer than 5 images.*--min-per-class"):
        prepare_data(DataCfg(path=str(root), validate=False))
    assert prepare_data(DataCfg(path=str(root), validate=False), select="last").test  # no selection split: 2 + 1


def test_carving_selection_from_train_keeps_the_minimum(tmp_path: Path):
    root = tmp_path / "split"
    make_image_folder(root / "train", {"ok": 30, "rare": 3}, size=24)
    make_image_folder(root / "val", {"ok": 5, "rare": 2}, size=24)
    data = prepare_data(DataCfg(path=str(root), validate=False))
    assert sum(s.label == data.classes.index("rare") for s in data.selection) == 2
    make_image_folder(tmp_path / "tiny" / "train", {"ok": 30, "rare": 2}, size=24)
    make_image_folder(tmp_path / "tiny" / "val", {"ok": 5, "rare": 2}, size=24)
    with pytest.raises(DataError, match="'rare' \\(2\\)"):
        prepare_data(DataCfg(path=str(tmp_path / "tiny"), validate=False))
    assert RunCfg().data.min_per_class == 2


def test_a_repeated_draw_reads_the_same_image_with_its_own_augmentation(tmp_path: Path):
    from torchvision.transforms import v2 as T

    from transferkit.data.datasets import ImageDataset

    assert draw_keys(np.array([3, 1, 3, 3, 0]), 5).tolist() == [3, 1, 8, 13, 0]
    root = make_image_folder(tmp_path / "imgs", {"a": 3}, size=48)
    samples = [Sample(str(p), 0) for p in sorted((root / "a").iterdir())]
    crop = T.Compose([T.PILToTensor(), T.RandomResizedCrop(16, scale=(0.1, 0.3))])
    ds = ImageDataset(samples, crop, augment_seed=7)
    first, again = ds[1], ds[1 + 3]  # image 1, then its second draw in the epoch
    assert first[2] == again[2] == 1 and first[1] == again[1]  # the same image and label are reported
    assert not torch.equal(first[0], again[0])  # ... with another crop
    assert torch.equal(ds[1][0], first[0])  # and each key's view is reproducible


def test_runs_written_before_the_imbalance_settings_resume_as_they_were_trained():
    from transferkit.engine.trainer import _legacy_defaults

    old = {"data": {"path": "x", "split_seed": 0}, "optim": {"lr": 0.001}, "engine": {"monitor": "accuracy"}}
    cfg = config_from_dict(_legacy_defaults(old))
    assert (cfg.data.min_per_class, cfg.data.sampler, cfg.optim.class_weights, cfg.engine.logit_adjust) == (
        1, "none", "none", "none")
    new = config_from_dict(_legacy_defaults({"optim": {"class_weights": "auto"}, "data": {}, "engine": {}}))
    assert new.optim.class_weights == "auto"  # a value the file holds is kept
