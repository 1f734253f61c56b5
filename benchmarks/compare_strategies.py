"""Strategy comparison benchmark: `transferkit compare` on the shared datasets, efficientnet_lite0.

Commands (the tables in benchmarks/results/compare_*.md came from exactly these):

    .venv/bin/python benchmarks/compare_strategies.py hymenoptera
    .venv/bin/python benchmarks/compare_strategies.py neu_surface_defects --resplit
    .venv/bin/python benchmarks/compare_strategies.py flowers

Protocol (three data roles, transferkit.data.datasets.prepare_data): train fits, a selection split chooses
the epoch, the test split is scored once and reported.
- hymenoptera (train/ val/): the selection split is 15% of train/ (stratified, split seed 0); val/ (153
  images) is the test split.
- flowers (one folder of classes): stratified 70/15/15 train/selection/test (split seed 0).
- NEU's own val folder holds 30 images (one error = 3.3 points): ``--resplit`` uses train/ alone as one folder
  of classes, split 70/15/15 (266 test images); the 30 given val images are not used.

Every strategy gets the same budget: 6 epochs, the same schedule, augmentation, resolution, seeds and split.
Feature extraction's head is the converged linear probe (model.head_fit auto), which replaces its head-only
epochs. BatchNorm is left to each strategy (bn=auto), so the table shows a BN column.
Input 112 px instead of the native 224 to fit a 2-core CPU. Finished runs under benchmarks/runs/compare_<name>/
are reused, so an interrupted benchmark continues; delete that folder for a fresh measurement.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import transferkit as tk
from transferkit.compare import DEFAULT_STRATEGIES, comparison_table
from transferkit.fileio import portable_paths, write_json

from provenance import provenance, test_outcomes  # benchmarks/provenance.py (the script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")
SETTINGS = dict(backbone="efficientnet_lite0", input_size=112, epochs=6, lr=1e-3, batch_size=32)
PATH_ROOTS = {"$TRANSFERKIT_DATASETS": ROOT, "": HERE.parent}
# strategy-specific knobs only (at their defaults, stated for the record); the budget is the same for all
PER_STRATEGY = {"lp-ft": {"warmup_epochs": 2}, "gradual": {"unfreeze_every": 1}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    parser.add_argument("--resplit", action="store_true",
                        help="use DATASET/train only, split 70/15/15 stratified (a larger test set than a tiny given one)")
    parser.add_argument("--input-size", type=int, default=SETTINGS["input_size"],
                        help="backbone input in px (the weights' native size is 224; 112 fits a 2-core CPU)")
    args = parser.parse_args()
    name = args.dataset + ("_resplit" if args.resplit else "") + (f"_{args.input_size}px" if args.input_size != 112 else "")
    data = ROOT / args.dataset / "train" if args.resplit else ROOT / args.dataset
    settings = dict(SETTINGS, input_size=args.input_size)
    out = HERE / "runs" / f"compare_{name}"
    # a cache of its own, empty on a fresh run: the first feature-extraction seed's wall time includes
    # embedding every image once, the later seeds reuse it (what a user's second run sees)
    result = tk.compare(data, args.strategies.split(","), seeds=args.seeds, out=out,
                        per_strategy=PER_STRATEGY, cache_dir=str(out / "embedding-cache"), **settings)
    command = " ".join([".venv/bin/python benchmarks/compare_strategies.py", args.dataset]
                       + (["--resplit"] if args.resplit else [])
                       + ([f"--strategies {args.strategies}"] if args.strategies != ",".join(DEFAULT_STRATEGIES) else [])
                       + ([f"--seeds {args.seeds}"] if args.seeds != 3 else [])
                       + ([f"--input-size {args.input_size}"] if args.input_size != 112 else []))
    # committed files name paths relative to the datasets root or the repository, never this machine's
    saved = json.loads((out / "comparison.json").read_text())
    saved.update(test_outcomes=test_outcomes(saved), provenance=provenance(__file__))
    result = portable_paths(saved, PATH_ROOTS)
    cut = "" if args.input_size == 224 else f"; input cut from 224 to {args.input_size} px to fit a 2-core CPU"
    protocol = result["strategies"][next(iter(result["strategies"]))]["runs"][0]["protocol"]
    roles = "; ".join(f"{role} {protocol[role]['n']} ({protocol[role]['source']})" for role in ("train", "selection", "test"))
    text = (f"# compare: {name}\n\nCommand: `{command}`\n\nSettings: {settings}, per strategy {PER_STRATEGY} "
            f"(the same 6-epoch budget for every strategy{cut}; feature extraction's head is the converged probe; "
            f"its first seed fills an empty embedding cache, seeds 1-2 reuse it, so its wall time is cold then warm)."
            f"\n\nData roles: {roles}.\n\n" + comparison_table(result))
    (HERE / "results" / f"compare_{name}.md").write_text(text)
    write_json(HERE / "results" / f"compare_{name}.json", result)  # per-seed summaries
    print(text)


if __name__ == "__main__":
    main()
