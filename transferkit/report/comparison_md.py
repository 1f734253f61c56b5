"""``comparison.md`` and the table ``transferkit compare`` prints: plain text, no plotting imports."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["comparison_table"]

LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}


def _fmt(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _interval(values: Sequence[float] | None, digits: int = 3) -> str:
    return "n/a" if values is None else f"[{values[0]:.{digits}f}, {values[1]:.{digits}f}]"


def _models(row: Mapping[str, Any]) -> str:
    seeds, distinct = row.get("n_seeds"), row.get("distinct_models")
    if seeds is None or distinct is None:
        return "n/a"
    return f"{distinct} of {seeds}" + (" (1 distinct model)" if distinct == 1 and seeds > 1 else "")


def _verdict_cells(verdicts: Mapping[str, Any] | None, name: str) -> list[str]:
    if not verdicts:
        return []
    row = verdicts["strategies"].get(name, {})
    mean = f"{row['mean']:.3f} {_interval(row['ci95'])}"
    if name == verdicts["best"]:
        return [mean, _models(row), "best", "–", "–"]
    if "vs_best" not in row:
        return [mean, _models(row), "n/a", "n/a", "not compared (another number of seeds)"]
    p = f"{row['p_value']:.3g} / {row['p_holm']:.3g}" if "p_holm" in row else "n/a"
    if row.get("p_seed_holm") is not None:
        p += f"; seeds {row['p_seed_holm']:.3g}"
    return [mean, _models(row), f"{row['vs_best']:+.3f} {_interval(row['vs_best_ci95'])}", p, row["verdict"]]


def _footnote(verdicts: Mapping[str, Any]) -> str:
    if "p_holm" not in next((r for r in verdicts["strategies"].values() if "vs_best" in r), {"p_holm": None}):
        return (f"Intervals: {verdicts['n_resamples']} bootstrap replicates resampling seeds and, within each class, test "
                "images; the verdict reads the paired difference to the best row (a comparison from before the exact tests).")
    return (f"Interval of a row: {verdicts.get('interval') or 'over the test images'}. Models: distinct models among the "
            "seeds (a deterministic method gives one model whatever the seed). Verdict against the best row: "
            f"{verdicts.get('test', 'an exact paired test')}, Holm-adjusted over {verdicts.get('family') or 'every pair of rows'} "
            f"(p / Holm p in the table; alpha {verdicts.get('alpha', 0.05)}); where a row's seeds gave several models, the "
            "mean per-seed difference must also stand out against the seeds' own spread (a t test on the pooled "
            "between-seed variance, Holm-adjusted: 'seeds' in the table), and every seed must agree in direction. The best "
            "row was chosen on these same numbers, so 'no clear difference' is the honest reading of a close second; the "
            f"interval of a difference ({verdicts['n_resamples']} bootstrap replicates over seeds and images) describes its "
            "spread and is not the test.")


def comparison_table(result: Mapping[str, Any]) -> str:
    """Markdown: per strategy its mean [95% CI] in the verdicts' metric, distinct models, the paired verdict against
    the best row, and mean ± std over seeds of every metric (the seeds' spread)."""
    verdicts = result.get("verdicts")
    bn = (result.get("differences") or {}).get("batchnorm (resolved)")
    head = ["strategy"]
    if verdicts:
        label = LABELS.get(verdicts["metric"], verdicts["metric"])
        head += [f"{label}, mean [95% CI]", "models", "vs best: paired diff [95% CI]", "p / Holm p", "verdict"]
    head += ["accuracy ± std", "balanced acc. ± std", "macro-F1 ± std", "ROC-AUC ± std"]
    head += (["BN"] if bn else []) + ["epochs run", "selected epoch per seed", "wall time (s)", "trainable params"]
    where = (f"{verdicts['n_images']} {verdicts['split']} images, {verdicts['n_seeds']} seed(s)" if verdicts
             else f"{result['seeds']} seed(s)")
    lines = [f"Data: `{result['data']}`, {where}, same split (split seed 0). Every figure is on the test split, "
             "which chose nothing; the epoch was chosen on the selection split.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in result["strategies"].items():
        m, s = row["mean"], row["std"]
        trainable = f"{row['trainable']:,} ({100 * row['trainable'] / row['total']:.2f}%)"
        cells = [name] + _verdict_cells(verdicts, name) + [
            _fmt(m["accuracy"], s["accuracy"]), _fmt(m["balanced_accuracy"], s["balanced_accuracy"]),
            _fmt(m["macro_f1"], s["macro_f1"]), _fmt(m["roc_auc"], s["roc_auc"])]
        chosen = ", ".join(str(e) for e in row.get("selected_epochs") or []) or "n/a"
        cells += ([str(bn.get(name))] if bn else []) + [f"{m['epochs']:.1f}", chosen, _fmt(m["time_s"], s["time_s"], 0), trainable]
        lines.append("| " + " | ".join(cells) + " |")
    differences = result.get("differences") or {}
    if differences:
        lines += ["", "Settings that differ between rows besides the strategy: "
                  + "; ".join(f"{k}: " + ", ".join(f"{n} {v}" for n, v in values.items()) for k, values in differences.items())
                  + "."]
    elif "differences" in result:
        lines += ["", "No setting differs between rows besides the strategy."]
    if verdicts:
        lines += ["", _footnote(verdicts)]
    return "\n".join(lines) + "\n"
