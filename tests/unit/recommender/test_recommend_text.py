"""The recommender's advice matches what it does: its ratios come from the plan, its command parses."""

from __future__ import annotations

import re
import shlex

import pytest
from typer.testing import CliRunner

import transferkit.api as api
from transferkit.api import FLAT_KEYS, build_config
from transferkit.cli import app
from transferkit.config import config_to_dict
from transferkit.models.backbones import resolve_spec
from transferkit.strategy.plan import HEAD, make_plan
from transferkit.recommender import FAR_DOMAIN_SHIFT, decide

CASES = [(100, 0.05), (3000, 0.05), (20000, 0.05), (100, 1.0), (20000, 1.0)]


def _measurements(per_class: int, shift: float) -> dict:
    return {"backbone": "efficientnet_lite0", "n_train": per_class * 3, "n_classes": 3, "min_per_class": per_class,
            "max_per_class": per_class, "median_per_class": per_class, "imbalance": 1.0, "bn_shift": shift,
            "far_domain": shift > FAR_DOMAIN_SHIFT, "probe_accuracy": 0.9, "probe_images": 64}


def _recommended_config(rec):
    dotted = {FLAT_KEYS[key]: value for key, value in rec.settings.items()}
    return build_config("DATA", overrides={**dotted, "strategy.name": rec.strategy})


def _suggested_argv(text: str) -> list[str]:
    match = re.search(r"(transferkit train .*)$", text, re.MULTILINE)
    assert match, f"no `transferkit train ...` command in the explanation:\n{text}"
    return shlex.split(match.group(1))


@pytest.mark.parametrize(("per_class", "shift"), CASES)
def test_suggested_command_parses_to_the_recommended_settings(per_class: int, shift: float,
                                                              monkeypatch: pytest.MonkeyPatch):
    rec = decide(_measurements(per_class, shift))
    argv = _suggested_argv(rec.explain())
    captured: dict = {}
    monkeypatch.setattr(api, "train", lambda data=None, **kwargs: captured.update(kwargs, data=data))
    result = CliRunner().invoke(app, argv[1:])
    assert result.exit_code == 0, f"{shlex.join(argv)}\n{result.output}"
    data, config, overrides = captured.pop("data"), captured.pop("config"), captured.pop("overrides")
    parsed = build_config(data, config, overrides, **captured)
    assert config_to_dict(parsed) == config_to_dict(_recommended_config(rec))


@pytest.mark.parametrize(("per_class", "shift"), [c for c in CASES if decide(_measurements(*c)).strategy
                                                  != "feature-extraction"])
def test_stated_rate_ratio_is_the_plans(per_class: int, shift: float):
    rec = decide(_measurements(per_class, shift))
    cfg = _recommended_config(rec)
    groups = list(resolve_spec("efficientnet_lite0").layer_groups)
    plan = make_plan(cfg.strategy, groups, cfg.engine.epochs)
    backbone_rates = [rate for epoch in range(cfg.engine.epochs) for group, rate in plan.at(epoch).items()
                      if group != HEAD and rate > 0]
    ratio = 1.0 / min(backbone_rates)
    stated = re.findall(r"(\d+(?:\.\d+)?)x slower", rec.explain())
    assert stated, rec.explain()
    assert all(abs(float(value) - ratio) < 0.5 for value in stated), (stated, ratio, rec.explain())


def test_every_flat_key_is_a_train_flag():
    """The suggested command renders flat keys as flags, so each one must exist on `train`."""
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}, terminal_width=200)
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    missing = [key for key in FLAT_KEYS if f"--{key.replace('_', '-')}" not in text]
    assert not missing, f"FLAT_KEYS without a `transferkit train` flag: {missing}"
