"""Strategy comparison benchmark (issue 3): `transferkit compare` on the shared datasets, efficientnet_lite0.

Commands (the tables in benchmarks/results/compare_*.md came from exactly these):

    .venv/bin/python benchmarks/compare_strategies.py hymenoptera
    .venv/bin/python benchmarks/compare_strategies.py neu_surface_defects --seeds 1

Settings cut to fit a 2-core CPU (stated in each table): input 112 px instead of the native 224, 6 epochs.
Finished runs under benchmarks/runs/compare_<name>/ are reused, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import transferkit as tk
from transferkit.compare import DEFAULT_STRATEGIES, comparison_table

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")
SETTINGS = dict(backbone="efficientnet_lite0", input_size=112, epochs=6, lr=1e-3, batch_size=32)
PER_STRATEGY = {"lp-ft": {"warmup_epochs": 2}, "gradual": {"unfreeze_every": 1}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    args = parser.parse_args()
    result = tk.compare(ROOT / args.dataset, args.strategies.split(","), seeds=args.seeds,
                        out=HERE / "runs" / f"compare_{args.dataset}", per_strategy=PER_STRATEGY, **SETTINGS)
    command = f"`.venv/bin/python benchmarks/compare_strategies.py {args.dataset}" + \
        (f" --seeds {args.seeds}`" if args.seeds != 3 else "`")
    text = (f"# compare: {args.dataset}\n\nCommand: {command}\n\nSettings: {SETTINGS}, per strategy {PER_STRATEGY} "
            f"(input cut from 224 to 112 px to fit a 2-core CPU).\n\n" + comparison_table(result))
    (HERE / "results" / f"compare_{args.dataset}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
