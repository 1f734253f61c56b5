"""Calibration and test-time augmentation benchmark (issue 18, parts 2 and 3): measured figures.

Command (the tables in benchmarks/results/calibration_tta.md came from exactly this):

    .venv/bin/python benchmarks/calibration_tta.py

Runs (one seed each, seed 0, split seed 0, efficientnet_lite0, lr 1e-3, batch 32):
- hymenoptera, feature extraction, 5 epochs, 224 px (the converged probe on cached embeddings). The
  selection split is 15% of train/ (37 images), val/ (153) is the test split.
- flowers, feature extraction, 5 epochs, 224 px. One folder of classes, split 70/15/15 by transferkit
  (selection 450, test 450).
- neu_surface_defects, feature extraction, 5 epochs, 224 px, on train/ alone split 70/15/15 (NEU's own val/
  holds 30 images; the 30 are not used).
- flowers, lp-ft (2 probe epochs, then 3 fine-tuning epochs: 5 in all), 112 px: a fine-tuning run, where
  miscalibration is typical; 112 px and 5 epochs to fit a 2-core CPU. The same split as flowers' feature
  extraction run.

1. Calibration: what each finished run recorded in summary.json["calibration"]: the temperature fitted on the
   selection split (only with >= transferkit.engine.calibration.MIN_SELECTION = 100 selection images), and
   the test split's expected calibration error (15 equal-width bins) and NLL before and after. Nothing here
   is recomputed: the figures are the trainer's.
2. Test-time augmentation: each run's own test split (the images listed in its split.json, which chose
   nothing) predicted by the run's ONNX graph (engine onnx, the CPU default) with tta none, flip (2 views)
   and flip-crops (10 views: centre and corner crops of the resized image and their mirrors); the views'
   probabilities, at the run's calibration temperature, are averaged. Accuracy and balanced accuracy with
   their 95% intervals (Clopper-Pearson; MOVER for balanced accuracy; transferkit.metrics.intervals), NLL with
   a stratified bootstrap interval (1,000 resamples); flip - none and flip-crops - none as paired differences
   over the same images (transferkit.metrics.paired.paired_test, one run = one "seed": McNemar's exact test for
   accuracy, the sign-flip test for balanced accuracy), Holm-adjusted over every TTA comparison in the table
   (all runs, both modes; each metric its own family), with a bootstrap interval of the difference for
   display; NLL's paired difference from the same stratified resamples (lower is better; descriptive). Wall time of each mode: one pass over
   the test split after a warm-up (the ONNX export and session are made before timing), image decoding
   included. The tta=none pass is checked against the run's test_predictions.json.

Finished runs under benchmarks/runs/calibration_tta/ are reused; delete that folder for a fresh measurement
(the feature-extraction runs' wall time then includes filling an empty embedding cache).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import transferkit as tk
from transferkit.data.scan import Sample
from transferkit.export.runfiles import load_run
from transferkit.fileio import portable_paths, write_json
from transferkit.metrics.classification import detailed_metrics
from transferkit.metrics.intervals import stratified_resamples
from transferkit.metrics.paired import decide, holm, paired_test

from provenance import provenance  # benchmarks/provenance.py (the script's folder is on sys.path)
from transferkit.workflow import _infer

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")
OUT = HERE / "runs" / "calibration_tta"
PATH_ROOTS = {"$TRANSFERKIT_DATASETS": ROOT, "": HERE.parent}
COMMON = dict(backbone="efficientnet_lite0", lr=1e-3, batch_size=32, seed=0)
RUNS: dict[str, dict[str, Any]] = {
    "hymenoptera-fe": dict(data="hymenoptera", strategy="feature-extraction", epochs=5, input_size=224),
    "flowers-fe": dict(data="flowers", strategy="feature-extraction", epochs=5, input_size=224),
    "neu-fe": dict(data="neu_surface_defects/train", strategy="feature-extraction", epochs=5, input_size=224),
    "flowers-lpft-112": dict(data="flowers", strategy="lp-ft", epochs=5, input_size=112, warmup_epochs=2),
}
TTA = ("none", "flip", "flip-crops")
BINS = 15  # transferkit.metrics.classification.expected_calibration_error's default
N_RESAMPLES = 1000


def train(key: str) -> dict[str, Any]:
    out = OUT / key
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    options = dict(RUNS[key])
    data = ROOT / options.pop("data")
    return tk.train(data, out=str(out), quiet=True, cache_dir=str(OUT / "embedding-cache"), **COMMON, **options).summary


def calibration_row(key: str) -> dict[str, Any]:
    run = OUT / key
    summary = json.loads((run / "summary.json").read_text())
    details = json.loads((run / "test_metrics.json").read_text())
    cal = summary["calibration"] or {}
    row: dict[str, Any] = {
        "run": f"benchmarks/runs/calibration_tta/{key}",
        "method": cal.get("method"),
        "temperature": cal.get("temperature"),
        "n_selection": summary["data"]["n_selection"],
        "n_test": summary["data"]["n_test"],
        "selected_epoch": summary.get("selected_epoch"),
        "time_s": summary.get("time_s"),
        "test_accuracy": summary["metrics"]["accuracy"],
    }
    if cal.get("method") == "temperature":
        row.update(fitted_on=cal["fitted_on"], n_fitted=cal["n"], selection_nll_before=cal["selection_nll_before"],
                   selection_nll_after=cal["selection_nll_after"], test=cal["test"])
    else:  # no temperature: the reported test figures are the uncalibrated ones
        row.update(reason=cal.get("reason"),
                   test={"n": details["n"], "ece_before": details["calibration"]["ece"], "ece_after": None,
                         "nll_before": details["metrics"]["nll"], "nll_after": None})
    return row


def test_samples(run: Path) -> list[Sample]:
    split = json.loads((run / "split.json").read_text())
    root = Path(split["root"])
    return [Sample(str(root / rel), int(label)) for rel, label in split["test"]]


def per_image_nll(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    # as summary_metrics computes the NLL (probabilities clipped at 1e-12)
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))


def interval(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def tta_block(key: str) -> dict[str, Any]:
    run = OUT / key
    loaded = load_run(run)
    samples = test_samples(run)
    failed: list[Any] = []
    on_failed = failed.extend
    _infer(loaded, samples[:8], 64, "onnx", "evaluation", on_failed, "none")  # warm-up: ONNX export + session
    recorded = {r["path"]: r["probs"] for r in json.loads((run / "test_predictions.json").read_text())}
    labels, probs, modes = None, {}, {}
    for mode in TTA:
        tick = time.perf_counter()
        result, engine = _infer(loaded, samples, 64, "onnx", "evaluation", on_failed, mode)
        wall = time.perf_counter() - tick
        order = np.argsort(result["indices"])
        y, p = result["labels"][order], np.asarray(result["outputs"], dtype=np.float64)[order]
        assert len(y) == len(samples), f"{key}: {len(samples) - len(y)} test images unreadable"
        labels = y if labels is None else labels
        assert (labels == y).all()
        probs[mode] = p
        details = detailed_metrics(y, p, loaded.classes)
        modes[mode] = {"engine": engine, "wall_s": round(wall, 2), "images_per_s": round(len(y) / wall, 1),
                       "accuracy": details["metrics"]["accuracy"], "accuracy_ci95": details["ci95"]["accuracy"],
                       "balanced_accuracy": details["metrics"]["balanced_accuracy"],
                       "balanced_accuracy_ci95": details["ci95"]["balanced_accuracy"],
                       "nll": details["metrics"]["nll"], "ece": details["calibration"]["ece"]}
    assert not failed, failed
    k = len(loaded.classes)
    # the tta=none pass must answer what the trainer recorded (the same calibrated model on the same images)
    reference = np.array([recorded[s.path] for s in samples])
    parity = float(np.abs(probs["none"] - reference).max())
    index = stratified_resamples(labels, N_RESAMPLES, 0)
    nll_of = {m: per_image_nll(labels, p) for m, p in probs.items()}
    for mode in TTA:
        modes[mode]["nll_ci95"] = interval(nll_of[mode][index].mean(axis=1))
    diffs = {}
    pair_index = stratified_resamples(labels, 2000, 0)
    for mode in TTA[1:]:
        # p-values only here: the verdicts are decided in main(), Holm over every comparison of the table
        entry = {m: paired_test(labels, [probs[mode]], [probs["none"]], k, m) for m in ("accuracy", "balanced_accuracy")}
        d = nll_of[mode] - nll_of["none"]
        ci = interval(d[pair_index].mean(axis=1))
        entry["nll"] = {"metric": "nll", "difference": float(d.mean()), "ci95": ci, "n_resamples": 2000,
                        "verdict": "better (lower)" if ci[1] < 0 else "worse (higher)" if ci[0] > 0 else "no clear difference"}
        entry["changed_predictions"] = int((probs[mode].argmax(1) != probs["none"].argmax(1)).sum())
        diffs[f"{mode} - none"] = entry
    return {"n_test": int(len(labels)), "classes": loaded.classes, "temperature": loaded.temperature,
            "input_size": loaded.spec.input_size, "none_vs_recorded_max_abs_prob_diff": parity,
            "modes": modes, "paired": diffs}


def f3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def fmt_iv(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def fmt_diff(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    tested = f" (p {d['p_value']:.3g}, Holm {d['p_holm']:.3g})" if "p_holm" in d else ""
    return f"{d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] {d['verdict']}{tested}"


def describe(key: str) -> str:
    r = RUNS[key]
    extra = f", warm-up {r['warmup_epochs']}" if "warmup_epochs" in r else ""
    return f"{key} ({r['strategy']}, {r['epochs']} ep{extra}, {r['input_size']} px)"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Calibration and test-time augmentation\n",
        f"Command: `{results['command']}`\n",
        f"Settings: {COMMON}; one run (seed 0, split seed 0) per row; every figure on the run's test split, which "
        "chose nothing. Load average (1 min) before: "
        f"{results['load_avg_1min_before']:.2f}, after: {results['load_avg_1min_after']:.2f}; total {results['minutes']} min "
        "on 2 shared CPU cores.\n",
        "Data: hymenoptera = `$TRANSFERKIT_DATASETS/hymenoptera` (selection 15% of train/, test = val/); flowers = "
        "`$TRANSFERKIT_DATASETS/flowers` split 70/15/15; neu = `$TRANSFERKIT_DATASETS/neu_surface_defects/train` split "
        "70/15/15 (the 30-image val/ unused). The two flowers runs share one split.\n",
        "## 1. Temperature scaling (from each run's summary.json)\n",
        f"T fitted by NLL on the selection split only when it holds >= 100 images (MIN_SELECTION); ECE with {BINS} "
        "equal-width bins. 'before' = T 1, 'after' = the fitted T; both on the test split.\n",
        "| run | T | n selection | selection NLL before → after | n test | test ECE before | test ECE after | "
        "test NLL before | test NLL after | test acc. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, c in results["calibration"].items():
        t = c["test"]
        if c["method"] == "temperature":
            sel = f"{c['selection_nll_before']:.3f} → {c['selection_nll_after']:.3f}"
            temp = f"{c['temperature']:.3f}"
        else:
            sel, temp = "–", "not fitted (1.0)"
        lines.append(f"| {describe(key)} | {temp} | {c['n_selection']} | {sel} | {t['n']} | {f3(t['ece_before'])} | "
                     f"{f3(t['ece_after'])} | {f3(t['nll_before'])} | {f3(t['nll_after'])} | {c['test_accuracy']:.3f} |")
    notes = [f"- {key}: {c['reason']}." for key, c in results["calibration"].items() if c["method"] != "temperature"]
    lines += [""] + notes + [""]
    lines += [
        "## 2. Test-time augmentation (ONNX engine, the run's test split)\n",
        "Probabilities at the run's temperature (1.0 where none was fitted), averaged over the views. Intervals: "
        "stratified bootstrap 95% (1,000 resamples, seed 0; NLL from the same resamples). Wall time: one pass "
        "after a warm-up, decoding included.\n",
        "| run | n test | tta | views | accuracy [95% CI] | balanced acc. [95% CI] | NLL [95% CI] | ECE | wall (s) | images/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    views = {"none": 1, "flip": 2, "flip-crops": 10}
    for key, b in results["tta"].items():
        for mode, m in b["modes"].items():
            lines.append(f"| {key} | {b['n_test']} | {mode} | {views[mode]} | {fmt_iv(m['accuracy'], m['accuracy_ci95'])} | "
                         f"{fmt_iv(m['balanced_accuracy'], m['balanced_accuracy_ci95'])} | {fmt_iv(m['nll'], m['nll_ci95'])} | "
                         f"{m['ece']:.3f} | {m['wall_s']:.1f} | {m['images_per_s']:.0f} |")
    lines += ["", "Paired differences on the same images (one run; interval: 2,000 stratified resamples, for display). "
              "Verdicts on accuracy and balanced accuracy: exact paired test (McNemar for accuracy, sign-flip for balanced "
              "accuracy), p and Holm-adjusted p over every comparison of this table; NLL: 'better (lower)' when its "
              "interval is below 0 (descriptive, not a test):\n",
              "| run | comparison | accuracy diff [95% CI] | balanced acc. diff [95% CI] | NLL diff [95% CI] | "
              "predictions changed | wall time ratio |",
              "|---|---|---|---|---|---|---|"]
    for key, b in results["tta"].items():
        for name, d in b["paired"].items():
            ratio = b["modes"][name.split(" - ")[0]]["wall_s"] / b["modes"]["none"]["wall_s"]
            lines.append(f"| {key} | {name} | {fmt_diff(d['accuracy'])} | {fmt_diff(d['balanced_accuracy'])} | "
                         f"{fmt_diff(d['nll'])} | {d['changed_predictions']} / {b['n_test']} | {ratio:.1f}x |")
    lines += ["", "Check: the tta=none pass reproduces each run's recorded test_predictions.json (max abs probability "
              "difference: " + ", ".join(f"{k} {b['none_vs_recorded_max_abs_prob_diff']:.1e}" for k, b in results["tta"].items())
              + ").", ""]
    lines += ["What differs between rows besides the measured factor: the runs differ in dataset, strategy "
              "(feature extraction's head is the converged probe; lp-ft trains the backbone), resolution (224 vs 112 px) "
              "and test-set size; within a run the three TTA modes share the model, temperature and images.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default=",".join(RUNS))
    args = parser.parse_args()
    keys = args.runs.split(",")
    started, load = time.perf_counter(), os.getloadavg()[0]
    results: dict[str, Any] = {"settings": COMMON, "runs": {k: {**v, "data": f"$TRANSFERKIT_DATASETS/{v['data']}"} for k, v in RUNS.items() if k in keys},
                               "calibration": {}, "tta": {}}
    for key in keys:
        tick = time.perf_counter()
        s = train(key)
        print(f"{key}: trained, test accuracy {s['metrics']['accuracy']:.3f}, T {(s['calibration'] or {}).get('temperature')} "
              f"({time.perf_counter() - tick:.0f}s)", flush=True)
        results["calibration"][key] = calibration_row(key)
    for key in keys:
        tick = time.perf_counter()
        results["tta"][key] = tta_block(key)
        print(f"{key}: tta " + ", ".join(f"{m} {v['accuracy']:.3f} ({v['wall_s']:.0f}s)"
                                         for m, v in results["tta"][key]["modes"].items())
              + f" ({time.perf_counter() - tick:.0f}s)", flush=True)
    for metric in ("accuracy", "balanced_accuracy"):  # Holm over every TTA comparison in the table, per metric
        family = {(key, pair): entry[metric] for key, block in results["tta"].items() for pair, entry in block["paired"].items()}
        adjusted = holm({f"{key}: {pair}": test["p_value"] for (key, pair), test in family.items()})
        for (key, pair), test in family.items():
            test.update(p_holm=adjusted[f"{key}: {pair}"], verdict=decide(test, adjusted[f"{key}: {pair}"]),
                        family=f"{len(family)} TTA comparisons ({metric})")
    command = ".venv/bin/python benchmarks/calibration_tta.py" + (f" --runs {args.runs}" if args.runs != ",".join(RUNS) else "")
    results.update(command=command, provenance=provenance(__file__), minutes=round((time.perf_counter() - started) / 60, 1), load_avg_1min_before=load,
                   load_avg_1min_after=os.getloadavg()[0], ece_bins=BINS)
    results = portable_paths(results, PATH_ROOTS)
    text = markdown(results)
    (HERE / "results" / "calibration_tta.md").write_text(text)
    write_json(HERE / "results" / "calibration_tta.json", results)
    print(text)


if __name__ == "__main__":
    main()
