"""Accuracy benchmark: feature extraction and fine-tuning with efficientnet_lite0, 3 seeds each.

Command (the numbers in benchmarks/results/accuracy.md came from exactly this):

    .venv/bin/python benchmarks/accuracy.py                 # both datasets, both strategies, 3 seeds
    .venv/bin/python benchmarks/accuracy.py --only feature-extraction --datasets hymenoptera

hymenoptera uses its own train/val split; flowers is split stratified 80/20 with split seed 0. Seeds 0-2
vary initialisation, data order and augmentation. Finished runs under benchmarks/runs/ are reused, so an
interrupted benchmark continues. Writes benchmarks/results/accuracy.md and accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import transferkit as tk
from transferkit.compare import comparison_table

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")

# Recipes. Feature extraction: linear head on cached frozen features. Fine-tuning: the seeds' guidance
# (1e-4 backbone, 1e-3 head), BatchNorm in train mode, light augmentation, warm-up + cosine.
RECIPES = {
    "feature-extraction": dict(epochs=15, lr=1e-3),
    "finetune": dict(epochs=6, lr=1e-3, backbone_lr_scale=0.1),
}
DATASETS = {"hymenoptera": {}, "flowers": {"val_fraction": 0.2}}  # compare fixes split seed 0
# Flowers has 10x the images of hymenoptera: a fine-tuning epoch costs ~2 min on 2 CPU cores, so its
# fine-tuning runs get 4 epochs (the probe also used 4) to fit the machine's budget.
EPOCHS_OVERRIDE = {("flowers", "finetune"): 4}
# Per-(dataset, strategy) seed counts when a machine's budget forces fewer (state it in the table).
# flowers fine-tuning seed 0 was interrupted after epoch 3 and finished with
# `python -c "import transferkit as tk; tk.resume('benchmarks/runs/flowers/finetune/seed0')"`
# (a resumed run is bit-identical to an uninterrupted one on CPU: tests/test_robustness_resume.py).
SEEDS_OVERRIDE: dict[tuple[str, str], int] = {}
NOTES = {
    "flowers": "Fine-tuning seed 0 ran epochs 1-3 in one session (machine shared, 12-25 min per epoch) and epoch 4 "
               "after a resume (186 s), so its wall time counts only epoch 4; seeds 1-2 ran whole on an idle "
               "machine (637 s and 688 s).",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--only", default=",".join(RECIPES), help="comma-separated strategies")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    results = {}
    out_json = HERE / "results" / "accuracy.json"
    if out_json.exists():
        results = json.loads(out_json.read_text())
    for name in args.datasets.split(","):
        data = ROOT / name
        if not data.is_dir():
            print(f"{name}: not found under {ROOT}; skipped")
            continue
        for strategy in args.only.split(","):
            tick = time.perf_counter()
            recipe = dict(RECIPES[strategy])
            recipe["epochs"] = EPOCHS_OVERRIDE.get((name, strategy), recipe["epochs"])
            result = tk.compare(
                data, [strategy], seeds=SEEDS_OVERRIDE.get((name, strategy), args.seeds), out=HERE / "runs" / name, quiet=False,
                per_strategy={strategy: recipe}, backbone="efficientnet_lite0", **DATASETS[name],
            )
            row = result["strategies"][strategy]
            results.setdefault(name, {})[strategy] = {k: row[k] for k in ("mean", "std", "trainable", "total")}
            results[name][strategy]["recipe"] = recipe
            results[name][strategy]["seeds"] = len(row["runs"])
            print(f"{name} {strategy}: {row['mean']['accuracy']:.4f} ± {row['std']['accuracy']:.4f} "
                  f"({time.perf_counter() - tick:.0f}s)")
            out_json.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results)


def write_markdown(results: dict) -> None:
    lines = [
        "# Accuracy benchmark: efficientnet_lite0",
        "",
        "Command: `.venv/bin/python benchmarks/accuracy.py` (see its docstring).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU.",
        "",
    ]
    for name, rows in results.items():
        table = {"data": name, "seeds": "/".join(str(r.get("seeds", 3)) for r in rows.values()), "strategies": rows}
        lines += [f"## {name}", "", comparison_table(table), ""]
        lines += [f"- {s}: {r.get('seeds', 3)} seed(s), recipe {r['recipe']}" for s, r in rows.items()] + [""]
        lines += [NOTES[name], ""] if name in NOTES else []
    (HERE / "results" / "accuracy.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
