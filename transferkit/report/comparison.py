"""``comparison.html`` for ``transferkit compare``: the table, paired verdicts, bar charts with error bars, and selection-split curves."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from transferkit.fileio import write_text
from transferkit.report.html import Raw, Section, esc, fmt_num, footer_text, img, kv_table, note, page, table
from transferkit.report.sections import guarded
from transferkit.report.style import COLORS, fig_to_uri, figure

__all__ = ["build_comparison_report", "COMPARISON_REPORT_FILE"]

COMPARISON_REPORT_FILE = "comparison.html"
METRICS = [("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."), ("macro_f1", "macro F1"), ("roc_auc", "ROC AUC")]


def _run_dir(out: Path, strategy: str, raw: str) -> Path:
    """A run folder as recorded (relative to where compare ran), else found under the comparison folder."""
    path = Path(raw)
    if path.is_dir():
        return path
    for candidate in (out / path, out / strategy / path.name):
        if candidate.is_dir():
            return candidate
    return path


def _curves(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _mean_std(row: Mapping[str, Any], key: str) -> tuple[float | None, float | None]:
    """From the aggregated mean/std when present, else from the individual run summaries."""
    mean, std = (row.get("mean") or {}).get(key), (row.get("std") or {}).get(key)
    if mean is None:
        field = {"epochs": "epochs_run"}.get(key, key)
        values = [(r.get("metrics") or {}).get(key, r.get(field)) for r in row.get("runs") or []]
        values = [v for v in values if isinstance(v, (int, float))]
        if values:
            mean, std = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return mean, std


def _pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    return "–" if mean is None else f"{mean:.{digits}f} ± {(std or 0.0):.{digits}f}"


def _table(out: Path, strategies: Mapping[str, Mapping[str, Any]]) -> str:
    headers = ["strategy", "runs"] + [label for _, label in METRICS] + ["epochs", "wall time (s)", "trainable params", "reports"]
    rows = []
    for name, row in strategies.items():
        trainable, total = row.get("trainable"), row.get("total")
        if trainable is None and row.get("runs"):
            params = row["runs"][0].get("params") or {}
            trainable, total = params.get("trainable"), params.get("total")
        share = f"{trainable:,} ({100 * trainable / total:.2f} %)" if trainable is not None and total else "–"
        links = []
        for i, raw in enumerate(row.get("run_dirs") or []):
            report = _run_dir(out, name, raw) / "report.html"
            if report.is_file():
                links.append(f'<a href="{esc(os.path.relpath(report, out))}">{i + 1}</a>')
        rows.append([name, len(row.get("runs") or [])] + [_pm(*_mean_std(row, k)) for k, _ in METRICS]
                    + [_pm(*_mean_std(row, "epochs"), digits=1), _pm(*_mean_std(row, "time_s"), digits=0), share,
                       Raw(" ".join(links) or "–")])
    return table(headers, rows, numeric=tuple(range(1, 9)), caption="Mean ± standard deviation over seeds (test split; it chose nothing).")


def _bars(strategies: Mapping[str, Mapping[str, Any]]) -> str:
    """Grouped bars (one group per metric, one bar per strategy), error bars = std, dots = single runs."""
    names = list(strategies)
    width = 0.8 / max(len(names), 1)
    with figure(width=max(7.0, 1.1 * len(METRICS) * max(len(names), 2) * 0.55), height=4.2) as (fig, axes):
        ax = axes[0, 0]
        x = np.arange(len(METRICS))
        for i, name in enumerate(names):
            row = strategies[name]
            stats = [_mean_std(row, k) for k, _ in METRICS]
            means = [m if m is not None else np.nan for m, _ in stats]
            stds = [s or 0.0 for _, s in stats]
            pos = x - 0.4 + width * (i + 0.5)
            color = COLORS[i % len(COLORS)]
            ax.bar(pos, means, width * 0.9, yerr=stds, capsize=3, color=color, alpha=0.85, label=name,
                   error_kw={"elinewidth": 1.2, "ecolor": "#222222"})
            for j, (key, _) in enumerate(METRICS):
                singles = [r.get("metrics", {}).get(key) for r in row.get("runs") or []]
                singles = [v for v in singles if v is not None]
                ax.scatter([pos[j]] * len(singles), singles, s=10, color="#222222", zorder=3, linewidths=0)
        ax.set_xticks(x, [label for _, label in METRICS])
        ax.set(ylim=(0, 1.05), ylabel="score (test split)", title="Metrics per strategy (bars: mean, whiskers: ±1 std, dots: seeds)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig_to_uri(fig)


def _cost_bars(strategies: Mapping[str, Mapping[str, Any]]) -> str | None:
    names = list(strategies)
    if all(_mean_std(strategies[n], "time_s")[0] is None for n in names):
        return None
    with figure(ncols=2, width=4.4, height=3.4) as (fig, axes):
        for ax, key, label, title in ((axes[0, 0], "time_s", "seconds", "Wall time per run"),
                                      (axes[0, 1], "epochs", "epochs", "Epochs run")):
            stats = [_mean_std(strategies[n], key) for n in names]
            ax.bar(range(len(names)), [m if m is not None else np.nan for m, _ in stats], yerr=[s or 0.0 for _, s in stats],
                   capsize=3, color=[COLORS[i % len(COLORS)] for i in range(len(names))], alpha=0.85)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            ax.set(ylabel=label, title=title)
        return fig_to_uri(fig)


def _curve_panel(ax, out: Path, strategies: Mapping[str, Mapping[str, Any]], key: str) -> int:
    drawn = 0
    for i, (name, row) in enumerate(strategies.items()):
        runs = [_curves(_run_dir(out, name, d)) for d in row.get("run_dirs") or []]
        series = [{int(r["epoch"]): float(r[key]) for r in rows if r.get(key) is not None} for rows in runs]
        series = [s for s in series if s]
        if not series:
            continue
        color = COLORS[i % len(COLORS)]
        epochs = sorted(set().union(*series))
        values = np.array([[s.get(e, np.nan) for e in epochs] for s in series])
        for s in series:  # thin lines: single seeds
            ax.plot(sorted(s), [s[e] for e in sorted(s)], color=color, alpha=0.3, linewidth=0.8)
        ax.plot(epochs, np.nanmean(values, axis=0), color=color, linewidth=2, marker="o", markersize=3, label=name)
        if len(series) > 1:
            ax.fill_between(epochs, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=color, alpha=0.12)
        drawn += 1
    return drawn


def _curves_figure(out: Path, strategies: Mapping[str, Mapping[str, Any]]) -> str | None:
    with figure(ncols=2, width=5.2, height=3.8) as (fig, axes):
        acc, nll = axes[0]
        if not _curve_panel(acc, out, strategies, "selection_accuracy"):
            return None
        _curve_panel(nll, out, strategies, "selection_nll")
        acc.set(title="Selection-split accuracy per epoch", xlabel="epoch", ylabel="accuracy")
        nll.set(title="Selection-split loss per epoch", xlabel="epoch", ylabel="NLL (nats)")
        acc.legend(loc="lower right")
        for ax in axes[0]:
            ax.xaxis.get_major_locator().set_params(integer=True)
        return fig_to_uri(fig)


LABELS = dict(METRICS)


def _verdict_table(verdicts: Mapping[str, Any]) -> str:
    """One row per strategy in the verdicts' own metric: mean [95% CI], models, difference to the best, p, verdict."""
    label = LABELS.get(verdicts["metric"], verdicts["metric"])
    rows = []
    for name, row in verdicts["strategies"].items():
        ci = row.get("ci95")
        mean = f"{row['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        models = f"{row.get('distinct_models', '–')} of {row.get('n_seeds', verdicts.get('n_seeds'))}"
        if name == verdicts["best"]:
            rows.append([name, mean, models, "best", "–", "–"])
        elif "verdict" in row:
            rows.append([name, mean, models, f"{row['vs_best']:+.3f}", f"{row['p_value']:.3g} / {row['p_holm']:.3g}", row["verdict"]])
        else:
            rows.append([name, mean, models, "–", "–", "not compared (different seed count)"])
    caption = (f"Test {label} on {verdicts['n_images']} images; models: distinct models of the seeds run (a deterministic "
               f"method gives 1). Verdict: {verdicts.get('test', 'paired test')}, Holm-adjusted over "
               f"{verdicts.get('family', 'the rows')}; a verdict also needs every seed to agree in direction.")
    return table(["strategy", f"{label}, mean [95% CI]", "models", "vs best", "p / Holm p", "verdict"], rows,
                 numeric=(1, 3, 4), caption=caption)


def _headline(verdicts: Mapping[str, Any]) -> str:
    """The leader and the verdicts, in the metric the verdicts use (balanced accuracy on imbalanced data)."""
    label = LABELS.get(verdicts["metric"], verdicts["metric"])
    best = verdicts["best"]
    row = verdicts["strategies"][best]
    ci = row.get("ci95")
    text = (f"<p>Highest mean test {esc(label)}: <b>{esc(best)}</b> ({row['mean']:.3f}"
            + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f", n={verdicts['n_images']}).")
    worse = [n for n, r in verdicts["strategies"].items() if r.get("verdict") == "worse"]
    same = [n for n, r in verdicts["strategies"].items() if r.get("verdict") == "no clear difference"]
    if worse:
        text += f" Worse than it: {esc(', '.join(worse))}."
    if same:
        text += (f" No clear difference from it: {esc(', '.join(same))} (the best was chosen on these same numbers, so "
                 "this is the honest reading of a close second).")
    return text + "</p>"


def _summary(comparison: Mapping[str, Any], strategies: Mapping[str, Mapping[str, Any]], out: Path) -> str:
    pairs = [("data", comparison.get("data", "–")), ("seeds", fmt_num(comparison.get("seeds"))),
             ("strategies", ", ".join(strategies))]
    settings = comparison.get("settings") or {}
    if settings:
        pairs.append(("common settings", ", ".join(f"{k}={v}" for k, v in settings.items())))
    verdicts = comparison.get("verdicts")
    if verdicts and verdicts.get("strategies"):
        return kv_table(pairs) + _headline(verdicts) + _verdict_table(verdicts) + _table(out, strategies)
    ranked = sorted(((m, s, n) for n, row in strategies.items() for m, s in [_mean_std(row, "accuracy")] if m is not None),
                    key=lambda t: -t[0])
    lead = ""
    if ranked:
        lead = (f"<p>Highest mean test accuracy: <b>{esc(ranked[0][2])}</b> ({_pm(ranked[0][0], ranked[0][1])}); "
                "no paired verdicts were computed for this comparison.</p>")
    return kv_table(pairs) + lead + _table(out, strategies)


def build_comparison_report(out_dir: str | Path, comparison: Mapping[str, Any]) -> Path:
    """Write ``comparison.html`` into ``out_dir`` (the folder of comparison.json) and return its path.

    Args:
        out_dir: the comparison folder.
        comparison: ``{"data", "seeds", "settings", "strategies": {name: {"runs": [summary...], "run_dirs": [...],
            "mean": {metric: x}, "std": {metric: x}, "trainable", "total"}}}`` as ``compare`` writes it.
    """
    out = Path(out_dir)
    strategies: Mapping[str, Mapping[str, Any]] = comparison.get("strategies") or {}
    if not strategies:
        sections = [Section("summary", "Summary", note("The comparison holds no strategies."))]
    else:
        sections = [
            guarded("summary", "Summary", lambda: _summary(comparison, strategies, out)),
            guarded("metrics", "Metrics", lambda: img(_bars(strategies), "metric bar chart",
                    "Bars start at zero; whiskers: ±1 standard deviation over seeds (the seeds' spread, not the "
                    "uncertainty of the test images). Whether two strategies differ is the paired verdict in the "
                    "summary, not whether whiskers overlap.")),
            guarded("curves", "Selection-split curves", lambda: img(_curves_figure(out, strategies), "selection-split curves",
                    "Thick lines: mean over seeds; shaded: range over seeds; thin lines: single seeds.")),
            guarded("cost", "Cost", lambda: img(_cost_bars(strategies), "cost bar chart", "Mean ± std over seeds.")),
        ]
    title = f"Strategy comparison on {Path(str(comparison.get('data', ''))).name or 'data'}"
    target = out / COMPARISON_REPORT_FILE
    write_text(target, page(title, "Every strategy trained on the same split with several seeds.", sections, footer_text()))
    return target
