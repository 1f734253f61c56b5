"""compare and the recommender: the table is built from real runs; the decision table is applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import transferkit as tk
from transferkit.cli import app
from transferkit.recommender import FAR_DOMAIN_SHIFT, decide

from conftest import TINY


def _measurements(per_class: int, shift: float) -> dict:
    return {"n_train": per_class * 3, "n_classes": 3, "min_per_class": per_class, "max_per_class": per_class,
            "median_per_class": per_class, "imbalance": 1.0, "bn_shift": shift, "far_domain": shift > FAR_DOMAIN_SHIFT,
            "probe_accuracy": 0.9, "probe_images": 64}


@pytest.mark.parametrize(
    ("per_class", "shift", "expected"),
    [(100, 0.05, "feature-extraction"), (3000, 0.05, "partial"), (20000, 0.05, "lp-ft"),
     (100, 1.0, "finetune"), (20000, 1.0, "finetune")],
)
def test_decision_table(per_class: int, shift: float, expected: str):
    rec = decide(_measurements(per_class, shift))
    assert rec.strategy == expected
    assert rec.reasons and "recommended" in rec.explain()
    if expected == "finetune":
        assert rec.settings["layer_decay"] < 1 and rec.settings["bn"] == "train"


def test_compare_writes_table_over_seeds(tiny_folder: Path, tmp_path: Path):
    out = tmp_path / "cmp"
    small = {k: v for k, v in TINY.items() if k != "quiet"}
    result = tk.compare(tiny_folder, ["feature-extraction", "finetune"], seeds=2, out=out, quiet=True, epochs=1, **small)
    saved = json.loads((out / "comparison.json").read_text())
    assert set(saved["strategies"]) == {"feature-extraction", "finetune"}
    fe = saved["strategies"]["feature-extraction"]
    assert len(fe["runs"]) == 2 and fe["mean"]["accuracy"] is not None and fe["std"]["accuracy"] is not None
    assert fe["trainable"] < saved["strategies"]["finetune"]["trainable"]
    table = (out / "comparison.md").read_text()
    assert "| feature-extraction |" in table and "±" in table
    # a second call reuses the finished runs instead of training again
    again = tk.compare(tiny_folder, ["feature-extraction"], seeds=2, out=out, quiet=True, epochs=1, **small)
    assert again["strategies"]["feature-extraction"]["runs"] == fe["runs"]
    assert result["out"] == str(out)


def test_recommend_cli_and_auto_strategy(tiny_folder: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["recommend", str(tiny_folder)])
    assert result.exit_code == 0, result.output
    assert "domain distance" in result.output and "recommended:" in result.output
    # coloured noise at 32 px is far from ImageNet photos: the table says fine-tune everything
    rec = tk.recommend(tiny_folder, input_size=32)
    assert rec.measurements["far_domain"] and rec.strategy == "finetune", rec.explain()
    assert rec.settings["epochs"] != 1
    run = tk.train(tiny_folder, strategy="auto", out=str(tmp_path / "auto"), epochs=1,
                   **{k: v for k, v in TINY.items() if k != "input_size"}, input_size=32)
    assert run.summary["strategy"] == rec.strategy
    assert run.summary["epochs_run"] == 1  # the user's epochs, not the recommended ones
    plan = json.loads((run.run_dir / "plan.json").read_text())
    assert len(plan["epochs"]) == 1 and plan["bn"] == rec.settings["bn"]
    stem = plan["epochs"][0]["stem"]  # the recommended layer decay over the 8 groups fills what was left unset
    assert stem == pytest.approx(rec.settings["layer_decay"] ** 8)
