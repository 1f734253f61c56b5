"""Side-by-side comparison of strategies over several seeds, on one fixed split, with paired verdicts.

What is and is not a difference: every strategy is scored on the same test images with the same seeds.
For each strategy the table gives its mean over seeds with a 95% interval over the test images
(Clopper-Pearson on per-image scores averaged over seeds; MOVER for balanced accuracy), every seed's value
and how many distinct models the seeds gave (a converged probe on fixed embeddings is one model whatever the
seed). Against the best strategy (highest mean) it gives the paired difference (same seed, same images) and
a verdict from an exact paired test on the per-image differences, Holm-adjusted over every pair of rows
(the best was chosen on these numbers, so only a family of all pairs keeps the verdicts honest); where seeds
give different models the difference must also stand out against the seeds' own spread, and every seed must
agree in direction (:mod:`transferkit.metrics.paired`). The table also lists every
setting that differs between rows besides the strategy (from each run's config.yaml, and the resolved
BatchNorm policy).

A run folder already in the output folder is reused (or resumed) only when its config.yaml is the config the
call asks for; a folder of other settings is refused before anything trains, naming what differs.
"""

from __future__ import annotations

import json
import math
import statistics
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from transferkit.config import config_from_dict, config_to_dict
from transferkit.errors import ConfigError
from transferkit.fileio import write_json, write_text
from transferkit.strategy.plan import AUTO, default_comparison  # light: config, errors, registry; no torch

__all__ = ["compare", "comparison_table", "paired_verdicts", "differing_settings", "DEFAULT_STRATEGIES", "METRICS"]

DEFAULT_STRATEGIES = default_comparison()  # the registered strategies marked compare=True, in registry order
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
    return {"mean": mean, "std": std, "trainable": params["trainable"], "total": params["total"],
            "selected_epochs": [s.get("selected_epoch") for s in summaries]}


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

    A run folder already in ``out`` is used only when its config.yaml is the config this call would train
    (``_check_existing_runs``): a finished run is reused and an unfinished one resumed, so an interrupted
    comparison continues where it stopped. A folder trained with other settings is refused before anything
    trains, naming each differing setting. Writes ``comparison.json``, ``comparison.md`` (and
    ``comparison.html`` when the report module has it).
    """
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} must be at least 1")
    if not strategies:
        raise ConfigError("--strategies is empty; name at least one, e.g. feature-extraction,finetune")
    from transferkit import workflow  # torch and timm load here, not when the package is imported

    root = Path(out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-compare")
    settings = {strategy: dict(common, **(per_strategy or {}).get(strategy, {})) for strategy in strategies}
    _check_existing_runs(data, root, settings, seeds)
    result: dict[str, Any] = {"data": str(data), "seeds": seeds, "settings": dict(common), "strategies": {}}
    for strategy in strategies:
        summaries, run_dirs = [], []
        for seed in range(seeds):
            run_dir = root / strategy / f"seed{seed}"
            if (run_dir / "summary.json").exists():  # checked above: trained with this call's settings
                summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
            elif _resumable(run_dir):
                summary = workflow.resume(run_dir, quiet=quiet).summary
            else:  # no folder, or one killed before its first checkpoint (the trainer clears its leftovers)
                summary = workflow.train(data, strategy=strategy, seed=seed, split_seed=0, out=str(run_dir), quiet=quiet,
                                         **settings[strategy]).summary
            summaries.append(summary)
            run_dirs.append(str(run_dir))
        result["strategies"][strategy] = {"runs": summaries, "run_dirs": run_dirs, **_aggregate(summaries)}
        write_json(root / "comparison.json", result)
    result["differences"] = differing_settings(result)
    result["verdicts"] = paired_verdicts(result, lead_metric(result))
    write_json(root / "comparison.json", result)
    write_text(root / "comparison.md", comparison_table(result))
    _write_html(root, result)
    result["out"] = str(root)
    return result


# Config fields a reused run may differ in, because they cannot change its numbers:
# - out: the run's own folder. The check reads that very folder, so the field only says how it was spelt when the
#   run started (relative or absolute, or before the comparison folder was moved).
# - engine.cache_dir: where the embedding cache lives; its entries are addressed by content, so the same images
#   and backbone give the same embeddings from any folder.
# Everything else counts, device and loader workers included (they can change the numerics or the augmentation draws).
_REUSE_IGNORES = frozenset({"out", "engine.cache_dir"})
_NOT_RECORDED = "not recorded"


def _check_existing_runs(data: str | Path, root: Path, settings: Mapping[str, Mapping[str, Any]], seeds: int) -> None:
    """Refuse, before anything trains, run folders under ``root`` that hold a run of other settings.

    ``settings``: per strategy, the keywords its runs get (the common ones with its ``per_strategy`` ones).
    A folder with a config.yaml (finished, or unfinished and about to be resumed or overwritten) must hold the
    config this call resolves to, compared field by field (:func:`config_to_dict`) apart from ``_REUSE_IGNORES``.

    Raises:
        ConfigError: naming each such folder, every differing setting (requested vs found) and the fix.
    """
    conflicts: dict[str, list[str]] = {}  # the differences, as text -> the folders that show them
    for strategy, keywords in settings.items():
        for seed in range(seeds):
            run_dir = root / strategy / f"seed{seed}"
            if not (run_dir / "config.yaml").is_file():
                if (run_dir / "summary.json").exists() or _resumable(run_dir):
                    conflicts.setdefault("no config.yaml to show its settings", []).append(str(run_dir))
                continue
            requested = _requested_config(data, strategy, seed, run_dir, keywords)
            differences = _config_differences(requested, run_dir / "config.yaml")
            if differences:
                conflicts.setdefault("; ".join(differences), []).append(str(run_dir))
    if conflicts:
        listed = " | ".join(f"{', '.join(folders)}: {shown}" for shown, folders in conflicts.items())
        count = sum(len(folders) for folders in conflicts.values())
        raise ConfigError(
            f"compare --out {root}: {count} run folder(s) there hold runs of other settings than this call asks for, "
            f"and reusing them would report their numbers as this call's (nothing was trained): {listed}. "
            f"Choose another --out for this comparison, or delete those folders to train them again with these settings")


def _requested_config(data: str | Path, strategy: str, seed: int, run_dir: Path, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """The config (as a dict) that ``workflow.train`` resolves for this run, the recommendation of ``auto`` included."""
    from transferkit.config import flat_overrides
    from transferkit.workflow import build_config, explicit_keys

    arguments = dict(keywords, strategy=strategy, seed=seed, split_seed=0, out=str(run_dir))
    cfg = build_config(data, **arguments)
    if cfg.strategy.name == AUTO:  # the run's config.yaml holds what the recommender resolved, so compare with that
        from transferkit.recommender import resolve_auto

        explicit = explicit_keys({}, {**flat_overrides(arguments, caller="transferkit.compare"), "data.path": str(data)})
        cfg = resolve_auto(cfg, quiet=True, explicit=explicit)
    return config_to_dict(cfg)


def _config_differences(requested: Mapping[str, Any], path: Path) -> list[str]:
    """"KEY REQUESTED requested, FOUND found" for every setting of ``requested`` the config file at ``path`` differs in.

    A key the file lacks (a run from before that setting existed) is "not recorded": its value then is unknown.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        found = _flat(config_to_dict(config_from_dict(raw)))
    except (yaml.YAMLError, ConfigError, AttributeError, TypeError, ValueError) as exc:
        return [f"its config.yaml cannot be read as a run config ({str(exc).splitlines()[0]})"]
    recorded = set(_flat(raw))
    differences = []
    for key, want in _flat(requested).items():
        if key in _REUSE_IGNORES:
            continue
        have = found.get(key) if key in recorded else _NOT_RECORDED
        if key == "data.path" and have != _NOT_RECORDED and _same_path(want, have):
            continue
        if want != have:
            differences.append(f"{key} {_show(want)} requested, {_show(have)} found")
    return differences


def _flat(nested: Mapping[str, Any]) -> dict[str, Any]:
    """{"engine": {"epochs": 3}, "out": x} -> {"engine.epochs": 3, "out": x}."""
    flat: dict[str, Any] = {}
    for section, values in nested.items():
        if isinstance(values, Mapping):
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[section] = values
    return flat


def _same_path(a: Any, b: Any) -> bool:
    """The same folder however it is spelt (relative to the current folder, or absolute)."""
    return a == b or (bool(a) and bool(b) and Path(str(a)).resolve() == Path(str(b)).resolve())


def _show(value: Any) -> str:
    return value if value == _NOT_RECORDED else repr(value) if isinstance(value, str) else str(value)


def _resumable(run_dir: Path) -> bool:
    """An unfinished run with a committed checkpoint: epochs worth keeping (``transferkit train --resume``)."""
    from transferkit.engine.checkpoint import STATE_TENSORS

    return not (run_dir / "summary.json").exists() and (run_dir / STATE_TENSORS).is_file()


# settings that never count as a difference between rows: the strategy itself, its seed and its folder
_SAME_BY_DESIGN = {"strategy.name", "engine.seed", "out"}


def _flat_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    flat = {f"{section}.{key}": value for section, values in raw.items() if isinstance(values, dict)
            for key, value in values.items()}
    plan = run_dir / "plan.json"
    if plan.is_file():
        flat["batchnorm (resolved)"] = json.loads(plan.read_text(encoding="utf-8")).get("bn")
    return flat


def differing_settings(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{setting: {strategy: value}} for every setting that is not the same in all rows (first seed's run)."""
    configs = {name: _flat_config(Path(row["run_dirs"][0])) for name, row in result["strategies"].items() if row.get("run_dirs")}
    keys = sorted({k for flat in configs.values() for k in flat} - _SAME_BY_DESIGN)
    out = {}
    for key in keys:
        values = {name: flat.get(key) for name, flat in configs.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            out[key] = values
    return out


# numpy and the interval code load when verdicts are computed: the package __init__ exports compare eagerly
# (a lazy name would be shadowed by this module), and `transferkit --help` must not pay for numpy
if TYPE_CHECKING:
    import numpy as np


def _predictions(run_dir: Path) -> tuple[str, list[str], np.ndarray, np.ndarray]:
    """(split, paths, labels, probs) of the test split a run reports (chose nothing), sorted by path."""
    import numpy as np

    path = run_dir / "test_predictions.json"
    if path.is_file():
        rows = sorted(json.loads(path.read_text(encoding="utf-8")), key=lambda r: r["path"])
        return ("test", [r["path"] for r in rows], np.array([r["label"] for r in rows], dtype=np.int64),
                np.array([r["probs"] for r in rows], dtype=np.float64))
    raise ConfigError(f"{run_dir} has no test_predictions.json (a run from before the three data roles); re-run that strategy "
                      "(delete its folder) so the comparison can pair its predictions")


def lead_metric(result: Mapping[str, Any]) -> str:
    """The metric the verdicts read: balanced accuracy when the runs found their data imbalanced (they then
    chose their epochs on it too, and accuracy would hide missed rare classes), else accuracy."""
    runs = [run for row in result["strategies"].values() for run in row.get("runs", [])]
    leads = {(run.get("balance") or {}).get("lead_metric", "accuracy") for run in runs}
    return "balanced_accuracy" if "balanced_accuracy" in leads else "accuracy"


def paired_verdicts(result: Mapping[str, Any], metric: str = "accuracy", n_resamples: int = 2000) -> dict[str, Any]:
    """Per strategy: mean ``metric`` with its interval over the test images, every seed's value and the distinct
    models among them; against the best strategy: the paired difference, the exact test's p (raw and
    Holm-adjusted over every pair of rows) and the verdict (:mod:`transferkit.metrics.paired`)."""
    import numpy as np

    from transferkit.metrics.intervals import seed_image_interval
    from transferkit.metrics.paired import ALPHA, verdicts_against_best

    loaded = {name: [_predictions(Path(d)) for d in row["run_dirs"]] for name, row in result["strategies"].items()}
    reference = next(iter(loaded.values()))[0]
    for name, runs in loaded.items():
        for split, paths, labels, _ in runs:
            if paths != reference[1] or not np.array_equal(labels, reference[2]):
                raise ConfigError(f"compare: the runs of {name!r} were not scored on the same images as the others; "
                                  "every strategy must share the split (same data folder and split seed)")
    labels = reference[2]
    n_classes = int(reference[3].shape[1])
    probs = {name: [run[3] for run in runs] for name, runs in loaded.items()}
    means = {name: seed_image_interval(labels, runs, n_classes, metric, n_resamples) for name, runs in probs.items()}
    best = max(means, key=lambda name: -math.inf if means[name]["mean"] is None else means[name]["mean"])
    paired = {name: runs for name, runs in probs.items() if len(runs) == len(probs[best])}  # pairs need equal seeds
    tests = verdicts_against_best(labels, paired, best, n_classes, metric, n_resamples=n_resamples)
    rows = {}
    for name in probs:
        m = means[name]
        row = {"mean": m["mean"], "ci95": m["ci95"], "per_seed": m["per_seed"], "n_seeds": m["n_seeds"],
               "distinct_models": m["distinct_models"]}
        if name in tests:
            t = tests[name]
            row.update({"vs_best": t["difference"], "vs_best_ci95": t["ci95"], "vs_best_per_seed": t["per_seed"],
                        "p_value": t["p_value"], "p_holm": t["p_holm"], "p_seed": t["p_seed"],
                        "p_seed_holm": t["p_seed_holm"], "seed_df": t["seed_df"], "seeds_agree": t["seeds_agree"],
                        "verdict": t["verdict"]})
        rows[name] = row
    any_test = next(iter(tests.values()), {})
    return {"metric": metric, "split": reference[0], "n_images": int(len(labels)), "n_seeds": len(probs[best]),
            "best": best, "n_resamples": n_resamples, "interval": means[best].get("method"), "alpha": ALPHA,
            "test": any_test.get("test", "exact sign-flip permutation test"), "family": any_test.get("family", ""),
            "strategies": rows}


def _write_html(root: Path, result: dict[str, Any]) -> None:
    from transferkit import report

    builder = getattr(report, "build_comparison_report", None)
    if builder is not None:
        builder(root, result)


def comparison_table(result: dict[str, Any]) -> str:
    """The markdown table of a comparison (:func:`transferkit.report.comparison_md.comparison_table`)."""
    from transferkit.report.comparison_md import comparison_table as table

    return table(result)
