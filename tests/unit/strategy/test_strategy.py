"""Strategies: plans are right, frozen means bit-identical, BatchNorm stays pinned, LRs follow the plan."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import transferkit as tk
from transferkit.config import StrategyCfg
from transferkit.errors import StrategyError
from transferkit.models.backbones import build_backbone, resolve_spec
from transferkit.strategy.optim import lr_factor
from transferkit.strategy.plan import HEAD, make_plan

from conftest import TINY

GROUPS = ["stem", "blocks.0", "blocks.1", "blocks.2"]


def scales(plan, epoch):
    return [plan.at(epoch)[g] for g in plan.groups]


def test_feature_extraction_plan_freezes_backbone_and_pins_bn():
    plan = make_plan(StrategyCfg(name="feature-extraction"), GROUPS, 3)
    assert all(scales(plan, e) == [0, 0, 0, 0, 1.0] for e in range(3))
    assert plan.bn == "frozen"


def test_finetune_plan_uses_backbone_scale_and_trains_bn():
    plan = make_plan(StrategyCfg(name="finetune", backbone_lr_scale=0.1), GROUPS, 2)
    assert scales(plan, 0) == [0.1, 0.1, 0.1, 0.1, 1.0]
    assert plan.bn == "train"
    assert make_plan(StrategyCfg(name="finetune", bn="frozen"), GROUPS, 2).bn == "frozen"


def test_partial_unfreezes_last_k_groups():
    plan = make_plan(StrategyCfg(name="partial", unfreeze=2, backbone_lr_scale=0.5), GROUPS, 2)
    assert scales(plan, 1) == [0, 0, 0.5, 0.5, 1.0]
    with pytest.raises(StrategyError, match="exceeds"):
        make_plan(StrategyCfg(name="partial", unfreeze=5), GROUPS, 2)


def test_lp_ft_warms_up_head_then_unfreezes_everything():
    plan = make_plan(StrategyCfg(name="lp-ft", warmup_epochs=2), GROUPS, 4)
    assert [plan.trainable_groups(e) for e in range(4)] == [[HEAD], [HEAD], GROUPS + [HEAD], GROUPS + [HEAD]]
    with pytest.raises(StrategyError, match="warmup"):
        make_plan(StrategyCfg(name="lp-ft", warmup_epochs=4), GROUPS, 4)


def test_gradual_unfreezes_one_group_every_m_epochs_top_down():
    plan = make_plan(StrategyCfg(name="gradual", unfreeze_every=2), GROUPS, 9)
    counts = [len(plan.trainable_groups(e)) - 1 for e in range(9)]
    assert counts == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert plan.trainable_groups(2) == ["blocks.2", HEAD]  # the last block first


def test_layer_decay_and_explicit_multipliers():
    plan = make_plan(StrategyCfg(name="finetune", layer_decay=0.5), GROUPS, 1)
    assert scales(plan, 0) == [0.0625, 0.125, 0.25, 0.5, 1.0]
    plan = make_plan(StrategyCfg(name="finetune", group_lr_scales=(0.01, 0.01, 0.1, 0.1)), GROUPS, 1)
    assert scales(plan, 0) == [0.01, 0.01, 0.1, 0.1, 1.0]
    with pytest.raises(StrategyError, match="4 layer groups"):
        make_plan(StrategyCfg(name="finetune", group_lr_scales=(0.1, 1.0)), GROUPS, 1)


def test_scratch_refuses_frozen_bn():
    with pytest.raises(StrategyError, match="scratch"):
        make_plan(StrategyCfg(name="scratch", bn="frozen"), GROUPS, 1)


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)


# --- on real training runs (tiny data, 32 px) -------------------------------------------------


def _pretrained_state(input_size: int = 32) -> dict[str, torch.Tensor]:
    spec = resolve_spec("efficientnet_lite0").with_input_size(input_size)
    return {f"backbone.{k}": v for k, v in build_backbone(spec).state_dict().items()}


def _group_of(name: str, plan_groups: list[str]) -> str:
    if name.startswith("head."):
        return HEAD
    rest = name[len("backbone."):]
    for group in plan_groups:
        if group.startswith("blocks.") and rest.startswith(group + "."):
            return group
    if rest.startswith(("conv_head", "bn2")):
        return "blocks.6"
    return "stem"


def test_partial_keeps_frozen_weights_and_bn_stats_bit_identical(tiny_folder: Path, tmp_path: Path):
    out = tmp_path / "run"
    tk.train(tiny_folder, strategy="partial", unfreeze=1, epochs=2, lr=1e-2, out=str(out), **TINY)
    trained = load_file(str(out / "model.safetensors"))
    before = _pretrained_state()
    plan = json.loads((out / "plan.json").read_text())
    changed, frozen_checked = set(), 0
    for name, value in before.items():
        group = _group_of(name, plan["groups"])
        if group == "blocks.6":
            if not torch.equal(value, trained[name]) and "running" not in name:
                changed.add(name)
            if "running_mean" in name or "running_var" in name:  # bn auto -> frozen for partial
                assert torch.equal(value, trained[name]), name
        else:
            assert torch.equal(value, trained[name]), f"frozen {name} moved"
            frozen_checked += 1
    assert frozen_checked > 100
    assert changed, "the unfrozen last group did not train at all"


def test_frozen_bn_policy_pins_running_stats_while_weights_train(tiny_folder: Path, tmp_path: Path):
    out = tmp_path / "run"
    tk.train(tiny_folder, strategy="finetune", bn="frozen", epochs=1, lr=1e-2, out=str(out), **TINY)
    trained = load_file(str(out / "model.safetensors"))
    before = _pretrained_state()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], trained[k]) for k in stats)
    convs = [k for k in before if k.endswith("conv_stem.weight")]
    assert not torch.equal(before[convs[0]], trained[convs[0]]), "finetune should move the stem weights"


def test_train_bn_policy_does_move_running_stats(tiny_folder: Path, tmp_path: Path):
    """The counterpart that shows the test above can fail."""
    out = tmp_path / "run"
    tk.train(tiny_folder, strategy="finetune", bn="train", epochs=1, out=str(out), **TINY)
    trained = load_file(str(out / "model.safetensors"))
    before = _pretrained_state()
    key = next(k for k in before if k.endswith("bn1.running_mean"))
    assert not torch.equal(before[key], trained[key])


def test_every_groups_lr_follows_the_plan_at_every_step(tiny_folder: Path, tmp_path: Path, monkeypatch):
    """Record every optimizer step's per-group lr; compare to base x schedule x plan scale."""
    import transferkit.engine.trainer as trainer_mod

    seen: list[dict[str, float]] = []
    real_build = trainer_mod.build_optimizer

    def recording_build(*args, **kwargs):
        opt = real_build(*args, **kwargs)
        opt.register_step_pre_hook(lambda o, a, k: seen.append({g["layer_group"]: g["lr"] for g in o.param_groups}))
        return opt

    monkeypatch.setattr(trainer_mod, "build_optimizer", recording_build)
    out = tmp_path / "run"
    lr, epochs, bs = 3e-3, 4, 8
    tk.train(tiny_folder, strategy="lp-ft", warmup_epochs=1, layer_decay=0.7, epochs=epochs, lr=lr,
             out=str(out), cache=False, overrides={"optim.lr_warmup_epochs": 1.0}, **TINY)
    plan = json.loads((out / "plan.json").read_text())
    n_train = len(json.loads((out / "split.json").read_text())["train"])
    steps = math.ceil(n_train / bs)
    assert len(seen) == steps * epochs
    for step, lrs in enumerate(seen):
        epoch = step // steps
        factor = lr_factor(step, steps * epochs, steps, 0.01)
        for group, scale in plan["epochs"][epoch].items():
            assert lrs[group] == pytest.approx(lr * factor * scale, rel=1e-12, abs=0), (step, group)
    assert plan["epochs"][0]["blocks.6"] == 0 and plan["epochs"][1]["blocks.6"] == pytest.approx(0.7)


def test_gradual_unfreezing_happens_at_the_planned_epochs(tiny_folder: Path, tmp_path: Path):
    out = tmp_path / "run"
    tk.train(tiny_folder, strategy="gradual", unfreeze_every=1, epochs=3, out=str(out), **TINY)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["trainable_groups"] for r in records] == [["head"], ["blocks.6", "head"], ["blocks.5", "blocks.6", "head"]]
    assert records[0]["lr"]["blocks.6"] == 0.0 and records[1]["lr"]["blocks.6"] > 0
