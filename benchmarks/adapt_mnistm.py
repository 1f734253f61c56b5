"""Domain-adaptation benchmark: MNIST (labelled) -> MNIST-M (unlabelled), evaluated on MNIST-M test.

Command (the numbers in benchmarks/results/adapt_mnistm.md came from exactly this):

    .venv/bin/python benchmarks/adapt_mnistm.py --ablations      # 3 seeds, every method (~35 min) + seed-0 ablations (~17 min)
    .venv/bin/python benchmarks/adapt_mnistm.py                  # the main table only
    .venv/bin/python benchmarks/adapt_mnistm.py --seeds 1        # a quicker look

Training reads mnist/train (labelled; 10 % held out as the source validation split) and mnistm/train as a
plain folder of images (its class folders are ignored: the target labels are never read); mnistm/test is
used only to evaluate (`--target-labels-for-eval`). Pretrained efficientnet_lite0 at 32 px.

Per seed four runs, all on the same source split:
  1. BatchNorm in train mode, source-only baseline, then AdaBN -> rows "source-only (BN train)" and "AdaBN"
  2. BatchNorm frozen (ImageNet statistics), source-only baseline -> row "source-only (BN frozen)"
  3. Deep CORAL, 4. DANN: each continues from a source-only baseline (``baseline_from``: the same weights,
     not retrained) for ADAPT_EPOCHS more epochs; RUNS below says which baseline and BatchNorm policy.
Finished runs under --runs are reused, so an interrupted benchmark continues.
Writes benchmarks/results/adapt_mnistm.md and adapt_mnistm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from transferkit.adapt import adapt

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets") / "mnist_to_mnistm"

# Shared recipe: fine-tune everything (head 2e-3, backbone 1e-3), short warm-up, no augmentation (flips
# change digits). 3 baseline epochs reach ~98 % source accuracy; the whole benchmark must fit ~40 min of
# a shared 2-core CPU, which is what limits the epochs.
COMMON: dict[str, Any] = dict(backbone="efficientnet_lite0", input_size=32, batch_size=64, workers=0, strategy="finetune",
                              lr=2e-3, backbone_lr_scale=0.5, epochs=3, val_fraction=0.1)
OVERRIDES = {"optim.lr_warmup_epochs": 0.2}
ADAPT_EPOCHS = 5  # CORAL and DANN: 5 more epochs from the BN-frozen baseline (seed-0 probe: DANN 3 ep 0.671, 5 ep 0.706)

# name -> (method, BatchNorm policy, baseline run to continue from or None, adaptation options)
RUNS: dict[str, tuple[str, str, str | None, dict[str, Any]]] = {
    "bn-train": ("adabn", "train", None, {}),
    "bn-frozen": ("source-only", "frozen", None, {}),
    "coral": ("coral", "frozen", "bn-frozen", {"coral_weight": 30.0}),
    "dann": ("dann", "frozen", "bn-frozen", {"lambda_max": 1.0, "disc_lr_scale": 5.0}),
}
# Seed-0 ablations (``--ablations``): what did and did not help DANN/CORAL, at the same budget.
# name -> (method, BatchNorm policy, baseline run, options, what it shows)
ABLATIONS: dict[str, tuple[str, str, str, dict[str, Any], str]] = {
    "dann-lambda0": ("dann", "frozen", "bn-frozen", {"lambda_max": 0.0, "disc_lr_scale": 5.0},
                     "DANN with lambda = 0: the same 5 extra source epochs, no adversarial gradient (control)"),
    "dann-disc1": ("dann", "frozen", "bn-frozen", {"disc_lr_scale": 1.0},
                   "DANN, discriminator at the head's rate instead of 5x"),
    "dann-per-domain-bn": ("dann", "train", "bn-train", {"disc_lr_scale": 5.0},
                           "DANN from the BN-train baseline, per-domain BatchNorm passes, then AdaBN"),
    "dann-naive": ("dann", "train", "bn-train", {"warm_start": False, "per_domain_bn": False, "adabn": False,
                                                 "disc_lr_scale": 1.0},
                   "naive DANN (the issue's probe): from ImageNet weights, one concatenated batch, BN train, no AdaBN"),
    "coral-w1": ("coral", "frozen", "bn-frozen", {"coral_weight": 1.0}, "Deep CORAL with weight 1 instead of 30"),
    "adabn-on-frozen": ("adabn", "frozen", "bn-frozen", {},
                        "AdaBN applied to the BN-frozen model (trained with ImageNet statistics)"),
}
# table row -> (run, which side of its summary)
ROWS = {
    "source-only (BN train)": ("bn-train", "source_only"),
    "source-only (BN frozen)": ("bn-frozen", "source_only"),
    "AdaBN": ("bn-train", "adapted"),
    "Deep CORAL": ("coral", "adapted"),
    "DANN": ("dann", "adapted"),
}
SOURCE_ONLY = ("source-only (BN train)", "source-only (BN frozen)")


def run_one(name: str, seed: int, runs: Path, projection: str) -> dict[str, Any]:
    """One adapt run (or the summary of a finished one)."""
    out = runs / f"seed{seed}" / name
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    method, bn, base, options = RUNS[name] if name in RUNS else ABLATIONS[name][:4]
    tick = time.perf_counter()
    result = adapt(ROOT / "mnist" / "train", ROOT / "mnistm" / "train", method=method,
                   target_labels_for_eval=ROOT / "mnistm" / "test", bn=bn, seed=seed, out=str(out), quiet=True,
                   overrides=OVERRIDES, baseline_from=None if base is None else runs / f"seed{seed}" / base,
                   adapt_options={"epochs": ADAPT_EPOCHS, "projection": projection, **options}, **COMMON)
    s = result.summary
    print(f"seed {seed} {name}: source-only {s['source_only']['target']['accuracy']:.4f} -> "
          f"{method} {s['adapted']['target']['accuracy']:.4f} ({time.perf_counter() - tick:.0f}s)", flush=True)
    return s


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(per_seed: dict[int, dict[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """Markdown table of target accuracy (mean ± std over seeds) and the aggregate numbers."""
    seeds = sorted(per_seed)
    agg: dict[str, Any] = {}
    for row, (run, side) in ROWS.items():
        target = [per_seed[s][run][side]["target"]["accuracy"] for s in seeds]
        source = [per_seed[s][run][side]["source_val"]["accuracy"] for s in seeds]
        agg[row] = {"target": _mean_std(target), "per_seed": target, "source_val": _mean_std(source)}
    best_so = max(SOURCE_ONLY, key=lambda r: agg[r]["target"][0])
    lines = ["| method | MNIST-M test accuracy (mean ± std) | per seed | vs best source-only | MNIST val accuracy |",
             "|---|---|---|---|---|"]
    for row, a in agg.items():
        (m, sd), (sm, ssd) = a["target"], a["source_val"]
        delta = "—" if row in SOURCE_ONLY else f"{m - agg[best_so]['target'][0]:+.3f}"
        lines.append(f"| {row} | {m:.3f} ± {sd:.3f} | {', '.join(f'{v:.3f}' for v in a['per_seed'])} | {delta} | "
                     f"{sm:.3f} ± {ssd:.3f} |")
    return "\n".join(lines), {"rows": agg, "best_source_only": best_so}


def ablation_table(agg: dict[str, Any]) -> str:
    best_so = agg["rows"][agg["best_source_only"]]["per_seed"][0]
    lines = ["| variant | what it changes | MNIST-M test accuracy | vs best source-only (seed 0) |", "|---|---|---|---|"]
    for row in ("DANN", "Deep CORAL"):
        lines.append(f"| {row} (as in the table) | — | {agg['rows'][row]['per_seed'][0]:.3f} | "
                     f"{agg['rows'][row]['per_seed'][0] - best_so:+.3f} |")
    for name, a in agg["ablations"].items():
        lines.append(f"| {name} | {a['what']} | {a['target']:.3f} | {a['target'] - best_so:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--runs", type=Path, default=HERE / "runs" / "adapt_mnistm", help="run folders (reused)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 1 on a shared 2-core machine (2 threads spin against other "
                             "processes and were ~10x slower per step here)")
    parser.add_argument("--projection", default="tsne", help="tsne | pca | none (the figure in each run folder)")
    parser.add_argument("--ablations", action="store_true", help="also run the seed-0 ablations (about 25 min more)")
    args = parser.parse_args()
    if not ROOT.is_dir():
        sys.exit(f"{ROOT} not found; set TRANSFERKIT_DATASETS to the folder holding mnist_to_mnistm")
    torch.set_num_threads(args.threads)
    per_seed = {seed: {name: run_one(name, seed, args.runs, args.projection) for name in RUNS} for seed in range(args.seeds)}
    # from the runs' own times, so a re-invocation that reuses finished runs still reports what they cost
    minutes = sum(r["time_s"] for runs in per_seed.values() for r in runs.values()) / 60
    md, agg = table(per_seed)
    if args.ablations:
        ablations = {name: run_one(name, 0, args.runs, "none") for name in ABLATIONS}
        agg["ablation_minutes"] = round(sum(r["time_s"] for r in ablations.values()) / 60, 1)
        agg["ablations"] = {n: {"target": s["adapted"]["target"]["accuracy"], "what": ABLATIONS[n][4]} for n, s in ablations.items()}
        md += "\n\nAblations, seed 0 only (each from the same seed-0 baseline as the table):\n\n" + ablation_table(agg)
    command = ("python benchmarks/adapt_mnistm.py" + (f" --seeds {args.seeds}" if args.seeds != 3 else "")
               + (" --ablations" if args.ablations else ""))
    write_results(md, agg, per_seed, command, minutes)
    print(md)


def write_results(md: str, agg: dict[str, Any], per_seed: dict, command: str, minutes: float) -> None:
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    settings = {"common": COMMON, "overrides": OVERRIDES, "adapt_epochs": ADAPT_EPOCHS,
                "runs": {k: {"method": m, "bn": bn, "baseline_from": b, "options": o} for k, (m, bn, b, o) in RUNS.items()}}
    (results / "adapt_mnistm.json").write_text(json.dumps(
        {"command": command, "minutes": round(minutes, 1), "machine": platform.platform(), "torch": torch.__version__,
         "settings": settings, **agg,
         "summaries": {s: {n: {k: v[k] for k in ("source_only", "adapted", "projection", "time_s")} for n, v in runs.items()}
                       for s, runs in per_seed.items()}}, indent=2))
    extra = f"; the seed-0 ablations {agg['ablation_minutes']:.0f} min more" if "ablation_minutes" in agg else ""
    (results / "adapt_mnistm.md").write_text(NOTE.format(command=command, minutes=minutes, table=md, ablation_time=extra,
                                                         settings="`" + json.dumps(settings) + "`"))


NOTE = """# Domain adaptation: MNIST -> MNIST-M

Command: `{command}` ({minutes:.0f} min of runs for the main table on the shared 2-core CPU, one torch
thread{ablation_time}).

Data: labelled `mnist/train` (5,000 images; 4,500 train, 500 held out as the source validation split),
unlabelled `mnistm/train` (5,000 images, read as a plain folder: its class folders are never read),
evaluation on `mnistm/test` (1,000 images, used for nothing else). Pretrained efficientnet_lite0 at 32 px,
batch 64 per domain, AdamW, full fine-tuning (head 2e-3, backbone 1e-3), no augmentation, seeds 0-2.
Source-only baselines: 3 epochs. Deep CORAL and DANN: 5 more epochs from the BN-frozen baseline of the
same seed (the same weights, not retrained), paper LR schedule mu0 / (1 + 10 p) ** 0.75.

{table}

Reading the table:
- BatchNorm decides source-only: with BatchNorm in train mode the running statistics are MNIST's
  (black backgrounds) and MNIST-M collapses to ~0.22; keeping the ImageNet statistics frozen gives ~0.56.
- AdaBN (BN-train baseline + statistics re-estimated on the unlabelled MNIST-M images) more than doubles
  the BN-train model (0.22 -> 0.50) but stays below the BN-frozen baseline at this budget.
- Deep CORAL (weight 30) and DANN (discriminator 2 x 256 at 5x the head's rate, lambda cap 1) both beat the
  best source-only variant by >= 0.10, on every seed (against that seed's own baselines). DANN is the steadier of the two (std 0.006 vs 0.037).
- Both adapted models get 5 more epochs than the baselines; the `dann-lambda0` ablation above is the same
  run with the adversarial weight at 0 (so the same extra epochs and target batches): it stays at the
  baseline, so the gain comes from the adaptation, not from the longer training.
- Published reference (Ganin et al., a small CNN from scratch): source-only 0.52, DANN 0.77.

What made DANN work here (ablation table above, seed 0, same 5 epochs): warm start from the source-only
baseline (the naive DANN of the issue's probe, from ImageNet weights with one concatenated batch and
BatchNorm in train mode, reaches only ~0.44); BatchNorm frozen at the ImageNet statistics (per-domain
BatchNorm passes + AdaBN afterwards: ~0.60, below frozen's ~0.71; AdaBN applied to a model trained with frozen
statistics breaks it: ~0.27); a discriminator faster than the features (5x the head's rate: ~0.71, 1x: ~0.69;
in a 3-epoch probe 10x with 1024 hidden units diverged to 0.589). CORAL needs a weight far above 1: its loss
is ~0.004 on pooled Lite0 features (weight 1: ~0.68, weight 30: 0.72).

Settings: {settings}
"""


if __name__ == "__main__":
    main()
