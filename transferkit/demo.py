"""The embedded default job: real handwritten-digit scans that ship inside scikit-learn.

``load_digits`` holds 1,797 8x8 grey scans of digits written by 43 people (UCI). We write them as an
image folder, then compare feature extraction, plain fine-tuning and LP-FT (head warm-up, then everything)
with the same budget on one 70/15/15 split (train / selection / test). The backbone runs at 96 px (the scans
are 8x8, so the native 224 px would only cost time). The printed table gives test accuracy with its 95%
interval, the paired difference to the best row with a verdict, and a BN column (each strategy resolves its
own BatchNorm policy); ``demo.json`` records every setting with the metrics. What the demo measured is in
benchmarks/results/demo.md (``benchmarks/demo_record.py``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.fileio import write_json

__all__ = ["write_digits", "run_demo", "differing_settings"]


def write_digits(folder: str | Path) -> Path:
    """Write sklearn's digits as PNG files, one sub-folder per digit (idempotent)."""
    from sklearn.datasets import load_digits

    root = Path(folder)
    digits = load_digits()
    marker = root.parent / f".{root.name}-complete"  # outside the data folder: not a skipped file
    if marker.exists():
        return root
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        path = root / str(label) / f"digit_{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(path)
    marker.write_text("ok\n")
    return root


def _row(run_dir: Path, summary: dict) -> dict:
    """What one demo row measured, and every setting that can differ between rows (read from the run folder)."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    plan = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    m = summary["metrics"]
    return {
        "strategy": summary["strategy"],
        "settings": {"epochs": cfg["engine"]["epochs"], "lr": cfg["optim"]["lr"],
                     "warmup_epochs": cfg["strategy"]["warmup_epochs"],
                     "bn": plan["bn"], "augment": cfg["data"]["augment"], "input_size": cfg["model"]["input_size"],
                     "batch_size": cfg["engine"]["batch_size"], "seed": cfg["engine"]["seed"]},
        "metrics": {k: m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1")},
        "ci95": {k: (summary.get("ci95") or {}).get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1")},
        "n_test": summary["data"]["n_test"],
        "selected_epoch": summary["selected_epoch"],
        "epochs_run": summary["epochs_run"],
        "trainable_fraction": summary["params"]["trainable"] / summary["params"]["total"],
        "time_s": summary["time_s"],
    }


def differing_settings(rows: list[dict]) -> dict[str, list]:
    """Settings whose values are not the same in every row (what else differs besides the strategy)."""
    keys = rows[0]["settings"] if rows else {}
    return {k: [r["settings"][k] for r in rows] for k in keys if len({repr(r["settings"][k]) for r in rows}) > 1}


def run_demo(out: str | Path = "runs/demo", quick: bool = False) -> list[dict]:
    """Feature extraction vs fine-tuning vs LP-FT on the digits, with equal budgets; returns the three summaries.

    Runs through :func:`transferkit.compare.compare` (one seed): every strategy gets the same epochs, learning
    rate, augmentation, resolution, split and seed; the BatchNorm policy is each strategy's own (the table's BN
    column says which). The digits folder is split 70/15/15 into train / selection (chooses the epoch) / test
    (reported, chooses nothing). Prints the comparison with 95% intervals and paired verdicts, and writes
    ``demo.json`` in ``out``: per row the test metrics with intervals, n, the selected epoch and every setting,
    the settings that differ between rows, and the verdicts.
    """
    from transferkit.compare import compare, comparison_table

    out = Path(out)
    started = time.perf_counter()
    data = write_digits(out / "digits")
    epochs = 2 if quick else 4
    # warmup_epochs only acts on lp-ft (head-only epochs before everything unfreezes), but giving it to every row
    # keeps the configs equal in everything but the strategy
    common = dict(backbone="efficientnet_lite0", input_size=96, batch_size=64, epochs=epochs, lr=2e-3,
                  warmup_epochs=epochs // 2)
    strategies = ["feature-extraction", "finetune", "lp-ft"]
    result = compare(data, strategies, seeds=1, out=out, quiet=False, **common)
    summaries = [result["strategies"][name]["runs"][0] for name in strategies]
    rows = [_row(Path(result["strategies"][name]["run_dirs"][0]), summary) for name, summary in zip(strategies, summaries)]
    differs = differing_settings(rows)
    record = {"command": "transferkit demo" + (" --quick" if quick else ""),
              "data": "scikit-learn load_digits (1,797 real 8x8 scans), written as PNG folders",
              "rows": rows, "differing_settings": differs, "verdicts": result["verdicts"],
              "wall_time_s": round(time.perf_counter() - started, 1)}
    write_json(out / "demo.json", record)
    print(f"\nscikit-learn digits (1,797 real 8x8 scans), efficientnet_lite0 at 96 px, {epochs} epochs each, "
          f"split 70/15/15; figures on the {rows[0]['n_test']} test scans, which chose nothing:\n")
    print(comparison_table(result))
    print(f"recorded in {out / 'demo.json'}; the comparison page: {out / 'comparison.html'}")
    return summaries
