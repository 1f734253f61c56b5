"""Side-by-side comparison of strategies over several seeds, on one fixed split."""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from transferkit.api import train
from transferkit.errors import ConfigError
from transferkit.fileio import write_json, write_text

__all__ = ["compare", "comparison_table", "DEFAULT_STRATEGIES", "METRICS"]

DEFAULT_STRATEGIES = ("scratch", "feature-extraction", "finetune", "lp-ft", "gradual")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _aggregate(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    mean, std = {}, {}
    for metric in METRICS:
        mean[metric], std[metric] = _mean_std([s["metrics"].get(metric) for s in summaries])
    for key, getter in (("epochs", lambda s: s["epochs_run"]), ("time_s", lambda s: s["time_s"])):
        mean[key], std[key] = _mean_std([getter(s) for s in summaries])
    params = summaries[0]["params"]
    return {"mean": mean, "std": std, "trainable": params["trainable"], "total": params["total"]}


def compare(
    data: str | Path,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    seeds: int = 3,
    out: str | Path | None = None,
    per_strategy: Mapping[str, Mapping[str, Any]] | None = None,
    quiet: bool = False,
    **common: Any,
) -> dict[str, Any]:
    """Train every strategy with seeds 0..seeds-1 on the same split (split seed fixed at 0).

    Runs already finished in ``out`` are reused, so an interrupted comparison continues where it stopped.
    Writes ``comparison.json``, ``comparison.md`` (and ``comparison.html`` when the report module has it).
    """
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} must be at least 1")
    if not strategies:
        raise ConfigError("--strategies is empty; name at least one, e.g. feature-extraction,finetune")
    root = Path(out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-compare")
    result: dict[str, Any] = {"data": str(data), "seeds": seeds, "settings": dict(common), "strategies": {}}
    for strategy in strategies:
        extra = dict(common, **(per_strategy or {}).get(strategy, {}))
        summaries, run_dirs = [], []
        for seed in range(seeds):
            run_dir = root / strategy / f"seed{seed}"
            if (run_dir / "summary.json").exists():
                summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
            else:
                summary = train(data, strategy=strategy, seed=seed, split_seed=0, out=str(run_dir), quiet=quiet, **extra).summary
            summaries.append(summary)
            run_dirs.append(str(run_dir))
        result["strategies"][strategy] = {"runs": summaries, "run_dirs": run_dirs, **_aggregate(summaries)}
        write_json(root / "comparison.json", result)
    write_text(root / "comparison.md", comparison_table(result))
    _write_html(root, result)
    result["out"] = str(root)
    return result


def _write_html(root: Path, result: dict[str, Any]) -> None:
    from transferkit import report

    builder = getattr(report, "build_comparison_report", None)
    if builder is not None:
        builder(root, result)


def _fmt(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def comparison_table(result: dict[str, Any]) -> str:
    """Markdown table: mean ± std over seeds per strategy."""
    lines = [
        f"Data: `{result['data']}`, {result['seeds']} seed(s), same split (split seed 0).",
        "",
        "| strategy | accuracy | balanced acc. | macro-F1 | ROC-AUC | epochs | wall time (s) | trainable params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["strategies"].items():
        m, s = row["mean"], row["std"]
        trainable = f"{row['trainable']:,} ({100 * row['trainable'] / row['total']:.2f}%)"
        lines.append(
            f"| {name} | {_fmt(m['accuracy'], s['accuracy'])} | {_fmt(m['balanced_accuracy'], s['balanced_accuracy'])} "
            f"| {_fmt(m['macro_f1'], s['macro_f1'])} | {_fmt(m['roc_auc'], s['roc_auc'])} "
            f"| {m['epochs']:.1f} | {_fmt(m['time_s'], s['time_s'], 0)} | {trainable} |"
        )
    return "\n".join(lines) + "\n"
