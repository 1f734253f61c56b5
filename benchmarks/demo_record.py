"""Record what the quick-start demo measures: `transferkit demo` from a fresh folder with a cold cache.

Command (benchmarks/results/demo.json and demo.md came from exactly this):

    .venv/bin/python benchmarks/demo_record.py

It runs the README's first quick-start job as a whole process (start-up included) in an empty output
folder with an empty embedding cache, the way a new user's first `make demo` runs once `.venv` exists,
then stores the demo's own record (per row: metrics, n, every setting, and which settings differ between
rows) with the wall time and the machine's load. The README's demo sentence is checked against this file
by tests/e2e/test_results_files.py. Measure on an otherwise idle machine; the load average is recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
COMMAND = ".venv/bin/python benchmarks/demo_record.py"


def main() -> None:
    out = HERE / "runs" / "demo"
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRANSFERKIT_CACHE_DIR=cache)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "transferkit.cli", "demo", "--out", str(out)], check=True, env=env, cwd=REPO)
        wall = time.perf_counter() - started
    record = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    from provenance import provenance  # benchmarks/provenance.py (the script's folder is on sys.path)

    record.update({"benchmark_command": COMMAND, "provenance": provenance(__file__), "process_wall_time_s": round(wall, 1),
                   "load_avg_1min_before": round(load_before, 2), "cpu_count": os.cpu_count()})
    sys.path.insert(0, str(REPO))
    from transferkit.fileio import portable_paths, write_json, write_text

    record = portable_paths(record, {"": REPO})
    write_json(HERE / "results" / "demo.json", record)
    lines = [f"# demo: `{record['command']}`", "", f"Command: `{COMMAND}` (whole process, cold cache, "
             f"{record['process_wall_time_s']} s; 1-min load average before: {record['load_avg_1min_before']}, "
             f"{record['cpu_count']} cores). Test split (chose nothing); the epoch was chosen on the selection split.", "",
             "| strategy | test accuracy [95% CI] | macro-F1 | n (test) | selected epoch | epochs | bn | lr | time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        s, m = r["settings"], r["metrics"]
        lo, hi = r["ci95"]["accuracy"]
        lines.append(f"| {r['strategy']} | {m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {m['macro_f1']:.3f} | {r['n_test']} | "
                     f"{r['selected_epoch']} | {s['epochs']} | {s['bn']} | {s['lr']} | {r['time_s']:.0f} |")
    v = record["verdicts"]
    lines += ["", f"Paired verdicts against the best row ({v['best']}), same test images: "
              + "; ".join(f"{name} {row['vs_best']:+.3f} [{row['vs_best_ci95'][0]:+.3f}, {row['vs_best_ci95'][1]:+.3f}] "
                          f"{row['verdict']}" for name, row in v["strategies"].items() if "verdict" in row) + "."]
    differs = record["differing_settings"]
    lines += ["", "Settings that differ between rows besides the strategy: "
              + ("; ".join(f"{k}: {' / '.join(map(str, v))}" for k, v in differs.items()) or "none") + "."]
    write_text(HERE / "results" / "demo.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
