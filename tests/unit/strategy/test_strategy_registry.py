"""The strategy registry (transferkit.strategy.plan.STRATEGIES) is the only list of strategy names.

Config validation, compare's defaults and the recommender's choices read it; a strategy registered at
runtime trains by name with no other change; and the built-in plans (learning-rate scales per epoch and
layer group, BatchNorm policy, pretrained start) are exactly those captured before the registry existed.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import transferkit as tk
import transferkit.config as config_module
from transferkit.config import StrategyCfg, config_from_dict
from transferkit.errors import ConfigError, StrategyError
from transferkit.registry import Registry
from transferkit.strategy import plan as plan_module
from transferkit.strategy.plan import (
    AUTO,
    HEAD,
    check_strategy_name,
    default_comparison,
    get_strategy,
    make_plan,
    register_strategy,
    strategy_names,
    uses_pretrained,
)
from transferkit.recommender import Recommendation, decide

from conftest import REPO, TINY

GROUPS = ["stem", "block1", "block2", "block3"]


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A copy of the registry for this test: strategies it registers vanish afterwards."""
    fresh: Registry = Registry("strategy")
    for name in plan_module.STRATEGIES:
        fresh.register(name, plan_module.STRATEGIES.get(name))
    monkeypatch.setattr(plan_module, "STRATEGIES", fresh)
    return fresh


# --- one list ------------------------------------------------------------------------------------------------


def test_config_holds_no_list_of_names_and_does_not_import_the_strategy_layer():
    assert not hasattr(config_module, "STRATEGY_NAMES")
    tree = ast.parse((REPO / "transferkit" / "config.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not [m for m in imported if m.startswith("transferkit.") and m not in ("transferkit.errors",
                                                                                    "transferkit.registry",
                                                                                    "transferkit.fileio")]


def test_validation_accepts_exactly_the_registered_names_and_auto():
    assert strategy_names() == plan_module.STRATEGIES.names() + [AUTO]
    assert strategy_names(include_auto=False) == plan_module.STRATEGIES.names()
    for name in strategy_names():
        check_strategy_name(name)
        assert config_from_dict({"strategy": {"name": name}}).strategy.name == name
    with pytest.raises(ConfigError, match=r"strategy.name 'fintune' is not one of .*did you mean 'finetune'"):
        check_strategy_name("fintune")
    with pytest.raises(ConfigError, match="is not one of " + ", ".join(strategy_names())):
        check_strategy_name("nonsense")


def test_the_trainer_refuses_an_unknown_name_before_loading_anything(tmp_path: Path):
    cfg = config_from_dict({"data": {"path": str(tmp_path / "missing")}, "strategy": {"name": "fine-tune"}})
    with pytest.raises(ConfigError, match="did you mean 'finetune'"):
        tk.train(config={"data": {"path": str(tmp_path / "missing")}, "strategy": {"name": "fine-tune"}}, quiet=True)
    from transferkit.engine.trainer import Trainer

    with pytest.raises(ConfigError, match="is not one of"):
        Trainer(cfg)


def test_compare_defaults_are_the_registered_strategies_marked_for_comparison():
    compare_module = importlib.import_module("transferkit.compare")
    marked = tuple(name for name in strategy_names(include_auto=False) if get_strategy(name).compare)
    assert compare_module.DEFAULT_STRATEGIES == default_comparison() == marked
    # unchanged by the move: the same rows in the same order as before the registry
    assert marked == ("scratch", "feature-extraction", "finetune", "lp-ft", "gradual")


def _measurements(per_class: int, far: bool) -> dict:
    return {"median_per_class": per_class, "far_domain": far, "bn_shift": 0.9 if far else 0.05,
            "layer_groups": GROUPS}


def test_the_recommender_chooses_only_registered_strategies():
    choices = {decide(_measurements(n, far)).strategy for n in (50, 5_000, 50_000) for far in (False, True)}
    assert choices <= set(strategy_names(include_auto=False))
    assert len(choices) == 4  # every row of the decision table is reachable
    with pytest.raises(ConfigError, match="is not one of"):
        Recommendation("fine-tune-all", {}, [], {})
    with pytest.raises(StrategyError, match="has no plan"):
        Recommendation(AUTO, {}, [], {})


def test_the_report_reads_whether_a_strategy_starts_pretrained():
    assert [n for n in strategy_names(include_auto=False) if not uses_pretrained(n)] == ["scratch"]
    assert uses_pretrained(None) and uses_pretrained("a-strategy-from-an-old-run")


def test_strategy_names_load_without_torch():
    code = ("import sys; from transferkit.strategy.plan import strategy_names; names = strategy_names(); "
            "heavy = [m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules]; "
            "assert not heavy and 'finetune' in names, (heavy, names)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- adding a strategy is one function ------------------------------------------------------------------------


def test_a_strategy_registered_at_runtime_trains_by_name(isolated_registry: Registry, tmp_path: Path):
    from conftest import make_image_folder

    @register_strategy("toy-top-first", compare=False)
    def _toy(cfg: StrategyCfg, base: list[float], epochs: int) -> list[tuple[float, ...]]:
        """Head alone in the first epoch, then the last layer group joins it."""
        frozen = [0.0] * (len(base) - 1)
        return [tuple(frozen + [0.0, 1.0])] + [tuple(frozen + [base[-1], 1.0])] * (epochs - 1)

    assert "toy-top-first" in strategy_names() and "toy-top-first" not in default_comparison()
    assert get_strategy("toy-top-first").description == "Head alone in the first epoch, then the last layer group joins it."
    data = make_image_folder(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})
    out = tmp_path / "run"
    run = tk.train(data, strategy="toy-top-first", epochs=2, lr=1e-2, out=str(out), **TINY)
    assert run.summary["strategy"] == "toy-top-first"
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    last = plan["groups"][-2]
    assert plan["bn"] == "frozen"  # auto: the plan freezes backbone groups
    assert [[g for g, s in row.items() if s > 0] for row in plan["epochs"]] == [[HEAD], [last, HEAD]]
    assert plan["epochs"][1][last] == pytest.approx(0.1)  # the default backbone_lr_scale
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records[-1]["trainable_groups"] == [last, HEAD]


def test_a_registered_name_cannot_be_taken_twice_or_be_auto(isolated_registry: Registry):
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("finetune")(lambda cfg, base, epochs: [])
    with pytest.raises(ValueError, match="reserved"):
        register_strategy(AUTO)(lambda cfg, base, epochs: [])


# --- the built-in plans are unchanged --------------------------------------------------------------------------

Z = [0.0, 0.0, 0.0, 0.0, 1.0]  # backbone frozen, head at the base rate
ONES = [1.0] * 5
FT = [0.1, 0.1, 0.1, 0.1, 1.0]
DECAY = [0.1296, 0.21599999999999997, 0.36, 0.6, 1.0]  # layer_decay 0.6: 0.6 ** (distance from the head)

# captured from make_plan before the registry existed (4 backbone groups, 5 epochs): (bn, pretrained, rows)
BEFORE = {
    "default": ({}, {
        "scratch": ("train", False, [ONES] * 5),
        "feature-extraction": ("frozen", True, [Z] * 5),
        "finetune": ("train", True, [FT] * 5),
        "partial": ("frozen", True, [[0.0, 0.0, 0.1, 0.1, 1.0]] * 5),
        "lp-ft": ("frozen", True, [Z] * 2 + [FT] * 3),
        "gradual": ("frozen", True, [Z, [0.0, 0.0, 0.0, 0.1, 1.0], [0.0, 0.0, 0.1, 0.1, 1.0],
                                     [0.0, 0.1, 0.1, 0.1, 1.0], FT]),
    }),
    "decay": ({"layer_decay": 0.6, "unfreeze": 3, "warmup_epochs": 1, "unfreeze_every": 2}, {
        "scratch": ("train", False, [ONES] * 5),
        "feature-extraction": ("frozen", True, [Z] * 5),
        "finetune": ("train", True, [DECAY] * 5),
        "partial": ("frozen", True, [[0.0] + DECAY[1:]] * 5),
        "lp-ft": ("frozen", True, [Z] + [DECAY] * 4),
        "gradual": ("frozen", True, [Z, Z, [0.0, 0.0, 0.0, 0.6, 1.0], [0.0, 0.0, 0.0, 0.6, 1.0],
                                     [0.0, 0.0, 0.36, 0.6, 1.0]]),
    }),
}


@pytest.mark.parametrize("variant", sorted(BEFORE))
def test_builtin_learning_rate_plans_are_unchanged(variant: str):
    settings, expected = BEFORE[variant]
    assert set(expected) == set(strategy_names(include_auto=False))
    for name, (bn, pretrained, rows) in expected.items():
        plan = make_plan(StrategyCfg(name=name, **settings), GROUPS, 5)
        assert plan.groups == tuple(GROUPS) + (HEAD,)
        assert [list(row) for row in plan.scales] == rows, name
        assert (plan.bn, plan.pretrained, plan.strategy) == (bn, pretrained, name)


def test_builtin_plan_errors_are_unchanged():
    with pytest.raises(StrategyError, match=r"^--bn frozen makes no sense with scratch: random BatchNorm statistics "
                                            r"would stay random$"):
        make_plan(StrategyCfg(name="scratch", bn="frozen"), GROUPS, 5)
    with pytest.raises(StrategyError, match=r"^lp-ft: --warmup-epochs 2 leaves no fine-tuning epoch of 1; raise "
                                            r"--epochs or lower --warmup-epochs$"):
        make_plan(StrategyCfg(name="lp-ft"), GROUPS, 1)
    with pytest.raises(StrategyError, match=r"^--unfreeze 5 exceeds the 4 layer groups of this backbone$"):
        make_plan(StrategyCfg(name="partial", unfreeze=5), GROUPS, 5)
    with pytest.raises(StrategyError, match=r"^strategy 'auto' has no plan \(resolve 'auto' with the recommender first\)$"):
        make_plan(StrategyCfg(name=AUTO), GROUPS, 5)
