"""Accuracy benchmark: feature extraction vs fine-tuning with efficientnet_lite0 at its native 224 px.

Command (the numbers in benchmarks/results/accuracy.md and accuracy.json came from exactly this):

    .venv/bin/python benchmarks/accuracy.py                       # both datasets, 3 seeds
    .venv/bin/python benchmarks/accuracy.py --datasets hymenoptera

Protocol (transferkit's three data roles): train fits, the selection split chooses the epoch (and the
probe's L2 strength), the test split is scored once and reported.
- hymenoptera (train/ val/): selection = 15% of train/ (stratified, split seed 0); val/ (153) is the test split.
- flowers (one folder of 5 classes x 600): stratified 70/15/15 train/selection/test, split seed 0.

Both strategies get the same epoch budget, schedule, augmentation, resolution, seeds and split (one
`transferkit compare` per dataset); they differ in what trains (head only vs everything at 0.1x the head's
rate) and in the BatchNorm policy each resolves (frozen vs train), which the table shows. Feature
extraction's head is the converged linear probe. Seeds 0-2 vary initialisation, data order and augmentation.
Flowers has ~10x the images of hymenoptera: its budget is 4 epochs to fit a 2-core CPU (hymenoptera 6).
Finished runs under benchmarks/runs/accuracy_<name>/ are reused, so an interrupted benchmark continues.
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
from transferkit.fileio import portable_paths, write_json, write_text

from provenance import provenance, test_outcomes  # benchmarks/provenance.py (the script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")
PATH_ROOTS = {"$TRANSFERKIT_DATASETS": ROOT, "": HERE.parent}
STRATEGIES = ["feature-extraction", "finetune"]
COMMON = dict(backbone="efficientnet_lite0", lr=1e-3, backbone_lr_scale=0.1, batch_size=32)
EPOCHS = {"hymenoptera": 6, "flowers": 4}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default=",".join(EPOCHS))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    out_json = HERE / "results" / "accuracy.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    results = {k: v for k, v in results.items() if isinstance(v, dict) and "verdicts" in v}  # old-protocol rows go
    for name in args.datasets.split(","):
        data = ROOT / name
        if not data.is_dir():
            print(f"{name}: not found under {ROOT}; skipped")
            continue
        load, tick = os.getloadavg()[0], time.perf_counter()
        settings = dict(COMMON, epochs=EPOCHS[name])
        result = tk.compare(data, STRATEGIES, seeds=args.seeds, out=HERE / "runs" / f"accuracy_{name}", quiet=False,
                            **settings)
        first = result["strategies"][STRATEGIES[0]]["runs"][0]
        results[name] = portable_paths({
            "command": ".venv/bin/python benchmarks/accuracy.py" + (f" --datasets {name}" if args.datasets != ",".join(EPOCHS) else "")
                       + (f" --seeds {args.seeds}" if args.seeds != 3 else ""),
            "settings": settings, "seeds": args.seeds, "protocol": first["protocol"],
            "strategies": {s: {k: row[k] for k in ("mean", "std", "trainable", "total", "selected_epochs")}
                           for s, row in result["strategies"].items()},
            "differences": result["differences"], "verdicts": result["verdicts"],
            "minutes": round((time.perf_counter() - tick) / 60, 1), "load_avg_1min_before": round(load, 2),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU",
            "table": comparison_table(result),
            "test_outcomes": test_outcomes(result),
            "provenance": provenance(__file__),
        }, PATH_ROOTS)
        write_json(out_json, results)
    write_markdown(results)


def write_markdown(results: dict) -> None:
    lines = ["# Accuracy benchmark: efficientnet_lite0 at 224 px, feature extraction vs fine-tuning", "",
             "Command: `.venv/bin/python benchmarks/accuracy.py` (see its docstring for the protocol).", ""]
    for name, r in results.items():
        roles = "; ".join(f"{role} {r['protocol'][role]['n']} ({r['protocol'][role]['source']})"
                          for role in ("train", "selection", "test"))
        lines += [f"## {name}", "", f"Command: `{r['command']}`. Settings: {r['settings']}, {r['seeds']} seed(s). Data roles: {roles}.",
                  *([r["note"]] if r.get("note") else []),
                  f"{r['machine']}; {r['minutes']} min, 1-min load average before: {r['load_avg_1min_before']}.", "",
                  r["table"], ""]
    write_text(HERE / "results" / "accuracy.md", "\n".join(lines))


if __name__ == "__main__":
    main()
