"""compare and the recommender: the table is built from real runs; the decision table is applied."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import transferkit as tk
from transferkit.cli import app
from transferkit.errors import ConfigError
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


def _table_row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {name} |"))


def _assert_table_shows_the_runs_numbers(out: Path, result: dict) -> None:
    """Each row's figures are those of the runs in its folders (read back from disk), not just any "±"."""
    table = (out / "comparison.md").read_text()
    for name, row in result["strategies"].items():
        line = _table_row(table, name)
        summaries = [json.loads((Path(d) / "summary.json").read_text()) for d in row["run_dirs"]]
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            values = [s["metrics"][metric] for s in summaries]
            assert f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}" in line, (name, metric, line)
        for d, summary in zip(row["run_dirs"], summaries):  # and each run's accuracy is that of its test predictions
            rows = json.loads((Path(d) / "test_predictions.json").read_text())
            hits = [max(range(len(r["probs"])), key=r["probs"].__getitem__) == r["label"] for r in rows]
            assert summary["metrics"]["accuracy"] == pytest.approx(sum(hits) / len(hits))


def _run_configs(result: dict) -> dict[str, list[dict]]:
    return {name: [yaml.safe_load((Path(d) / "config.yaml").read_text()) for d in row["run_dirs"]]
            for name, row in result["strategies"].items()}


def test_compare_writes_table_over_seeds(tiny_folder: Path, tmp_path: Path):
    out = tmp_path / "cmp"
    small = {k: v for k, v in TINY.items() if k != "quiet"}
    result = tk.compare(tiny_folder, ["feature-extraction", "finetune"], seeds=2, out=out, quiet=True, epochs=1, **small)
    saved = json.loads((out / "comparison.json").read_text())
    assert set(saved["strategies"]) == {"feature-extraction", "finetune"}
    fe = saved["strategies"]["feature-extraction"]
    assert len(fe["runs"]) == 2 and fe["mean"]["accuracy"] is not None and fe["std"]["accuracy"] is not None
    assert fe["trainable"] < saved["strategies"]["finetune"]["trainable"]
    _assert_table_shows_the_runs_numbers(out, saved)
    summaries = {d: (Path(d) / "summary.json").read_bytes() for row in saved["strategies"].values() for d in row["run_dirs"]}

    # a second call with the same settings reuses the finished runs instead of training again ...
    again = tk.compare(tiny_folder, ["feature-extraction"], seeds=2, out=out, quiet=True, epochs=1, **small)
    assert again["strategies"]["feature-extraction"]["runs"] == fe["runs"]
    _assert_table_shows_the_runs_numbers(out, again)
    # ... and every row it shows was trained with the settings it asked for
    for name, configs in _run_configs(again).items():
        for seed, cfg in enumerate(configs):
            assert cfg["strategy"]["name"] == name and cfg["engine"]["seed"] == seed and cfg["data"]["split_seed"] == 0
            assert cfg["engine"]["epochs"] == 1 and cfg["optim"]["lr"] == 0.001
            assert cfg["model"]["input_size"] == 32 and cfg["engine"]["batch_size"] == 8
            assert cfg["data"]["path"] == str(tiny_folder)

    # a call with other settings is refused before it trains anything: reusing would report epochs=1 runs as epochs=3
    with pytest.raises(ConfigError) as info:
        tk.compare(tiny_folder, ["feature-extraction", "finetune"], seeds=2, out=out, quiet=True, epochs=3, lr=0.01,
                   **small)
    message = str(info.value)
    assert "engine.epochs 3 requested, 1 found" in message and "optim.lr 0.01 requested, 0.001 found" in message
    assert all(d in message for d in summaries) and "another --out" in message
    assert {d: (Path(d) / "summary.json").read_bytes() for d in summaries} == summaries  # nothing was retrained
    assert all(cfg["engine"]["epochs"] == 1 for configs in _run_configs(saved).values() for cfg in configs)
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
