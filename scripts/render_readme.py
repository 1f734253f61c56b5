"""Render the README's measured figures from benchmarks/results/*.json, so no figure is typed by hand.

    .venv/bin/python scripts/render_readme.py           # rewrite the marked blocks of README.md
    .venv/bin/python scripts/render_readme.py --check   # exit 1 when README.md differs (tests/test_readme_results.py)

Each block sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` and is produced by the
function of that name below from the result files alone; a block whose file is missing says so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def _load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if std else f"{mean:.3f} ± 0"


def accuracy() -> str:
    d = _load("accuracy.json")
    lines = ["| data (reported split) | feature extraction | fine-tuning |", "|---|---|---|"]
    for name, rows in d.items():
        fe, ft = rows.get("feature-extraction"), rows.get("finetune")
        cells = []
        for row in (fe, ft):
            if row is None:
                cells.append("—")
                continue
            cells.append(f"{_pm(row['mean']['accuracy'], row['std']['accuracy'])} ({row['seeds']} seeds, "
                         f"{row['recipe']['epochs']} epochs)")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


COMPARE = [("hymenoptera", "compare_hymenoptera.json"), ("flowers", "compare_flowers.json"),
           ("NEU steel defects, given val", "compare_neu_surface_defects.json"),
           ("NEU, train re-split 80/20", "compare_neu_surface_defects_resplit.json")]
STRATEGIES = ("scratch", "feature-extraction", "finetune", "lp-ft", "gradual")


def compare() -> str:
    lines = ["| data (n reported) | " + " | ".join(STRATEGIES) + " |", "|---" * (len(STRATEGIES) + 1) + "|"]
    for label, file in COMPARE:
        d = _load(file)
        rows = d["strategies"]
        n = next(iter(rows.values()))["runs"][0]["data"]["n_val"]
        cells = [_pm(rows[s]["mean"]["accuracy"], rows[s]["std"]["accuracy"]) if s in rows else "—" for s in STRATEGIES]
        lines.append(f"| {label} ({n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def adapt() -> str:
    d = _load("adapt_mnistm.json")
    parts = [f"{name} {_pm(*row['target'])}" for name, row in d["rows"].items()]
    return ("Domain adaptation MNIST -> MNIST-M (`benchmarks/results/adapt_mnistm.md`, target accuracy, mean ± std over "
            f"seeds): {'; '.join(parts)}.\n")


def speed() -> str:
    runs = _load("speed.json")["training"]["runs"]
    base, cold, warm = runs["uncached"], runs["cached_cold"], runs["cached_warm"]
    return (f"Feature extraction with the embedding cache (`benchmarks/results/speed.json`, flowers, "
            f"{base['n_train']} train / {base['n_val']} val images, 10 epochs, machine shared: load average "
            f"{base['load_avg']}-{warm['load_avg']}): training time {base['time_s'] / cold['time_s']:.1f}x shorter "
            f"than recomputing the frozen backbone every epoch including the cache-filling pass, "
            f"{base['time_s'] / warm['time_s']:.1f}x with a warm cache ({base['time_s']:.0f} s vs {cold['time_s']:.1f} s "
            f"and {warm['time_s']:.1f} s); accuracy {cold['accuracy']:.3f} vs {base['accuracy']:.3f} (n={base['n_val']}).\n")


def linear_probe() -> str:
    d = _load("linear_probe.json")["datasets"]
    lines = ["| data (n reported) | converged probe | old head (epochs) | scikit-learn C=1 | probe - old, paired 95% CI |",
             "|---|---|---|---|---|"]
    for name, row in d.items():
        heads = row["heads"]
        n = sum(row["report_class_counts"])

        def cell(head: str) -> str:
            h = heads[head]
            lo, hi = h["ci95"]["accuracy"]
            return f"{h['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"

        lo, hi = row["differences_ci95"]["new-old"]["accuracy"]
        lines.append(f"| {name} ({n}) | {cell('new')} | {cell('old')} | {cell('sklearn')} | [{lo:+.3f}, {hi:+.3f}] |")
    return "\n".join(lines) + "\n"


def recommend() -> str:
    d = _load("recommend.json")
    labels = {"hymenoptera": "hymenoptera", "flowers": "flowers", "neu_surface_defects": "NEU steel defects",
              "mnist_to_mnistm/mnist/train": "MNIST", "mnist_to_mnistm/mnistm/train": "MNIST-M"}
    lines = ["| data | BatchNorm shift | probe accuracy (k-fold, n) | recommended |", "|---|---|---|---|"]
    for name, rec in d.items():
        m = rec["measurements"]
        lines.append(f"| {labels.get(name, name)} | {m['bn_shift']:.3f} | {m['probe_accuracy']:.2f} ({m['probe_images']}) "
                     f"| {rec['strategy']} |")
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[], str]] = {f.__name__.replace("_", "-"): f for f in
                                           (accuracy, compare, adapt, speed, linear_probe, recommend)}


def render(text: str) -> str:
    """``text`` with every marked block re-rendered; an unknown block name is an error."""
    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise KeyError(f"README block results:{name} has no renderer; known: {', '.join(RENDERERS)}")
        return match.group(1) + RENDERERS[name]() + match.group(4)

    return BLOCK.sub(replace, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is not up to date")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    rendered = render(current)
    if args.check:
        if rendered != current:
            print("README.md figures differ from benchmarks/results; run: python scripts/render_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
