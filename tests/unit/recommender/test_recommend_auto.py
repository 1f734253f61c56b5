"""`--strategy auto` fills only what the user left unset: flags, --set values and config-file values win."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import transferkit as tk
import transferkit.workflow as workflow
import transferkit.recommender as recommend_module
from transferkit.cli import app
from transferkit.engine.trainer import RunResult

# A far-domain measurement: the recommender says finetune, 15 epochs, lr 1e-3, layer decay 0.7, BN train, light augment.
FAR = {"backbone": "efficientnet_lite0", "n_train": 36, "n_classes": 3, "min_per_class": 12, "max_per_class": 12,
       "median_per_class": 12, "imbalance": 1.0, "bn_shift": 1.0, "far_domain": True, "probe_accuracy": 0.9,
       "probe_images": 36}


@pytest.fixture
def resolved(monkeypatch: pytest.MonkeyPatch) -> list:
    """The configs the trainer would receive; measuring and training are replaced (no model runs)."""
    seen: list = []

    class CapturingTrainer:
        def __init__(self, cfg, run_dir=None, quiet=False, after_fit=()) -> None:
            seen.append(cfg)

        def fit(self) -> RunResult:
            return RunResult(Path("unused"), {"strategy": seen[-1].strategy.name})

    monkeypatch.setattr(recommend_module, "measure", lambda *args, **kwargs: dict(FAR))
    monkeypatch.setattr(workflow, "Trainer", CapturingTrainer)
    return seen


def test_auto_without_user_settings_takes_the_recommendation(tiny_folder: Path, resolved: list):
    tk.train(tiny_folder, strategy="auto", quiet=True)
    cfg = resolved[-1]
    assert cfg.strategy.name == "finetune"
    assert (cfg.engine.epochs, cfg.optim.lr, cfg.strategy.layer_decay, cfg.strategy.bn) == (15, 1e-3, 0.7, "train")


def test_auto_keeps_explicit_api_arguments(tiny_folder: Path, resolved: list):
    tk.train(tiny_folder, strategy="auto", epochs=1, lr=0.01, layer_decay=0.9, quiet=True,
             overrides={"data.augment": "none"})
    cfg = resolved[-1]
    assert cfg.strategy.name == "finetune"  # 'auto' itself is resolved
    assert (cfg.engine.epochs, cfg.optim.lr, cfg.strategy.layer_decay, cfg.data.augment) == (1, 0.01, 0.9, "none")
    assert cfg.strategy.bn == "train"  # left unset: the recommendation fills it


def test_auto_keeps_config_file_values(tiny_folder: Path, tmp_path: Path, resolved: list):
    config = tmp_path / "run.yaml"
    config.write_text("strategy:\n  name: auto\noptim:\n  lr: 0.05\nengine:\n  epochs: 2\n")
    tk.train(tiny_folder, config=config, quiet=True)
    cfg = resolved[-1]
    assert (cfg.strategy.name, cfg.engine.epochs, cfg.optim.lr, cfg.strategy.layer_decay) == ("finetune", 2, 0.05, 0.7)


def test_auto_keeps_explicit_cli_flags(tiny_folder: Path, tmp_path: Path, resolved: list):
    config = tmp_path / "run.yaml"
    config.write_text("optim:\n  lr: 0.05\n")
    result = CliRunner().invoke(app, ["train", str(tiny_folder), "--strategy", "auto", "--epochs", "1",
                                      "--config", str(config), "--set", "strategy.bn=frozen"])
    assert result.exit_code == 0, result.output
    cfg = resolved[-1]
    assert (cfg.strategy.name, cfg.engine.epochs, cfg.optim.lr, cfg.strategy.bn) == ("finetune", 1, 0.05, "frozen")
    assert cfg.strategy.layer_decay == 0.7


def test_an_explicit_backbone_rate_is_not_overruled_by_a_recommended_layer_decay(tiny_folder: Path, resolved: list):
    # layer decay takes precedence over backbone_lr_scale in the plan, so filling it in would erase the user's choice
    tk.train(tiny_folder, strategy="auto", backbone_lr_scale=0.5, quiet=True)
    cfg = resolved[-1]
    assert (cfg.strategy.backbone_lr_scale, cfg.strategy.layer_decay, cfg.engine.epochs) == (0.5, None, 15)
