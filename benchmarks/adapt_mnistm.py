"""Domain-adaptation benchmark: MNIST (labelled) -> MNIST-M (unlabelled); MNIST-M test is scored once.

Command (benchmarks/results/adapt_mnistm.md and adapt_mnistm.json came from exactly this):

    nice -n 5 .venv/bin/python benchmarks/adapt_mnistm.py --seeds 2 --no-control \
        --machine-note "shared: benchmarks/compare_strategies.py and other test runs used the CPU at the same time"

(``--seeds N``: N final seeds, 3 by default, cut to 2 here to fit ~60 min of a CPU shared with another
benchmark; ``--no-control``: skip the lambda = 0 control run, for the same reason; ``--runs DIR``: run folders.)

Protocol (every setting is fixed before any target label is read, or tuned on a target dev split):
- Source ``mnist/train`` (labelled), in transferkit's data roles: 70 % train, 15 % selection (scored after
  every epoch for the log only: adapt trains a fixed budget and keeps the last epoch), 15 % test (reported);
  stratified, split seed 0.
- Target ``mnistm/train``: DEV_SIZE images drawn uniformly at random (seed DEV_SEED, by file, without reading
  a label) form the labelled target *dev* split; the other images are the unlabelled target pool, the only
  target images adaptation sees (as a plain bag of images; adapt never reads their class folders). Both are
  folders of symbolic links under ``--runs`` (rebuilt identically on every invocation).
- Stage 1, tuning (seed TUNE_SEED; every run is evaluated on the dev split only): the BatchNorm policy of the
  baseline CORAL and DANN start from, the CORAL weight and DANN's discriminator rate, each by dev accuracy
  over the grid in GRIDS (ties: the first value). Plus (``--control``, the default) a control on dev: DANN
  with lambda = 0.
- Stage 2, final runs (seeds 1..N, not the tuning seed): source-only with BatchNorm train (+ AdaBN) and frozen,
  Deep CORAL and DANN with the chosen settings, each continuing from its seed's source-only baseline.
- Stage 3, test: ``mnistm/test`` is read once, after every setting is final, by
  :func:`transferkit.adapt.results.score_run` on the final runs only. Each figure: the mean over seeds with a
  95 % Clopper-Pearson interval on the per-image scores averaged over seeds (:func:`seed_image_interval`);
  each method gets a paired verdict against the source-only baseline it starts from (same seeds, same images;
  :func:`transferkit.metrics.paired.paired_test`, Holm over the family of comparisons).
Finished runs under --runs are reused, so an interrupted benchmark continues.
Writes benchmarks/results/adapt_mnistm.md and adapt_mnistm.json (no absolute paths).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.adapt import adapt
from transferkit.adapt.results import SOURCE_ONLY_PREDICTIONS_FILE, score_run
from transferkit.data.decode import IMAGE_EXTENSIONS
from transferkit.fileio import portable_paths, write_json
from transferkit.metrics.intervals import bootstrap_intervals, seed_image_interval
from transferkit.metrics.paired import decide, holm, paired_test

from provenance import provenance  # benchmarks/provenance.py (the script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
DATASETS = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")
ROOT = DATASETS / "mnist_to_mnistm"
PATH_ROOTS = {"$TRANSFERKIT_DATASETS": DATASETS, "": HERE.parent}

# --- settings fixed before any target label was read (name -> (value, reason)) ---------------------------
COMMON: dict[str, Any] = dict(backbone="efficientnet_lite0", input_size=32, batch_size=64, workers=0, strategy="finetune",
                              lr=2e-3, backbone_lr_scale=0.5, epochs=3)
OVERRIDES = {"optim.lr_warmup_epochs": 0.2}
ADAPT_EPOCHS = 3
DANN_FIXED = {"lambda_max": 1.0, "lr_schedule": "dann", "disc_hidden": 256, "disc_layers": 2, "disc_dropout": 0.5}
BUDGET = "compute budget of a shared 2-core CPU"
FIXED: dict[str, tuple[Any, str]] = {
    "source recipe": (dict(COMMON, **OVERRIDES),
                      "fixed before target labels: pretrained efficientnet_lite0 fully fine-tuned (adapt's default "
                      "strategy; no augmentation, as flips change digits), head 2e-3 / backbone 1e-3, 3 epochs, "
                      f"32 px (the images are 28 px); source-side choices and the {BUDGET}; no target data involved"),
    "adaptation epochs (CORAL, DANN)": (ADAPT_EPOCHS, f"fixed before target labels: the source-only baseline's epoch "
                                        f"count, {BUDGET} (an earlier version picked 5 on MNIST-M test; dropped)"),
    "AdaBN BatchNorm policy": ("train", "fixed before target labels: AdaBN swaps the BatchNorm statistics a model was "
                               "trained with for target ones, so the model must train with batch statistics"),
    "DANN lambda schedule": ("2 / (1 + exp(-10 p)) - 1, cap 1", "fixed before target labels: Ganin et al. 2016"),
    "CORAL/DANN learning-rate schedule": ("mu0 / (1 + 10 p) ** 0.75, mu0 = source head rate",
                                          "fixed before target labels: Ganin et al. 2016"),
    "DANN discriminator": ("2 x 256 ReLU, dropout 0.5", "fixed before target labels: library default (dropout as "
                           "Ganin et al.)"),
    "warm start, per-domain forward passes, AdaBN after CORAL/DANN only with BatchNorm train":
        (True, "fixed before target labels: library defaults (AdaptCfg)"),
}
# --- settings tuned on the target dev split at TUNE_SEED (by dev accuracy; ties: the first value) -------
GRIDS: dict[str, tuple[Any, ...]] = {
    "baseline BatchNorm policy (CORAL, DANN)": ("frozen", "train"),  # by the source-only baseline's dev accuracy
    "CORAL weight": (1.0, 10.0, 100.0),
    "DANN discriminator rate (x head rate)": (1.0, 10.0),
}
DEV_SIZE, DEV_SEED, TUNE_SEED = 500, 0, 0
N_RESAMPLES = 2000
REUSED: list[str] = []  # runs of an earlier (interrupted) invocation that this one reused


def target_split(runs: Path) -> dict[str, Any]:
    """mnistm/train -> dev/ (labelled, DEV_SIZE images) + pool/ (the rest, unlabelled for adapt), as symlink folders.

    The dev images are drawn uniformly by file (names sorted, then relative paths), so no label decides
    which images the unlabelled pool gets."""
    src = ROOT / "mnistm" / "train"
    files = sorted((p.relative_to(src) for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=lambda rel: (rel.name, str(rel)))
    dev = set(random.Random(DEV_SEED).sample(files, DEV_SIZE))
    dest = runs / f"target_split_dev{DEV_SIZE}_seed{DEV_SEED}"
    for rel in files:
        link = dest / ("dev" if rel in dev else "pool") / rel
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((src / rel).resolve())
    counts = {c: sum(1 for rel in dev if rel.parent.name == c) for c in sorted({rel.parent.name for rel in dev})}
    return {"pool": dest / "pool", "dev": dest / "dev", "n_pool": len(files) - len(dev), "n_dev": len(dev),
            "dev_class_counts": counts}


def run_one(runs: Path, split: dict[str, Any], seed: int, name: str, method: str, bn: str, base: str | None,
            options: dict[str, Any], projection: str) -> dict[str, Any]:
    """One adapt run evaluated on the dev split (or the summary of a finished one)."""
    out = runs / f"seed{seed}" / name
    if (out / "summary.json").is_file():
        REUSED.append(f"seed{seed}/{name}")
        return json.loads((out / "summary.json").read_text())
    tick = time.perf_counter()
    result = adapt(ROOT / "mnist" / "train", split["pool"], method=method, target_labels_for_eval=split["dev"], bn=bn,
                   seed=seed, out=str(out), quiet=True, overrides=OVERRIDES,
                   baseline_from=None if base is None else runs / f"seed{seed}" / base,
                   adapt_options={"epochs": ADAPT_EPOCHS, "projection": projection, **options}, **COMMON)
    s = result.summary
    print(f"seed {seed} {name}: dev accuracy source-only {s['source_only']['target']['accuracy']:.4f} -> "
          f"{method} {s['adapted']['target']['accuracy']:.4f} ({time.perf_counter() - tick:.0f}s)", flush=True)
    return s


def dev_score(runs: Path, seed: int, name: str, side: str) -> dict[str, Any]:
    """Dev accuracy of one model of one run, with its Clopper-Pearson 95 % interval (one seed)."""
    file = "target_predictions.json" if side == "adapted" else SOURCE_ONLY_PREDICTIONS_FILE
    rows = json.loads((runs / f"seed{seed}" / name / file).read_text())
    labels, probs = [r["label"] for r in rows], np.asarray([r["probs"] for r in rows])
    accuracy = float(np.mean(probs.argmax(1) == np.asarray(labels)))
    ci = bootstrap_intervals(labels, probs, probs.shape[1], n_resamples=N_RESAMPLES, metrics=("accuracy",))["accuracy"]
    return {"accuracy": accuracy, "ci95": ci, "n": len(labels), "seed": seed, "run": name, "model": side}


def _name(kind: str, value: float) -> str:
    return f"{kind}{value:g}"


def tune(runs: Path, split: dict[str, Any], projection: str,
         control: bool = True) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Stage 1 (dev split only): returns the chosen values, each grid's dev scores, and the control (or None)."""
    seed, chosen, scores = TUNE_SEED, {}, {}
    go = lambda *a: run_one(runs, split, seed, *a, projection)  # noqa: E731
    go("bn-train", "adabn", "train", None, {})
    go("bn-frozen", "source-only", "frozen", None, {})
    key = "baseline BatchNorm policy (CORAL, DANN)"
    scores[key] = {bn: dev_score(runs, seed, f"bn-{bn}", "source_only") for bn in GRIDS[key]}
    chosen[key] = max(GRIDS[key], key=lambda v: (scores[key][v]["accuracy"], -GRIDS[key].index(v)))
    bn = chosen[key]
    for key, kind, method, option, extra in (("CORAL weight", "coral-w", "coral", "coral_weight", {}),
                                             ("DANN discriminator rate (x head rate)", "dann-d", "dann", "disc_lr_scale",
                                              DANN_FIXED)):
        for value in GRIDS[key]:
            go(_name(kind, value), method, bn, f"bn-{bn}", {**extra, option: value})
        scores[key] = {value: dev_score(runs, seed, _name(kind, value), "adapted") for value in GRIDS[key]}
        chosen[key] = max(GRIDS[key], key=lambda v: (scores[key][v]["accuracy"], -GRIDS[key].index(v)))
    if not control:
        return chosen, scores, None
    # control: the chosen DANN with lambda = 0 (the same extra epochs and target batches, no adversarial gradient)
    d = chosen["DANN discriminator rate (x head rate)"]
    go("dann-lambda0", "dann", bn, f"bn-{bn}", {**DANN_FIXED, "disc_lr_scale": d, "lambda_max": 0.0})
    control = {"lambda0": dev_score(runs, seed, "dann-lambda0", "adapted"),
               "dann": dev_score(runs, seed, _name("dann-d", d), "adapted"),
               "baseline": dev_score(runs, seed, f"bn-{bn}", "source_only")}
    return chosen, scores, control


def final_runs(runs: Path, split: dict[str, Any], seeds: list[int], chosen: dict[str, Any], projection: str) -> dict:
    """Stage 2: the final settings at every final seed (runs evaluated on the dev split only)."""
    bn = chosen["baseline BatchNorm policy (CORAL, DANN)"]
    w, d = chosen["CORAL weight"], chosen["DANN discriminator rate (x head rate)"]
    plan = [("bn-train", "adabn", "train", None, {}), ("bn-frozen", "source-only", "frozen", None, {}),
            (_name("coral-w", w), "coral", bn, f"bn-{bn}", {"coral_weight": w}),
            (_name("dann-d", d), "dann", bn, f"bn-{bn}", {**DANN_FIXED, "disc_lr_scale": d})]
    return {seed: {name: run_one(runs, split, seed, name, *rest, projection) for name, *rest in plan} for seed in seeds}


def rows_spec(chosen: dict[str, Any]) -> dict[str, tuple[str, str, str | None]]:
    """table row -> (run, model, row of the source-only baseline it starts from)."""
    bn = chosen["baseline BatchNorm policy (CORAL, DANN)"]
    return {"source-only (BN train)": ("bn-train", "source_only", None),
            "source-only (BN frozen)": ("bn-frozen", "source_only", None),
            "AdaBN": ("bn-train", "adapted", "source-only (BN train)"),
            "Deep CORAL": (_name("coral-w", chosen["CORAL weight"]), "adapted", f"source-only (BN {bn})"),
            "DANN": (_name("dann-d", chosen["DANN discriminator rate (x head rate)"]), "adapted", f"source-only (BN {bn})")}


def score_test(runs: Path, seeds: list[int], spec: dict[str, tuple[str, str, str | None]]) -> dict[str, Any]:
    """Stage 3: mnistm/test, once, for the final runs; intervals and paired verdicts."""
    folder = ROOT / "mnistm" / "test"
    scored = {(seed, run): score_run(runs / f"seed{seed}" / run, folder, workers=0)
              for seed in seeds for run in sorted({r for r, _, _ in spec.values()})}
    first = scored[(seeds[0], spec["source-only (BN train)"][0])]
    labels, n_classes = first["labels"], len(first["classes"])
    for (seed, run), s in scored.items():  # every run scores the same images in the same order
        assert s["paths"] == first["paths"] and s["labels"] == labels, (seed, run)
    probs = {row: [scored[(seed, run)][side]["probs"] for seed in seeds] for row, (run, side, _) in spec.items()}
    for row, (run, side, baseline) in spec.items():  # CORAL/DANN start from their baseline run's very weights
        if baseline is not None and run != spec[baseline][0]:
            assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(
                [scored[(seed, run)]["source_only"]["probs"] for seed in seeds], probs[baseline])), row
    # the family: every method against its own source-only baseline, and BN frozen against BN train; each an exact
    # paired test (transferkit.metrics.paired), Holm over the family, every seed agreeing in direction
    pairs = {row: (row, baseline) for row, (_, _, baseline) in spec.items() if baseline is not None}
    pairs["bn frozen - train"] = ("source-only (BN frozen)", "source-only (BN train)")
    tests = {key: paired_test(labels, probs[a], probs[b], n_classes, n_resamples=N_RESAMPLES) for key, (a, b) in pairs.items()}
    adjusted = holm({key: t["p_value"] for key, t in tests.items()})
    judged = {key: {**t, "p_holm": adjusted[key], "verdict": decide(t, adjusted[key]),
                    "family": f"{len(tests)} comparisons (each method with its baseline, BN frozen with BN train)"}
              for key, t in tests.items()}
    out: dict[str, Any] = {}
    for row, (run, side, baseline) in spec.items():
        interval = seed_image_interval(labels, probs[row], n_classes, n_resamples=N_RESAMPLES)
        per_seed = [float(np.mean(p.argmax(1) == np.asarray(labels))) for p in probs[row]]
        entry: dict[str, Any] = {"run": run, "model": side, "starts_from": baseline,
                                 "target_test": {**interval, "per_seed": dict(zip(map(str, seeds), per_seed))}}
        entry["vs_baseline"] = None if baseline is None else {"baseline": baseline, **judged[row]}
        out[row] = entry
    bn_gap = judged["bn frozen - train"]
    return {"rows": out, "bn_frozen_minus_train": bn_gap, "n_images": len(labels)}


def how_chosen(chosen: dict[str, Any], scores: dict[str, Any], n_dev: int) -> dict[str, Any]:
    settings = {name: {"value": value, "chosen": reason} for name, (value, reason) in FIXED.items()}
    for key, grid in GRIDS.items():
        dev = ", ".join(f"{v}: {scores[key][v]['accuracy']:.3f}" for v in grid)
        what = "source-only baseline's" if key.startswith("baseline") else "adapted model's"
        settings[key] = {"value": chosen[key], "grid": list(grid),
                         "chosen": f"tuned on target dev split n={n_dev} (seed {TUNE_SEED}, {what} dev accuracy): "
                                   f"grid {list(grid)} -> {dev} -> {chosen[key]}"}
    return settings


def _ci(values: list[float] | None, signed: bool = False) -> str:
    if values is None:
        return "[n/a]"
    f = "{:+.3f}" if signed else "{:.3f}"
    return "[" + ", ".join(f.format(v) for v in values) + "]"


def markdown(r: dict[str, Any]) -> str:
    rows, roles, control = r["rows"], r["data"], r["dev_control"]
    seeds = r["seeds"]["final"]
    lines = [
        "# Domain adaptation: MNIST -> MNIST-M",
        "",
        f"Command: `{r['command']}`. Runs took {r['minutes']['runs']:.0f} min in all (tuning "
        f"{r['minutes']['tuning_runs']:.0f}), scoring the test set {r['minutes']['test_scoring']:.1f}; this invocation's "
        f"wall time {r['minutes']['wall']:.0f} min" + (f" (it reused {len(r['reused_runs'])} finished runs of an interrupted "
        "one)" if r["reused_runs"] else "") + f"; {r['machine']['cpus']} CPU cores, one torch thread; "
        f"1-minute load average {r['machine']['load_avg_1min_start']:.2f} at the start, "
        f"{r['machine']['load_avg_1min_end']:.2f} at the end" + (f"; {r['machine']['note']}" if r['machine']['note'] else "") + "."
        + "".join(f" Earlier invocation: `{i['command']}`, started at 1-minute load average {i['load_avg_1min_start']:.2f}, "
                  f"stopped after {i['wall_min']:.0f} min ({i['why']})." for i in r.get("earlier_invocations", []))
        + (f" Wall time over all invocations: {r['minutes']['wall_all_invocations']:.0f} min."
           if "wall_all_invocations" in r["minutes"] else ""),
        "",
        "Data roles:",
        f"- source `{roles['source']['path']}`: train {roles['source']['train']['n']} / selection "
        f"{roles['source']['selection']['n']} (scored per epoch for the log only; adapt keeps the last epoch) / test "
        f"{roles['source']['test']['n']} ({roles['source']['test']['source']}).",
        f"- target pool: {roles['target_pool']['n']} images of `{roles['target_pool']['from']}`, unlabelled (the only "
        "target images adaptation reads; their class folders are never read).",
        f"- target dev: {roles['target_dev']['n']} labelled images of `{roles['target_dev']['from']}`, "
        f"{roles['target_dev']['drawn']}; not in the pool. Every tuned setting was chosen on it at seed {TUNE_SEED}.",
        f"- target test: `{roles['target_test']['from']}`, {roles['target_test']['n']} images, scored once after every "
        f"setting was final, for the final runs only (seeds {', '.join(map(str, seeds))}; the tuning seed "
        f"{TUNE_SEED} is not among them).",
        "",
        f"## MNIST-M test accuracy (n = {r['test']['n_images']} images x {len(seeds)} seeds)",
        "",
        "| method | starts from | accuracy, mean over seeds [95% CI] | vs its source-only baseline [95% CI] | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        t, v = row["target_test"], row["vs_baseline"]
        versus = "—" if v is None else f"{v['difference']:+.3f} {_ci(v['ci95'], True)}"
        lines.append(f"| {name} | {row['starts_from'] or '—'} | {t['mean']:.3f} {_ci(t['ci95'])} | {versus} | "
                     f"{'—' if v is None else v['verdict']} |")
    gap = r["test"]["bn_frozen_minus_train"]
    lines += [
        "",
        "Intervals: accuracy, Clopper-Pearson on the per-image scores averaged over the seeds; differences paired "
        f"(same seeds, same test images) with a seed-and-image bootstrap interval ({N_RESAMPLES} resamples) for "
        "display. Verdicts: an exact sign-flip test on the per-image differences, Holm-adjusted over the family "
        "of comparisons (each method with its baseline, BN frozen with BN train), every seed agreeing in direction.",
        "",
        "Read from the numbers above:",
    ]
    for name, row in rows.items():
        v = row["vs_baseline"]
        if v is not None:
            word = {"better": "above", "worse": "below"}.get(v["verdict"])
            lines.append(f"- {name}: {v['difference']:+.3f} {_ci(v['ci95'], True)} against {v['baseline']}, "
                         + (f"{word} it on this evidence." if word else "no clear difference."))
    lines.append(f"- Source-only, BatchNorm frozen minus train: {gap['difference']:+.3f} {_ci(gap['ci95'], True)} "
                 f"({gap['verdict']}).")
    c = control
    extra = f"- Deep CORAL and DANN train {ADAPT_EPOCHS} epoch(s) more than their baseline"
    if c is None:
        lines.append(extra + "; no control for the extra epochs was run (see the cuts below), so a difference may "
                     "partly come from the longer training.")
    else:
        lines.append(extra + f". Control on the dev split (seed {TUNE_SEED}, n={c['dann']['n']}, Clopper-Pearson "
                     f"intervals): DANN with lambda = 0 (the same extra epochs and target batches, no adversarial "
                     f"gradient) {c['lambda0']['accuracy']:.3f} {_ci(c['lambda0']['ci95'])}, DANN "
                     f"{c['dann']['accuracy']:.3f} {_ci(c['dann']['ci95'])}, their baseline "
                     f"{c['baseline']['accuracy']:.3f} {_ci(c['baseline']['ci95'])}.")
    for key, grid in r["settings"].items():
        if "grid" in grid and grid["value"] in (grid["grid"][0], grid["grid"][-1]) and len(grid["grid"]) > 2 \
                and not isinstance(grid["value"], str):
            lines.append(f"- {key}: the chosen value {grid['value']} is at the edge of the grid {grid['grid']}; a wider "
                         "grid might choose differently.")
    if r["cuts"]:
        lines += ["", "Cut to fit the time budget: " + "; ".join(r["cuts"]) + "."]
    lines += ["", "## How each setting was chosen", "", "| setting | value | how chosen |", "|---|---|---|"]
    for name, s in r["settings"].items():
        value = json.dumps(s["value"]) if isinstance(s["value"], dict) else s["value"]
        lines.append(f"| {name} | {value} | {s['chosen']} |")
    lines += ["", f"## Tuning runs: target dev accuracy (seed {TUNE_SEED}, n = {roles['target_dev']['n']}, "
              "95% Clopper-Pearson interval)", "", "| setting | value | dev accuracy [95% CI] | chosen |", "|---|---|---|---|"]
    for key, grid in r["tuning"].items():
        for value, score in grid.items():
            mark = "yes" if str(r["settings"][key]["value"]) == value else ""
            lines.append(f"| {key} | {value} | {score['accuracy']:.3f} {_ci(score['ci95'])} | {mark} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="final seeds (1..N; the tuning seed 0 is not one of them)")
    parser.add_argument("--runs", type=Path, default=HERE / "runs" / "adapt_mnistm_dev", help="run folders (reused)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 1 on a shared 2-core machine (2 threads spin against other processes)")
    parser.add_argument("--projection", default="none", help="tsne | pca | none (the figure in each run folder; "
                        "the domain-separability probe runs either way)")
    parser.add_argument("--machine-note", default="", help="recorded as is, e.g. what else ran on the machine")
    parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                        help="the seed-0 dev-split control: DANN with lambda = 0 (one more DANN run)")
    args = parser.parse_args()
    if not ROOT.is_dir():
        sys.exit(f"{ROOT} not found; set TRANSFERKIT_DATASETS to the folder holding mnist_to_mnistm")
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    niceness = os.nice(0)
    command = " ".join(([f"nice -n {niceness}"] if niceness else []) + [".venv/bin/python benchmarks/adapt_mnistm.py"]
                       + [shlex.quote(a) for a in sys.argv[1:]])
    split = target_split(args.runs)
    chosen, scores, control = tune(args.runs, split, args.projection, args.control)  # dev split only
    seeds = list(range(1, args.seeds + 1))
    final = final_runs(args.runs, split, seeds, chosen, args.projection)  # settings final from here on
    spec = rows_spec(chosen)
    tick = time.perf_counter()
    test = score_test(args.runs, seeds, spec)  # the only reading of mnistm/test
    test_minutes = (time.perf_counter() - tick) / 60
    tuning_runs = {p.name: json.loads((p / "summary.json").read_text()) for p in sorted((args.runs / f"seed{TUNE_SEED}").iterdir())
                   if (p / "summary.json").is_file()}
    first = final[seeds[0]]["bn-train"]
    roles = first["protocol"]
    result = {
        "command": command,
        "provenance": provenance(__file__),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__, "load_avg_1min_start": round(load_start, 2),
                    "load_avg_1min_end": round(os.getloadavg()[0], 2), "note": args.machine_note},
        "minutes": {"wall": round((time.perf_counter() - started) / 60, 1),
                    "runs": round(sum(s["time_s"] for s in [*tuning_runs.values(), *[x for r in final.values() for x in r.values()]]) / 60, 1),
                    "tuning_runs": round(sum(s["time_s"] for s in tuning_runs.values()) / 60, 1),
                    "test_scoring": round(test_minutes, 1)},
        "protocol": "every setting fixed before target labels or tuned on the target dev split; mnistm/test scored once, "
                    "with the final settings, final seeds only",
        "data": {"source": {"path": str(ROOT / "mnist" / "train"), **{k: roles[k] for k in ("train", "selection", "test")}},
                 "target_pool": {"from": str(ROOT / "mnistm" / "train"), "n": split["n_pool"],
                                 "role": "unlabelled images adapted to (labels never read)"},
                 "target_dev": {"from": str(ROOT / "mnistm" / "train"), "n": split["n_dev"],
                                "drawn": f"drawn uniformly by file without reading labels, seed {DEV_SEED}",
                                "class_counts": split["dev_class_counts"],
                                "role": "chooses every tuned setting (seed 0 runs); excluded from the pool"},
                 "target_test": {"from": str(ROOT / "mnistm" / "test"), "n": test["n_images"],
                                 "role": "scored once, after all settings were final; final runs only"}},
        "seeds": {"tuning": [TUNE_SEED], "final": seeds},
        "cuts": ([f"{args.seeds} final seeds instead of 3"] if args.seeds < 3 else [])
                + ([] if args.control else ["no lambda = 0 control run"]),
        "reused_runs": REUSED,
        "settings": how_chosen(chosen, scores, split["n_dev"]),
        "tuning": {key: {str(v): s for v, s in grid.items()} for key, grid in scores.items()},
        "dev_control": control,
        "rows": test["rows"],
        "test": {"n_images": test["n_images"], "bn_frozen_minus_train": test["bn_frozen_minus_train"]},
        "summaries_note": "each run's own summary: its 'target' figures are on the target dev split (runs never read "
                          "mnistm/test; the test figures are under rows)",
        "summaries": {f"seed{seed}/{name}": {k: s.get(k) for k in ("method", "bn", "source_only", "adapted", "projection",
                                                                  "epochs", "time_s", "baseline_from")}
                      for seed, runs in [(TUNE_SEED, tuning_runs), *final.items()] for name, s in runs.items()},
    }
    result = portable_paths(json.loads(json.dumps(result, default=float)), PATH_ROOTS)
    results = HERE / "results"
    write_json(results / "adapt_mnistm.json", result)
    text = markdown(result)
    (results / "adapt_mnistm.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
