"""What the recommender measures and chooses on the shared datasets.

Command:  .venv/bin/python benchmarks/recommend_probe.py   (about 1.5 min on 2 CPU cores)
Writes benchmarks/results/recommend.json and prints one line per dataset.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from transferkit.fileio import portable_paths
from transferkit.recommender import recommend

ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
DATASETS = ["hymenoptera", "flowers", "neu_surface_defects", "mnist_to_mnistm/mnist/train", "mnist_to_mnistm/mnistm/train"]


def main() -> None:
    results = {}
    for name in DATASETS:
        if not (ROOT / name).is_dir():
            print(f"{name}: not found under {ROOT}, skipped")
            continue
        tick = time.perf_counter()
        rec = recommend(str(ROOT / name))
        m = rec.measurements
        results[name] = {**rec.to_dict(), "time_s": round(time.perf_counter() - tick, 1)}
        print(f"{name}: BN shift {m['bn_shift']:.3f}, probe {m['probe_accuracy']:.3f}, "
              f"median/class {m['median_per_class']} -> {rec.strategy} {rec.settings}")
    from provenance import provenance  # benchmarks/provenance.py (the script's folder is on sys.path)

    results["provenance"] = provenance(__file__)
    out = Path(__file__).parent / "results" / "recommend.json"
    # committed: paths relative to the datasets root, never this machine's
    results = portable_paths(results, {"$TRANSFERKIT_DATASETS": ROOT})
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
