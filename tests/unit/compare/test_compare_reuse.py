"""compare reuses a run folder only when its config.yaml is the config this call would train.

Otherwise it refuses up front, before anything trains, naming the folder, every differing setting and the fix.
No model trains here: the run folders are written by hand, and ``train``/``resume`` are replaced by stand-ins
that record the call and stop the comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import transferkit.recommender as recommender
import transferkit.workflow as workflow
from transferkit.compare import compare
from transferkit.config import config_from_dict, config_to_dict
from transferkit.errors import ConfigError
from transferkit.workflow import build_config

SMALL = dict(backbone="efficientnet_lite0", input_size=32, batch_size=8, workers=0)


class Stop(Exception):
    """Raised by the stand-ins: the comparison got as far as training or resuming a run."""


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(what, run folder) of every train/resume the comparison starts; the first one stops it."""
    seen: list[tuple[str, str]] = []

    def fake_train(data: Any, **kwargs: Any) -> Any:
        seen.append(("train", kwargs["out"]))
        raise Stop

    def fake_resume(run_dir: Any, quiet: bool = False) -> Any:
        seen.append(("resume", str(run_dir)))
        raise Stop

    monkeypatch.setattr(workflow, "train", fake_train)
    monkeypatch.setattr(workflow, "resume", fake_resume)
    return seen


def _write_run(run_dir: Path, data: Path, strategy: str, seed: int, finished: bool = True, **settings: Any) -> None:
    """A run folder as the trainer leaves it: config.yaml of the resolved config, summary.json when finished."""
    cfg = build_config(data, strategy=strategy, seed=seed, split_seed=0, out=str(run_dir), **settings)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    if finished:
        summary = {"metrics": {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5, "roc_auc": 0.5},
                   "epochs_run": settings.get("epochs", 10), "time_s": 1.0, "selected_epoch": 1,
                   "params": {"trainable": 10, "total": 100}}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        rows = [{"path": f"/d/{i}.png", "label": i % 2, "probs": [0.6, 0.4]} for i in range(8)]
        (run_dir / "test_predictions.json").write_text(json.dumps(rows))


def test_other_settings_are_refused_before_anything_trains(tmp_path: Path, calls: list):
    data, out = tmp_path / "data", tmp_path / "cmp"
    for strategy in ("feature-extraction", "finetune"):
        for seed in range(2):
            _write_run(out / strategy / f"seed{seed}", data, strategy, seed, epochs=1, lr=0.001, **SMALL)
    with pytest.raises(ConfigError) as info:
        compare(data, ["feature-extraction", "finetune"], seeds=2, out=out, quiet=True,
                               epochs=3, lr=0.01, **SMALL)
    message = str(info.value)
    for strategy in ("feature-extraction", "finetune"):
        for seed in range(2):
            assert str(out / strategy / f"seed{seed}") in message
    assert "engine.epochs 3 requested, 1 found" in message
    assert "optim.lr 0.01 requested, 0.001 found" in message
    assert "--out" in message and "delete" in message
    assert "engine.batch_size" not in message and "engine.seed" not in message  # only what differs
    assert calls == []  # nothing trained
    assert not (out / "comparison.json").exists()


def test_refused_before_the_first_strategy_trains(tmp_path: Path, calls: list):
    """The conflicting folder belongs to the second strategy: the first must not train for nothing."""
    data, out = tmp_path / "data", tmp_path / "cmp"
    _write_run(out / "finetune" / "seed0", data, "finetune", 0, epochs=1, **SMALL)
    with pytest.raises(ConfigError, match=r"engine\.epochs 2 requested, 1 found"):
        compare(data, ["feature-extraction", "finetune"], seeds=1, out=out, quiet=True, epochs=2, **SMALL)
    assert calls == []


def test_per_strategy_settings_are_part_of_the_requested_config(tmp_path: Path, calls: list):
    data, out = tmp_path / "data", tmp_path / "cmp"
    _write_run(out / "finetune" / "seed0", data, "finetune", 0, epochs=1, lr=0.01, **SMALL)
    per_strategy = {"finetune": {"lr": 0.0001}}
    with pytest.raises(ConfigError, match=r"optim\.lr 0\.0001 requested, 0\.01 found"):
        compare(data, ["finetune"], seeds=1, out=out, quiet=True, per_strategy=per_strategy,
                               epochs=1, lr=0.01, **SMALL)
    assert calls == []


def test_an_unfinished_run_is_resumed_with_the_same_settings_and_refused_with_others(tmp_path: Path, calls: list):
    data, out = tmp_path / "data", tmp_path / "cmp"
    run = out / "finetune" / "seed0"
    _write_run(run, data, "finetune", 0, finished=False, epochs=2, **SMALL)
    (run / "last_state.safetensors").write_bytes(b"")  # a committed checkpoint: epochs worth keeping
    with pytest.raises(ConfigError, match=r"engine\.epochs 3 requested, 2 found"):
        compare(data, ["finetune"], seeds=1, out=out, quiet=True, epochs=3, **SMALL)
    assert calls == []
    with pytest.raises(Stop):
        compare(data, ["finetune"], seeds=1, out=out, quiet=True, epochs=2, **SMALL)
    assert calls == [("resume", str(run))]


def test_a_folder_without_a_checkpoint_or_config_trains_afresh(tmp_path: Path, calls: list):
    data, out = tmp_path / "data", tmp_path / "cmp"
    (out / "finetune" / "seed0").mkdir(parents=True)  # killed before its header was written
    with pytest.raises(Stop):
        compare(data, ["finetune"], seeds=1, out=out, quiet=True, epochs=2, **SMALL)
    assert calls == [("train", str(out / "finetune" / "seed0"))]


def test_a_finished_run_without_config_yaml_is_refused(tmp_path: Path, calls: list):
    data, out = tmp_path / "data", tmp_path / "cmp"
    run = out / "finetune" / "seed0"
    _write_run(run, data, "finetune", 0, epochs=1, **SMALL)
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="no config.yaml"):
        compare(data, ["finetune"], seeds=1, out=out, quiet=True, epochs=1, **SMALL)
    assert calls == []


def test_auto_is_compared_with_what_the_recommender_resolves_now(tmp_path: Path, calls: list,
                                                                 monkeypatch: pytest.MonkeyPatch):
    """strategy auto: the run's config.yaml holds the recommended strategy and settings, not 'auto'."""
    data, out = tmp_path / "data", tmp_path / "cmp"
    seen_explicit: list = []

    def fake_resolve(cfg: Any, quiet: bool = False, explicit: Any = frozenset()) -> Any:
        seen_explicit.append(set(explicit))
        resolved = config_to_dict(cfg)
        resolved["strategy"].update(name="finetune", bn="train")
        if "engine.epochs" not in explicit:
            resolved["engine"]["epochs"] = 7
        return config_from_dict(resolved)

    monkeypatch.setattr(recommender, "resolve_auto", fake_resolve)
    run = out / "auto" / "seed0"
    _write_run(run, data, "finetune", 0, epochs=1, bn="frozen", **SMALL)  # recommended finetune, BN then frozen
    with pytest.raises(ConfigError) as info:
        compare(data, ["auto"], seeds=1, out=out, quiet=True, epochs=1, **SMALL)
    message = str(info.value)
    assert "strategy.bn 'train' requested, 'frozen' found" in message
    assert "strategy.name" not in message and "engine.epochs" not in message
    assert {"engine.epochs", "strategy.name", "engine.seed", "data.split_seed", "data.path"} <= seen_explicit[0]
    assert calls == []


def test_a_config_from_an_older_version_or_an_unreadable_one_is_refused_by_name(tmp_path: Path, calls: list):
    data, out = tmp_path / "data", tmp_path / "cmp"
    old, broken = out / "finetune" / "seed0", out / "finetune" / "seed1"
    for seed, run in enumerate((old, broken)):
        _write_run(run, data, "finetune", seed, epochs=1, **SMALL)
    raw = yaml.safe_load((old / "config.yaml").read_text())
    del raw["optim"]["class_weights"]  # a run from before the setting existed: what it did is unknown
    (old / "config.yaml").write_text(yaml.safe_dump(raw))
    (broken / "config.yaml").write_text("engine: {epochs: [1, 2]\n")
    with pytest.raises(ConfigError) as info:
        compare(data, ["finetune"], seeds=2, out=out, quiet=True, epochs=1, **SMALL)
    message = str(info.value)
    assert f"{old}: optim.class_weights 'auto' requested, not recorded found" in message
    assert f"{broken}: its config.yaml cannot be read as a run config" in message
    assert calls == []


def test_the_same_data_folder_spelt_relative_is_the_same_setting(tmp_path: Path, calls: list,
                                                                  monkeypatch: pytest.MonkeyPatch):
    data, out = tmp_path / "data", tmp_path / "cmp"
    _write_run(out / "finetune" / "seed0", data, "finetune", 0, epochs=1, **SMALL)
    _write_run(out / "finetune" / "seed1", data, "finetune", 1, finished=False, epochs=1, **SMALL)  # trains next
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Stop):  # seed0 passed the check and is reused; seed1 (no checkpoint) trains
        compare("data", ["finetune"], seeds=2, out="cmp", quiet=True, epochs=1, **SMALL)
    assert calls == [("train", str(Path("cmp") / "finetune" / "seed1"))]
