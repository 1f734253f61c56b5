"""Unit tests of the adaptation building blocks: gradient reversal, schedules, CORAL, AdaBN, label-free target data."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_image_folder
from transferkit.adapt.bn import adabn, batchnorm_modules, bn_statistics, load_bn_statistics
from transferkit.adapt.config import AdaptCfg, adapt_cfg_from_dict
from transferkit.adapt.data import UNLABELLED, labelled_eval_samples, unlabelled_samples
from transferkit.adapt.layers import DomainDiscriminator, GradientReversal, coral_loss, dann_lambda, dann_lr_factor, grad_reverse
from transferkit.errors import ConfigError, DataError

# --- gradient reversal ---------------------------------------------------------------------------


@pytest.mark.parametrize("coeff", [1.0, 0.37, 3.0, 0.0])
def test_grad_reverse_is_identity_forward_and_exactly_minus_coeff_backward(coeff: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 7, requires_grad=True)
    upstream = torch.randn(5, 7)
    y = grad_reverse(x, coeff)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.equal(x.grad, upstream.neg() * coeff)


def test_gradient_reversal_flips_the_gradient_reaching_earlier_layers() -> None:
    """Through a real network: the layer before the reversal gets exactly -coeff x its normal gradient
    (coeff a power of two, so the scaling is exact in floating point), the layer after is untouched."""
    torch.manual_seed(0)
    encoder, critic = nn.Linear(6, 4), nn.Linear(4, 1)
    x = torch.randn(8, 6)

    def grads(coeff: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        encoder.zero_grad()
        critic.zero_grad()
        feats = encoder(x)
        out = critic(feats if coeff is None else GradientReversal(coeff)(feats))
        out.pow(2).mean().backward()
        return encoder.weight.grad.clone(), critic.weight.grad.clone()

    plain_enc, plain_critic = grads(None)
    rev_enc, rev_critic = grads(0.25)
    assert torch.equal(rev_enc, plain_enc * -0.25)
    assert torch.equal(rev_critic, plain_critic)


def test_dann_schedules_follow_the_paper() -> None:
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.5, cap=0.3) == pytest.approx(0.3 * (2 / (1 + math.exp(-5)) - 1))
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] < 1.0
    assert dann_lr_factor(0.0) == 1.0
    assert dann_lr_factor(1.0) == pytest.approx(11 ** -0.75)
    assert dann_lr_factor(2.0) == dann_lr_factor(1.0)  # progress is clamped


def test_domain_discriminator_shapes_and_no_batchnorm() -> None:
    disc = DomainDiscriminator(16, hidden=8, layers=2)
    assert disc(torch.randn(5, 16)).shape == (5,)
    assert not batchnorm_modules(disc)  # fed one domain at a time, BatchNorm would hide the shift
    assert DomainDiscriminator(16, layers=0)(torch.randn(3, 16)).shape == (3,)


# --- CORAL -----------------------------------------------------------------------------------------


def test_coral_loss_matches_the_formula_and_is_zero_for_equal_statistics() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=(20, 3))
    t = rng.normal(size=(15, 3)) * np.array([1.0, 2.0, 0.5]) + 3.0
    expected = ((np.cov(s, rowvar=False) - np.cov(t, rowvar=False)) ** 2).sum() / (4 * 3 * 3)
    got = coral_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    assert float(got) == pytest.approx(expected, rel=1e-4)
    same = torch.tensor(s, dtype=torch.float32)
    assert float(coral_loss(same, same + 5.0)) == pytest.approx(0.0, abs=1e-7)  # a mean shift is not CORAL's business
    feats = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    coral_loss(feats, torch.tensor(t, dtype=torch.float32)).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


# --- AdaBN -------------------------------------------------------------------------------------------


class _Net(nn.Module):
    """conv-BN-ReLU-dropout-conv-BN-pool + head: enough to see which buffers AdaBN may touch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.conv2, self.bn2 = nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)
        self.head = nn.Linear(5, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.bn1(self.conv1(x))))
        return self.bn2(self.conv2(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _batches(images: torch.Tensor, size: int):
    return [{"images": images[i:i + size], "labels": None} for i in range(0, len(images), size)]


def _source_trained_net(seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    net = _Net()
    net.train()
    with torch.no_grad():
        for _ in range(20):  # "source" statistics: mean 0, std 1 images
            net(torch.randn(16, 3, 8, 8))
    return net.eval()


def test_adabn_changes_only_batchnorm_running_statistics() -> None:
    net = _source_trained_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    target = torch.randn(64, 3, 8, 8) * 3.0 + 2.0
    n = adabn(net, _batches(target, 16), torch.device("cpu"))
    assert n == 64
    after = net.state_dict()
    stat_keys = set(bn_statistics(net))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= stat_keys  # weights, biases, the head: bit-identical
    assert {"bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"} <= changed
    assert not net.training and all(m.momentum == 0.1 for _, m in batchnorm_modules(net))


def test_adabn_moves_statistics_onto_the_target_statistics() -> None:
    net = _source_trained_net()
    target = torch.randn(64, 3, 8, 8) * 3.0 + 2.0
    with torch.no_grad():  # what bn1 sees on the target: conv1's output (conv1 is not changed by AdaBN)
        act = net.conv1(target)
    target_mean, target_var = act.mean((0, 2, 3)), act.var((0, 2, 3))
    old_gap = (net.bn1.running_mean - target_mean).abs().max()
    adabn(net, _batches(target, 16), torch.device("cpu"))
    new_gap = (net.bn1.running_mean - target_mean).abs().max()
    assert new_gap < 1e-4 < old_gap  # equal batches: the cumulative mean of batch means is the target mean
    assert torch.allclose(net.bn1.running_var, target_var, rtol=0.05)
    # the old (source) statistics are forgotten, not blended: any starting point gives the same result
    other = _source_trained_net(seed=0)
    load_bn_statistics(other, {k: torch.full_like(v, 7.0) if v.is_floating_point() else v for k, v in bn_statistics(other).items()})
    adabn(other, _batches(target, 16), torch.device("cpu"))
    for key, value in bn_statistics(net).items():
        if value.is_floating_point():
            assert torch.allclose(value, bn_statistics(other)[key], atol=1e-6)


def test_adabn_with_no_usable_batch_keeps_the_old_statistics() -> None:
    net = _source_trained_net()
    before = bn_statistics(net)
    assert adabn(net, [{"images": None}, {"images": torch.randn(1, 3, 8, 8)}], torch.device("cpu")) == 0
    for key, value in bn_statistics(net).items():
        assert torch.equal(value, before[key])


# --- label-free target data -------------------------------------------------------------------------


def test_target_folder_is_read_without_labels_and_ordered_by_file_name(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "t", {"a": 3, "b": 2}, size=12)
    (tmp_path / "t" / ".hidden.jpg").write_bytes(b"junk")
    samples, skipped = unlabelled_samples(tmp_path / "t")
    assert len(samples) == 5 and not skipped
    assert {s.label for s in samples} == {UNLABELLED}
    names = [Path(s.path).name for s in samples]
    assert names == sorted(names)
    # moving files between class folders (relabelling them) changes nothing about the training samples' order
    shutil.move(str(tmp_path / "t" / "a" / "a_000.jpg"), tmp_path / "t" / "b" / "a_000.jpg")
    moved, _ = unlabelled_samples(tmp_path / "t")
    assert [Path(s.path).name for s in moved] == names


def test_target_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        unlabelled_samples(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        unlabelled_samples(tmp_path / "empty")


def test_eval_labels_follow_the_source_class_names(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "e", {"c": 2, "a": 1}, size=12)
    samples, _ = labelled_eval_samples(tmp_path / "e", ["a", "b", "c"])
    assert sorted((Path(s.path).parent.name, s.label) for s in samples) == [("a", 0), ("c", 2), ("c", 2)]
    make_image_folder(tmp_path / "bad", {"zebra": 1, "a": 1}, size=12)
    with pytest.raises(DataError, match="zebra"):
        labelled_eval_samples(tmp_path / "bad", ["a", "b"])


def test_adapt_config_refuses_unknown_and_invalid_options() -> None:
    with pytest.raises(ConfigError, match="lamda_max"):
        adapt_cfg_from_dict({"lamda_max": 1.0})
    with pytest.raises(ConfigError, match="method"):
        AdaptCfg(method="mmd")
    assert AdaptCfg(method="coral", coral_weight=2.0).coral_weight == 2.0


# --- one orchestrator --------------------------------------------------------------------------------


def test_no_epoch_loop_exists_twice() -> None:
    """The Trainer's loop (engine.loop.train_one_epoch, called from Trainer._run_epoch) is the only one:
    adapt contributes a step objective and a hook, no loop of its own, and no other optimizer step."""
    import ast

    import transferkit

    root = Path(transferkit.__file__).parent
    assert not (root / "adapt" / "loop.py").exists()
    callers: dict[str, set[str]] = {"train_one_epoch": set(), "optimizer_step": set()}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in callers:
                    callers[name].add(str(path.relative_to(root)))
    assert callers == {"train_one_epoch": {"engine/trainer.py"}, "optimizer_step": {"engine/loop.py"}}
    adapt_sources = "".join(p.read_text(encoding="utf-8") for p in (root / "adapt").glob("*.py"))
    assert "StepContext(" not in adapt_sources and "build_optimizer(self.index" not in adapt_sources
