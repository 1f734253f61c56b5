"""Imbalance benchmark: what each balancing method buys on imbalanced subsets of two shared datasets.

Command (the tables in benchmarks/results/imbalance.md came from exactly this):

    .venv/bin/python benchmarks/imbalance.py

Data (seeded, subset seed 0; each class's images drawn from its sorted file list):
- flowers: daisy 600, dandelion 300, roses 120, sunflowers 60, tulips 30 (ratio 20:1).
- neu_surface_defects/train: crazing 240, inclusion 120, patches 48, pitted_surface 24, rolled-in_scale 12,
  scratches 12 (ratio 20:1).
Each subset is one folder of classes, split by transferkit 70/15/15 (stratified, split seed 0, at least
data.min_per_class = 2 selection and 2 test images per class): every row of a dataset is scored on the same
test images, which chose nothing.

Rows (lp-ft runs the last four; one thing changes between rows: the balancing method; strategy, epochs, lr, resolution, seeds and split
are the same):
- old defaults: selection on accuracy, no balancing (what transferkit did before imbalance handling).
- none: selection on balanced accuracy (the new imbalanced default), no balancing.
- class weights: balanced (inverse frequency) class weights: the new default on imbalanced data.
- effective weights: Cui et al. 2019 effective-number weights (beta 0.999).
- sampler: class-balanced sampling with replacement, no weights.
- logit adjustment: no weights, post-hoc logit adjustment with tau chosen on the selection split.
"old defaults" differs from "none" in the selection metric only; every other row differs from "none" in its
balancing method only. Strategies: feature extraction (converged probe on cached embeddings; the probe gets
the weights, and under the sampler the inverse-frequency weights it equals in expectation) and lp-ft (2
probe epochs, then 4 fine-tuning epochs). 112 px instead of 224 to fit a 2-core CPU; 3 seeds.

Figures: balanced accuracy and macro-F1 on the test split, the mean over seeds with its 95% interval (balanced
accuracy: MOVER over the classes' Clopper-Pearson limits; macro-F1: a two-level bootstrap), and each row's
paired difference to "none" (same seeds, same test images). The verdict on balanced accuracy is an exact
sign-flip test on the per-image differences, Holm-adjusted over the rows compared with "none", and needs every
seed to agree in direction (transferkit.metrics.paired). Each run's predicted class per test image is kept in
the result file (``test_outcomes``). Finished runs under benchmarks/runs/imbalance/ are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

import transferkit as tk
from transferkit.fileio import write_json
from transferkit.metrics.intervals import seed_image_interval
from transferkit.metrics.paired import difference_interval, verdicts_against

from provenance import provenance, test_outcomes  # benchmarks/provenance.py (the script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")
OUT = HERE / "runs" / "imbalance"
SUBSETS = {
    "flowers": ("flowers", {"daisy": 600, "dandelion": 300, "roses": 120, "sunflowers": 60, "tulips": 30}),
    "neu_surface_defects": ("neu_surface_defects/train", {"crazing": 240, "inclusion": 120, "patches": 48,
                                                          "pitted_surface": 24, "rolled-in_scale": 12, "scratches": 12}),
}
SETTINGS = dict(backbone="efficientnet_lite0", input_size=112, epochs=6, lr=1e-3, batch_size=32)
STRATEGIES = {"feature-extraction": {}, "lp-ft": {"warmup_epochs": 2}}
ROWS = {
    "old defaults": {"class_weights": "none", "overrides": {"engine.monitor": "accuracy", "engine.logit_adjust": "none"}},
    "none": {"class_weights": "none", "overrides": {"engine.logit_adjust": "none"}},
    "class weights": {"class_weights": "balanced"},
    "effective weights": {"class_weights": "effective"},
    "sampler": {"sampler": "balanced", "class_weights": "none", "overrides": {"engine.logit_adjust": "none"}},
    "logit adjustment": {"class_weights": "none", "overrides": {"engine.logit_adjust": "tuned"}},
}
# lp-ft runs the four methods the comparison is about (its runs take minutes each on 2 cores; feature
# extraction's take seconds, so it also runs the old defaults and the effective-number weights)
ROWS_OF = {"feature-extraction": tuple(ROWS), "lp-ft": ("none", "class weights", "sampler", "logit adjustment")}
METRICS = ("balanced_accuracy", "macro_f1")


def make_subset(name: str) -> Path:
    """Symlink the seeded subset into benchmarks/runs/imbalance/<name>/data (no image is copied)."""
    source, counts = SUBSETS[name]
    root = OUT / name / "data"
    for cls, n in counts.items():
        files = sorted((ROOT / source / cls).iterdir())
        chosen = sorted(random.Random(0).sample(files, n))
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for f in chosen:
            link = folder / f.name
            if not link.exists():
                link.symlink_to(f)
    return root


def run_one(data: Path, out: Path, strategy: str, row: str, seed: int) -> dict[str, Any]:
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    options = dict(ROWS[row])
    overrides = options.pop("overrides", {})
    return tk.train(data, strategy=strategy, seed=seed, out=str(out), quiet=True, overrides=overrides,
                    cache_dir=str(OUT / "embedding-cache"), **SETTINGS, **STRATEGIES[strategy], **options).summary


def predictions(run: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rows = json.loads((run / "test_predictions.json").read_text())
    rows.sort(key=lambda r: r["path"])
    return np.array([r["label"] for r in rows]), np.array([r["probs"] for r in rows]), [r["path"] for r in rows]


def score(name: str, strategy: str, seeds: int) -> dict[str, Any]:
    runs = {row: [OUT / name / strategy / row.replace(" ", "-") / f"seed{s}" for s in range(seeds)] for row in ROWS_OF[strategy]}
    labels, _, paths = predictions(runs["none"][0])
    probs = {}
    for row, dirs in runs.items():
        probs[row] = []
        for d in dirs:
            y, p, ps = predictions(d)
            assert ps == paths and (y == labels).all(), f"{d}: another test split"
            probs[row].append(p)
    k = probs["none"][0].shape[1]
    # the verdicts: each row against "none" (fixed before any result), exact paired test, Holm over the rows
    verdicts = verdicts_against(labels, probs, "none", k, "balanced_accuracy")
    table = {}
    for row, dirs in runs.items():
        summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
        entry: dict[str, Any] = {
            "selected_epochs": [s["selected_epoch"] for s in summaries],
            "time_s": round(float(np.mean([s["time_s"] for s in summaries])), 1),
            "balancing": summaries[0]["balancing"] | {"weights": None},
            "accuracy": seed_image_interval(labels, probs[row], k, "accuracy"),
        }
        if summaries[0].get("logit_adjustment"):
            entry["tau"] = [s["logit_adjustment"]["tau"] for s in summaries]
        for metric in METRICS:
            entry[metric] = seed_image_interval(labels, probs[row], k, metric)
        if row != "none":
            entry["balanced_accuracy_vs_none"] = verdicts[row]
            entry["macro_f1_vs_none"] = {"difference": float(np.mean([
                seed_image_interval(labels, [a], k, "macro_f1")["mean"] - seed_image_interval(labels, [b], k, "macro_f1")["mean"]
                for a, b in zip(probs[row], probs["none"])])), "ci95": difference_interval(labels, probs[row], probs["none"], k, "macro_f1"),
                "verdict": "not tested (descriptive interval; the verdicts read balanced accuracy)"}
        recalls = np.mean([[summ["per_class"][c]["recall"] for c in summ["data"]["classes"]] for summ in summaries], axis=0)
        entry["recall_per_class"] = dict(zip(summaries[0]["data"]["classes"], [round(float(r), 3) for r in recalls]))
        table[row] = entry
    first = json.loads((runs["none"][0] / "summary.json").read_text())
    outcomes = test_outcomes({"strategies": {row: {"run_dirs": dirs} for row, dirs in runs.items()}})
    return {"rows": table, "n_test": int(len(labels)), "seeds": seeds, "balance": first["balance"],
            "protocol": first["protocol"], "test_outcomes": {**outcomes, "paths": [os.path.relpath(p, OUT) for p in outcomes["paths"]]}}


def fmt(iv: dict[str, Any]) -> str:
    lo, hi = iv["ci95"]
    return f"{iv['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def fmt_diff(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    text = f"{d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    return text + (f" {d['verdict']} (p {d['p_value']:.3g}, Holm {d['p_holm']:.3g})" if "p_holm" in d else "")


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [f"# Imbalance benchmark\n\nCommand: `{command}`\n", f"Settings: {SETTINGS}, lp-ft warm-up 2 epochs; "
             "3 seeds; every figure on the test split (chose nothing), mean over seeds [95% CI: balanced accuracy MOVER over "
             "the classes' Clopper-Pearson limits on per-image scores averaged over seeds; macro-F1 a two-level bootstrap]; "
             "'vs none' is the paired difference to the row without balancing (same seeds and test images) with a two-level "
             "bootstrap interval; the verdict on balanced accuracy is an exact sign-flip test, Holm-adjusted over the rows "
             "compared with none, and needs every seed to agree in direction (transferkit.metrics.paired).\n"]
    for name, per_strategy in results["datasets"].items():
        for strategy, res in per_strategy.items():
            counts = res["balance"]["counts"]["train"]
            lines.append(f"## {name}, {strategy}\n\ntraining counts {counts} (ratio {res['balance']['ratio']}:1); "
                         f"n_test = {res['n_test']}, {res['seeds']} seeds\n")
            lines.append("| balancing | balanced accuracy | vs none | macro-F1 | vs none | accuracy | "
                         "rarest-class recall | selected epochs | tau |")
            lines.append("|---|---|---|---|---|---|---|---|---|")
            rarest = min(counts, key=counts.get)
            for row, e in res["rows"].items():
                vs = lambda m: "–" if row == "none" else fmt_diff(e[f"{m}_vs_none"])  # noqa: E731
                lines.append(f"| {row} | {fmt(e['balanced_accuracy'])} | {vs('balanced_accuracy')} | {fmt(e['macro_f1'])} | "
                             f"{vs('macro_f1')} | {fmt(e['accuracy'])} | {e['recall_per_class'][rarest]:.3f} | "
                             f"{', '.join(map(str, e['selected_epochs']))} | {', '.join(map(str, e.get('tau', []))) or '–'} |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default=",".join(SUBSETS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    started, load = time.perf_counter(), os.getloadavg()[0]
    results: dict[str, Any] = {"datasets": {}, "settings": SETTINGS, "rows": {k: {kk: vv for kk, vv in v.items()}
                                                                                 for k, v in ROWS.items()}}
    for name in args.datasets.split(","):
        data = make_subset(name)
        results["datasets"][name] = {}
        for strategy in args.strategies.split(","):
            for seed in range(args.seeds):
                for row in ROWS_OF[strategy]:
                    out = OUT / name / strategy / row.replace(" ", "-") / f"seed{seed}"
                    tick = time.perf_counter()
                    s = run_one(data, out, strategy, row, seed)
                    print(f"{name} {strategy} {row} seed {seed}: balanced accuracy {s['metrics']['balanced_accuracy']:.3f} "
                          f"({time.perf_counter() - tick:.0f}s)", flush=True)
            results["datasets"][name][strategy] = score(name, strategy, args.seeds)
    command = " ".join([".venv/bin/python benchmarks/imbalance.py"]
                       + ([f"--datasets {args.datasets}"] if args.datasets != ",".join(SUBSETS) else [])
                       + ([f"--strategies {args.strategies}"] if args.strategies != ",".join(STRATEGIES) else [])
                       + ([f"--seeds {args.seeds}"] if args.seeds != 3 else []))
    results.update(command=command, provenance=provenance(__file__), minutes=round((time.perf_counter() - started) / 60, 1),
                   subsets={k: {"source": f"$TRANSFERKIT_DATASETS/{v[0]}", "counts": v[1]} for k, v in SUBSETS.items()},
                   load_avg_1min_before=load)
    text = markdown(results, command)
    (HERE / "results" / "imbalance.md").write_text(text)
    write_json(HERE / "results" / "imbalance.json", results)
    print(text)


if __name__ == "__main__":
    main()
