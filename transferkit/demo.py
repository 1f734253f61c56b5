"""The embedded default job: real handwritten-digit scans that ship inside scikit-learn.

``load_digits`` holds 1,797 8x8 grey scans of digits written by 43 people (UCI). We write them as an
image folder, then train feature extraction, plain fine-tuning and LP-FT (head warm-up, then everything)
on the same split and print a comparison. The backbone runs at 96 px (the scans are 8x8, so the native
224 px would only cost time). The rows differ in more than the strategy (epochs, learning rate, the
resolved BatchNorm policy): the printed table says so, and ``demo.json`` records every setting with the
metrics. What the demo measured is in benchmarks/results/demo.md (``benchmarks/demo_record.py``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.api import train
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
                     "warmup_epochs": cfg["strategy"]["warmup_epochs"] if summary["strategy"] == "lp-ft" else None,
                     "bn": plan["bn"], "augment": cfg["data"]["augment"], "input_size": cfg["model"]["input_size"],
                     "batch_size": cfg["engine"]["batch_size"], "seed": cfg["engine"]["seed"]},
        "metrics": {k: m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1")},
        "n_val": summary["data"]["n_val"],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "trainable_fraction": summary["params"]["trainable"] / summary["params"]["total"],
        "time_s": summary["time_s"],
    }


def differing_settings(rows: list[dict]) -> dict[str, list]:
    """Settings whose values are not the same in every row (what else differs besides the strategy)."""
    keys = rows[0]["settings"] if rows else {}
    return {k: [r["settings"][k] for r in rows] for k in keys if len({repr(r["settings"][k]) for r in rows}) > 1}


def run_demo(out: str | Path = "runs/demo", quick: bool = False) -> list[dict]:
    """Feature extraction vs fine-tuning vs LP-FT on the digits; returns the three summaries.

    Also writes ``demo.json`` in ``out``: per row the metrics, the number of validation images and every
    setting, with the settings that differ between rows listed, so the printed comparison is on record.
    """
    out = Path(out)
    started = time.perf_counter()
    data = write_digits(out / "digits")
    common = dict(backbone="efficientnet_lite0", input_size=96, batch_size=64, seed=0)
    plans = [
        ("feature-extraction", dict(epochs=2 if quick else 8, lr=3e-3)),
        ("finetune", dict(epochs=1 if quick else 3, lr=2e-3)),
        ("lp-ft", dict(epochs=2 if quick else 4, warmup_epochs=1 if quick else 2, lr=2e-3)),
    ]
    summaries, rows = [], []
    for strategy, extra in plans:
        run_dir = out / strategy
        if (run_dir / "summary.json").exists():
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            summary = train(data, strategy=strategy, out=str(run_dir), **common, **extra).summary
        summaries.append(summary)
        rows.append(_row(run_dir, summary))
    differs = differing_settings(rows)
    record = {"command": "transferkit demo" + (" --quick" if quick else ""),
              "data": "scikit-learn load_digits (1,797 real 8x8 scans), written as PNG folders",
              "rows": rows, "differing_settings": differs, "wall_time_s": round(time.perf_counter() - started, 1)}
    write_json(out / "demo.json", record)
    print(f"\nscikit-learn digits (1,797 real 8x8 scans), efficientnet_lite0 at 96 px, same split, "
          f"{rows[0]['n_val']} validation images:")
    print(f"{'strategy':<20} {'accuracy':>9} {'macro-F1':>9} {'trainable':>12} {'time':>7}")
    for r in rows:
        m = r["metrics"]
        print(f"{r['strategy']:<20} {m['accuracy']:>9.4f} {m['macro_f1']:>9.4f} "
              f"{100 * r['trainable_fraction']:>11.2f}% {r['time_s']:>6.0f}s")
    if differs:
        print("besides the strategy, the rows differ in: "
              + "; ".join(f"{k} {' / '.join(str(v) for v in values)}" for k, values in differs.items()))
    print(f"recorded in {out / 'demo.json'}")
    return summaries
