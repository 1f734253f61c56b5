"""Linear-probe benchmark (issue 13): the old SGD head vs the converged probe vs a plain scikit-learn pipeline.

Command (the committed tables came from exactly this)::

    .venv/bin/python benchmarks/linear_probe.py --lpft-seeds 3     # 4 datasets + lp-ft before/after
    .venv/bin/python benchmarks/linear_probe.py --only hymenoptera --lpft-seeds 0   # a quick look
    .venv/bin/python benchmarks/linear_probe.py --only none --lpft-seeds 0 --scale-rows 1000000 \
        --out benchmarks/results/linear_probe_scale.json                      # the large-cache memory check

Writes benchmarks/results/linear_probe.json and .md. efficientnet_lite0 at its native 224 px; every
head sees the same embeddings (the package's content-addressed cache, eval view) and the same split:

- **old head**: ``transferkit.train`` feature extraction with ``model.head_fit=sgd`` (10 epochs of
  AdamW 1e-3 on cached embeddings, label smoothing 0.1, dropout 0.2, cosine schedule, batch 32; the
  epoch is chosen on the selection split by the monitor; fitted on the fit split only);
- **new head**: the same call with the default ``head_fit=auto``: one converged L-BFGS probe
  (multinomial logistic regression) on centred embeddings divided by one global scale
  (``transferkit.features.probe.SCALINGS``), L2 strength from ``transferkit.features.probe.L2_GRID``
  chosen by the lowest held-out log loss (ties: the run's monitor). Held out means the selection split
  when it has at least ``CV_BELOW`` (300) images, else 5-fold cross-validation over fit + selection.
  When nothing chooses on the selection split after the probe (no temperature: fewer than 100 selection
  images; no tuned logit adjustment), the run refits the probe on fit + selection at the chosen strength
  (``head_fit['refit_on']``), so on those data sets it trains on more images than the other two heads;
  every table row records what its probe chose on and was fitted on;
- **scikit-learn**: ``make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))``
  fitted on the fit split, default strength (the plain pipeline a user would write).

The trainer's post-hoc steps run as by default for both trainer heads (temperature scaling, which keeps every
predicted class, and on imbalanced data the tuned logit adjustment, which can change it); each head's record
keeps them.

Splits (stratified, seed 0; the selection split chooses epochs, L2 strengths, temperatures; the report split
is scored once and chooses nothing):

- hymenoptera: its train/ split 80/20 into fit/selection; report on its given val/ (153 images).
- flowers (5 x 600): 70/15/15 fit/selection/report.
- flowers, imbalanced: 600/300/120/60/30 images of daisy/dandelion/roses/sunflowers/tulips (seeded
  sample), then 70/15/15; epochs and strengths are chosen on balanced accuracy.
- neu_surface_defects: its train/ folder 70/15/15 (its given val/ holds 30 images, one error = 3.3
  points, too few to separate heads; not used).

The trainer sees each split as train/ val/ test/ of a folder of symbolic links (the cache keys on file
bytes, so all heads read the same rows). Intervals (transferkit.metrics.intervals): Clopper-Pearson for
accuracy, MOVER over the classes' Clopper-Pearson limits for balanced accuracy; the differences new - old and
new - scikit-learn are paired over the same images and judged by exact tests (transferkit.metrics.paired:
McNemar for accuracy, sign-flip for balanced accuracy), Holm-adjusted over the two comparisons of each data
set and metric, and shown with a 2,000-resample bootstrap interval (a description, not the verdict). Head fit
time: the sum of the old head's epochs (each includes its selection-split evaluation), the probe's fit
including its whole L2 grid (and folds), the pipeline's fit. The machine is shared (load average recorded).

``--lpft-seeds N`` adds LP-FT before/after on hymenoptera with the same split: ``strategy=lp-ft``,
2 head-only warm-up epochs then 4 of fine-tuning everything, 112 px (to fit 2 CPU cores, as in
benchmarks/compare_strategies.py), ``head_fit=sgd`` (warm-up by AdamW epochs) vs the default (warm-up by the
converged probe); N seeds each, paired by seed: each row's mean over seeds with its Clopper-Pearson interval on
per-image scores averaged over the seeds (``seed_image_interval``), and the verdict after vs before from
``verdicts_against`` (exact sign-flip test over images and a t test over the seeds' spread).

``--scale-rows 1000000`` adds the scale check: for a cache of that many 1280-d rows the run plans the
streaming mini-batch path (a full-batch probe would need rows x 1280 x 8 bytes), and one epoch of it
is measured with benchmarks/speed.py's own scale measurement (synthetic float16 cache, fresh process,
peak RSS from /proc VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
IMBALANCED = {"daisy": 600, "dandelion": 300, "roses": 120, "sunflowers": 60, "tulips": 30}
RESAMPLES = 2000
DATASETS = ("hymenoptera", "flowers", "flowers_imbalanced", "neu_surface_defects")


# --- splits ------------------------------------------------------------------------------------


def _images(folder: Path) -> dict[str, list[Path]]:
    return {c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for c in sorted(folder.iterdir()) if c.is_dir()}


def _stratified(files: dict[str, list[Path]], fractions: tuple[float, ...], seed: int = 0) -> list[dict[str, list[Path]]]:
    """Each class shuffled with its own seeded generator and cut at the cumulative fractions."""
    parts: list[dict[str, list[Path]]] = [{} for _ in fractions]
    for name, paths in files.items():
        order = list(paths)
        random.Random(f"{seed}-{name}").shuffle(order)
        cuts = np.rint(np.cumsum(fractions) * len(order)).astype(int)
        for i, (lo, hi) in enumerate(zip([0, *cuts[:-1]], cuts)):
            parts[i][name] = order[lo:hi]
    return parts


def build_splits(name: str) -> tuple[dict[str, dict[str, list[Path]]], str, str]:
    """{role: {class: files}} for roles train (fit), val (selection), test (report); monitor; description."""
    if name == "hymenoptera":
        fit, sel = _stratified(_images(ROOT / name / "train"), (0.8, 0.2))
        return {"train": fit, "val": sel, "test": _images(ROOT / name / "val")}, "accuracy", \
            "train/ split 80/20 into fit/selection; report on the given val/"
    if name == "flowers_imbalanced":
        rng = random.Random(0)
        files = {c: sorted(rng.sample(paths, IMBALANCED[c])) for c, paths in _images(ROOT / "flowers").items()}
        fit, sel, rep = _stratified(files, (0.7, 0.15, 0.15))
        return {"train": fit, "val": sel, "test": rep}, "balanced_accuracy", \
            "flowers subsample 600/300/120/60/30 (seed 0), 70/15/15"
    source = ROOT / name / ("train" if name == "neu_surface_defects" else "")
    fit, sel, rep = _stratified(_images(source), (0.7, 0.15, 0.15))
    what = "train/ folder 70/15/15 (the 30-image given val/ is not used)" if name == "neu_surface_defects" else "70/15/15"
    return {"train": fit, "val": sel, "test": rep}, "accuracy", what


def link_folder(splits: dict[str, dict[str, list[Path]]], target: Path) -> Path:
    for role, classes in splits.items():
        for cls, paths in classes.items():
            (target / role / cls).mkdir(parents=True)
            for p in paths:
                (target / role / cls / p.name).symlink_to(p)
    return target


# --- statistics ----------------------------------------------------------------------------------


def head_statistics(labels: np.ndarray, preds: dict[str, np.ndarray], k: int) -> dict:
    """Each head's 95% intervals and the paired verdicts new vs old and new vs scikit-learn, with the package's
    own methods (transferkit.metrics): Clopper-Pearson for accuracy, MOVER for balanced accuracy; exact paired
    tests Holm-adjusted over the two comparisons (per metric), a bootstrap interval of each difference for display.

    Returns ``{head: {metric: [low, high]}}`` for each head and ``{"new-sklearn" | "new-old": {metric: {"difference",
    "ci95": [low, high], "p_value", "p_holm", "verdict", "differing_images", "test"}}}``. ``k``: the run's classes."""
    from transferkit.metrics.intervals import metric_intervals
    from transferkit.metrics.paired import decide, holm, paired_test

    probs = {h: np.eye(k)[p] for h, p in preds.items()}
    out: dict = {h: metric_intervals(labels, p, k, metrics=("accuracy", "balanced_accuracy"))[0] for h, p in probs.items()}
    for metric in ("accuracy", "balanced_accuracy"):
        tests = {f"new-{b}": paired_test(labels, [probs["new"]], [probs[b]], k, metric, n_resamples=RESAMPLES)
                 for b in ("sklearn", "old")}
        adjusted = holm({key: t["p_value"] for key, t in tests.items()})
        for key, t in tests.items():
            out.setdefault(key, {})[metric] = {"difference": t["difference"], "ci95": t["ci95"], "p_value": t["p_value"],
                                               "p_holm": adjusted[key], "verdict": decide(t, adjusted[key]),
                                               "differing_images": t["differing_images"], "test": t["test"],
                                               "family": "Holm over new-sklearn and new-old"}
    return out


def point(labels: np.ndarray, pred: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    return {"accuracy": round(float(accuracy_score(labels, pred)), 4),
            "balanced_accuracy": round(float(balanced_accuracy_score(labels, pred)), 4)}


# --- heads -----------------------------------------------------------------------------------------


def trainer_head(folder: Path, out: Path, head_fit: str, monitor: str, cache_dir: str | None) -> dict:
    import transferkit as tk

    result = tk.train(folder, out=str(out), strategy="feature-extraction", epochs=10, batch_size=32, seed=0, quiet=True,
                      cache_dir=cache_dir, overrides={"model.head_fit": head_fit, "engine.monitor": monitor,
                                                      "data.validate": False})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = json.loads((out / "test_predictions.json").read_text())
    s = result.summary
    chosen = next(r for r in records if r["epoch"] == s["selected_epoch"])  # the probe's one line carries the last epoch
    fit = s["head_fit"]
    return {"labels": np.array([r["label"] for r in rows]), "pred": np.array([int(np.argmax(r["probs"])) for r in rows]),
            "classes": len(s["data"]["classes"]),
            "fit_s": round(sum(r["time_s"] for r in records), 2), "selected_epoch": s["selected_epoch"],
            # on the rows the head was fitted on: the fit split, or fit + selection where the probe was refitted
            "train_accuracy": round(chosen["train_accuracy"], 4),
            "head_fit": {k: v for k, v in fit.items() if k != "grid"},
            # per candidate: scaling, l2, held-out score (the monitor) and log loss (out of fold under cross-validation)
            "selection_scores": [[c["scaling"], c["l2"], round(c["score"], 4), round(c["nll"], 4)] for c in fit.get("grid", [])],
            "selection_metrics": s["selection_metrics"],
            "selection_in_sample": bool(chosen.get("selection_in_sample", False)),
            "trainer_test_metrics": s["metrics"],  # summary["metrics"]: the test (report) split's, cross-checked below
            "calibration": s.get("calibration"), "logit_adjustment": s["logit_adjustment"],
            "n": {k: s["data"][k] for k in ("n_train", "n_selection", "n_test")}}


def sklearn_head(folder: Path, cache_dir: str | None) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit.features import embed_folder

    emb = embed_folder(folder, None, cache_dir=cache_dir)  # the same cache rows the trainer read
    x, y, split = emb["embeddings"].astype(np.float32), emb["labels"], emb["splits"]
    tick = time.perf_counter()
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(x[split == "train"], y[split == "train"])
    fit_s = time.perf_counter() - tick
    order = np.argsort(emb["paths"][split == "test"], kind="stable")
    return {"labels": y[split == "test"][order], "pred": pipe.predict(x[split == "test"])[order], "fit_s": round(fit_s, 2),
            "paths": emb["paths"][split == "test"][order],
            "train_accuracy": round(float(pipe.score(x[split == "train"], y[split == "train"])), 4)}


def _align(run: Path, head: dict) -> dict:
    """Trainer predictions in the same (path-sorted) order as the pipeline's."""
    rows = json.loads((run / "test_predictions.json").read_text())
    order = np.argsort(np.array([r["path"] for r in rows]), kind="stable")
    return {**head, "labels": head["labels"][order], "pred": head["pred"][order], "paths": np.array([r["path"] for r in rows])[order]}


def bench_dataset(name: str, work: Path, cache_dir: str | None) -> dict:
    splits, monitor, protocol = build_splits(name)
    folder = link_folder(splits, work / name / "data")
    print(f"{name}: " + ", ".join(f"{role} {sum(map(len, c.values()))}" for role, c in splits.items()), flush=True)
    load = round(os.getloadavg()[0], 2)
    old = _align(work / name / "old", trainer_head(folder, work / name / "old", "sgd", monitor, cache_dir))
    new = _align(work / name / "new", trainer_head(folder, work / name / "new", "auto", monitor, cache_dir))
    skl = sklearn_head(folder, cache_dir)
    assert (old["paths"] == new["paths"]).all() and (new["paths"] == skl["paths"]).all(), "heads scored different images"
    labels = new["labels"]
    assert (old["labels"] == labels).all() and (skl["labels"] == labels).all()
    heads = {"old": old, "new": new, "sklearn": skl}
    for h in ("old", "new"):  # the report figures are the trainer's own (summary["metrics"] is the test split's)
        assert abs(point(labels, heads[h]["pred"])["accuracy"] - heads[h]["trainer_test_metrics"]["accuracy"]) < 1e-3, h
    intervals = head_statistics(labels, {h: v["pred"] for h, v in heads.items()}, new["classes"])
    out = {"protocol": protocol, "monitor": monitor, "n": new["n"], "report_class_counts": np.bincount(labels).tolist(),
           "load_avg": load, "heads": {}}
    for h, v in heads.items():
        out["heads"][h] = {**point(labels, v["pred"]), "ci95": intervals[h], "fit_s": v["fit_s"],
                           "train_accuracy": v["train_accuracy"],
                           **{k: v[k] for k in ("selected_epoch", "head_fit", "selection_scores", "selection_metrics",
                                                "selection_in_sample", "calibration", "logit_adjustment") if k in v}}
    out["heads"]["sklearn"]["fitted_on"] = "fit split"
    out["differences"] = {k: intervals[k] for k in ("new-sklearn", "new-old")}
    print(f"  old {out['heads']['old']['accuracy']:.4f}  new {out['heads']['new']['accuracy']:.4f}  "
          f"sklearn {out['heads']['sklearn']['accuracy']:.4f}", flush=True)
    return out


def bench_lpft(seeds: int, work: Path, cache_dir: str | None) -> dict:
    import transferkit as tk
    from transferkit.metrics.intervals import seed_image_interval
    from transferkit.metrics.paired import verdicts_against

    splits, _, protocol = build_splits("hymenoptera")
    folder = work / "lpft_data"
    if not folder.exists():
        link_folder(splits, folder)
    before, after = "sgd warm-up (before)", "probe warm-up (after)"
    runs: dict[str, list[dict]] = {before: [], after: []}
    probs: dict[str, list[np.ndarray]] = {before: [], after: []}
    labels = paths = None
    classes = 0
    for seed in range(seeds):
        for label, head_fit in ((before, "sgd"), (after, "auto")):
            out = work / f"lpft_{head_fit}_{seed}"
            tick = time.perf_counter()
            s = tk.train(folder, out=str(out), strategy="lp-ft", warmup_epochs=2, epochs=6, input_size=112, batch_size=32,
                         lr=1e-3, seed=seed, quiet=True, cache_dir=cache_dir,
                         overrides={"model.head_fit": head_fit, "data.validate": False}).summary
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            warm = next(r for r in records if r["epoch"] == 2)  # the end of the head-only warm-up (the probe's one line)
            rows = sorted(json.loads((out / "test_predictions.json").read_text()), key=lambda r: r["path"])
            y, run_paths = np.array([r["label"] for r in rows]), [r["path"] for r in rows]
            if labels is None:
                labels, paths, classes = y, run_paths, len(s["data"]["classes"])
            assert run_paths == paths and (y == labels).all(), "lp-ft runs scored different images"
            probs[label].append(np.array([r["probs"] for r in rows], dtype=np.float64))
            runs[label].append({"seed": seed, "test_accuracy": round(s["metrics"]["accuracy"], 4),
                                "test_balanced_accuracy": round(s["metrics"]["balanced_accuracy"], 4),
                                "selection_accuracy": round(s["selection_metrics"]["accuracy"], 4),
                                "selected_epoch": s["selected_epoch"],
                                "after_warmup_selection_accuracy": round(warm["selection_accuracy"], 4),
                                "after_warmup_selection_in_sample": bool(warm.get("selection_in_sample", False)),
                                "warmup_head_fit": {k: v for k, v in s["head_fit"].items() if k != "grid"},
                                "n": {k: s["data"][k] for k in ("n_train", "n_selection", "n_test")},
                                "wall_s": round(time.perf_counter() - tick, 1)})
            print(f"  lp-ft {label} seed {seed}: test {runs[label][-1]['test_accuracy']}", flush=True)
    summary = {}
    for label in runs:
        summary[label] = {m: seed_image_interval(labels, probs[label], classes, m) for m in ("accuracy", "balanced_accuracy")}
    verdicts = {m: verdicts_against(labels, probs, before, classes, m, n_resamples=RESAMPLES)[after]
                for m in ("accuracy", "balanced_accuracy")}
    return {"protocol": protocol + "; lp-ft: 2 warm-up + 4 fine-tuning epochs, 112 px, lr 1e-3, batch 32",
            "n_test": int(len(labels)), "seeds": seeds, "runs": runs, "summary": summary,
            "after_vs_before": {m: {k: v[k] for k in ("difference", "per_seed", "ci95", "p_value", "p_holm", "p_seed",
                                                      "p_seed_holm", "verdict", "seeds_agree", "distinct_models",
                                                      "differing_images", "test", "family")}
                                for m, v in verdicts.items()}}


# --- output ------------------------------------------------------------------------------------------


def bench_scale(rows: int) -> dict:
    import sys

    from transferkit.config import RunCfg, StrategyCfg
    from transferkit.features.headfit import probe_planned
    from transferkit.features.probe import PROBE_MAX_BYTES
    from transferkit.strategy.plan import make_plan

    sys.path.insert(0, str(HERE))
    import speed

    plan = make_plan(StrategyCfg(name="feature-extraction"), ["g"], 10)
    planned = probe_planned(RunCfg(), plan, rows, 1280)
    print(f"scale: {rows:,} rows -> {'probe' if planned else 'streaming mini-batch path'}", flush=True)
    return {"rows": rows, "probe_max_bytes": PROBE_MAX_BYTES, "probe_planned": planned, **speed.bench_scale(rows, 256)}


def _iv(iv: list[float] | None, sign: str = "") -> str:
    return "[no interval]" if iv is None else f"[{iv[0]:{sign}.3f}, {iv[1]:{sign}.3f}]"


def probe_fit(h: dict) -> str:
    """What the probe chose its strength on and what it was fitted on (from summary.json's head_fit)."""
    f = h["head_fit"]
    on = f["selected_on"].split("; refitted")[0]  # the refit is said once, below
    return f"l2 {f['l2']:.0e}, {f['scaling']} scaling, chosen on {on}; fitted on {f['refit_on']} ({f['train_rows']} rows)"


def _dataset_tables(result: dict) -> list[str]:
    fmt = lambda h, m: f"{h[m]:.3f} {_iv(h['ci95'][m])}"  # noqa: E731
    lines = ["Report split only (nothing was chosen on it); 95% intervals: Clopper-Pearson (accuracy), MOVER over the "
             "classes' Clopper-Pearson limits (balanced accuracy). \"train\" in the probe's record is the fit split. Train "
             "acc.: on the rows the head was fitted on. Fit "
             "time: the head-only phase on cached embeddings (old: its 10 epochs with their selection-split evaluations; "
             "new: the probe with its whole L2 grid, its cross-validation folds where it used them, and its evaluation).", "",
             "| data (report n) | head | accuracy | balanced acc. | train acc. | fit (s) | chosen / fitted on |",
             "|---|---|---|---|---|---|---|"]
    for name, d in result["datasets"].items():
        for h, label in (("old", "old: 10 AdamW epochs"), ("new", "new: converged probe"), ("sklearn", "scikit-learn C=1")):
            v = d["heads"][h]
            chosen = (f"epoch {v['selected_epoch']} on the selection split; fitted on the fit split" if h == "old"
                      else probe_fit(v) if h == "new" else "C=1 fixed; fitted on the fit split")
            lines.append(f"| {name} ({sum(d['report_class_counts'])}) | {label} | {fmt(v, 'accuracy')} | {fmt(v, 'balanced_accuracy')} | "
                         f"{v['train_accuracy']:.3f} | {v['fit_s']:.2f} | {chosen} |")
    lines += ["", "Paired differences on the report images [95% bootstrap interval, 2,000 resamples, for display], verdict "
              "from the exact test (McNemar for accuracy, sign-flip for balanced accuracy), Holm-adjusted over the two "
              "comparisons of each data set and metric (adjusted p, images on which the two heads' outcomes differ):", "",
              "| data | new - scikit-learn: acc. | bal. acc. | new - old: acc. | bal. acc. |", "|---|---|---|---|---|"]
    for name, d in result["datasets"].items():
        iv = d["differences"]
        cell = lambda k, m: (f"{iv[k][m]['difference']:+.3f} {_iv(iv[k][m]['ci95'], '+')} "  # noqa: E731
                             f"{iv[k][m]['verdict']} (p {iv[k][m]['p_holm']:.3g}, {iv[k][m]['differing_images']} images differ)")
        lines.append(f"| {name} | {cell('new-sklearn', 'accuracy')} | {cell('new-sklearn', 'balanced_accuracy')} | "
                     f"{cell('new-old', 'accuracy')} | {cell('new-old', 'balanced_accuracy')} |")
    lines += ["", "Protocols (the old head's epoch is chosen on the selection split by the monitor; the probe's strength by "
              "the lowest held-out log loss, ties broken by the monitor, held out meaning the selection split from 300 "
              "images, else 5-fold cross-validation over fit + selection; where nothing chooses on the selection split "
              "after it, the probe is refitted on fit + selection; n: fit / selection / report images):", ""]
    for n, d in result["datasets"].items():
        post = d["heads"]["new"].get("logit_adjustment")
        lines.append(f"- {n}: {d['protocol']}; monitor {d['monitor']}; n = {d['n']['n_train']} / {d['n']['n_selection']} / {d['n']['n_test']}; load average {d['load_avg']}"
                     + ("; logit adjustment tuned on the selection split for both trainer heads" if post else ""))
    return lines


def table(result: dict) -> str:
    lines = ["# Linear probe: old SGD head vs converged probe vs scikit-learn (efficientnet_lite0)", "",
             f"Command: `{result['command']}`", ""]
    if result["datasets"]:
        lines += _dataset_tables(result)
    if "lpft" in result:
        lp = result["lpft"]
        lines += ["", f"## LP-FT before/after (hymenoptera, report split = its val/, n = {lp['n_test']}, {lp['seeds']} seed{'s' if lp['seeds'] != 1 else ''})", "",
                  lp["protocol"], "",
                  "| warm-up | report accuracy, mean over seeds [95% CI] | per seed | balanced acc. [95% CI] | "
                  "selection acc. after warm-up | distinct models |", "|---|---|---|---|---|---|"]
        for label, rows in lp["runs"].items():
            a, b = lp["summary"][label]["accuracy"], lp["summary"][label]["balanced_accuracy"]
            lines.append(f"| {label} | {a['mean']:.3f} {_iv(a['ci95'])} | {', '.join(f'{v:.3f}' for v in a['per_seed'])} | "
                         f"{b['mean']:.3f} {_iv(b['ci95'])} | "
                         f"{', '.join(str(r['after_warmup_selection_accuracy']) for r in rows)} | {a['distinct_models']} |")
        lines += ["", "After - before (paired by seed on the same images; exact sign-flip test over images, t test over the "
                  "seeds' spread, every seed agreeing):"]
        for m, v in lp["after_vs_before"].items():
            lines.append(f"- {m}: {v['difference']:+.3f} {_iv(v['ci95'], '+')} (per seed "
                         f"{', '.join(f'{d:+.3f}' for d in v['per_seed'])}), {v['verdict']} (image-level p {v['p_holm']:.3g}"
                         + ("" if v["p_seed_holm"] is None else f", seed-level p {v['p_seed_holm']:.3g}") + ")")
    if "scale" in result:
        c = result["scale"]
        lines += ["", f"Scale: a cache of {c['rows']:,} x 1280 float16 rows plans the "
                  f"{'probe' if c['probe_planned'] else 'streaming mini-batch path'} (the probe takes up to "
                  f"{c['probe_max_bytes'] // (1280 * 8):,} rows at 1280-d); one epoch of it: {c['epoch_s']} s, "
                  f"peak RSS {c['peak_rss_mb']} MB (streamed: {c['streamed']}; load average {c['load_avg']})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=(*DATASETS, "none"), action="append", help="datasets to run (none: only --scale-rows)")
    parser.add_argument("--lpft-seeds", type=int, default=3, help="LP-FT before/after seeds on hymenoptera (0 = skip)")
    parser.add_argument("--scale-rows", type=int, default=0, help="also the large-cache memory check (e.g. 1000000)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache (default: the user cache folder)")
    parser.add_argument("--out", default=str(HERE / "results" / "linear_probe.json"))
    args = parser.parse_args()
    import torch

    from transferkit.fileio import portable_paths, write_json

    work = Path(tempfile.mkdtemp(prefix="tk-linear-probe-"))
    from provenance import provenance  # benchmarks/provenance.py (the script's folder is on sys.path)

    result = {"command": "benchmarks/linear_probe.py " + " ".join(os.sys.argv[1:]), "provenance": provenance(__file__),
              "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "datasets": {}}
    try:
        for name in [n for n in args.only or DATASETS if n != "none"]:
            result["datasets"][name] = bench_dataset(name, work, args.cache_dir)
        if args.lpft_seeds:
            result["lpft"] = bench_lpft(args.lpft_seeds, work, args.cache_dir)
        if args.scale_rows:
            result["scale"] = bench_scale(args.scale_rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = portable_paths(result, {"$TRANSFERKIT_DATASETS": ROOT, "": HERE.parent, "$WORK": work})
    write_json(Path(args.out), result)
    text = table(result)
    Path(args.out).with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
