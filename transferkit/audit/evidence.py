"""What an unconfirmed finding is worth: the precision ``benchmarks/audit_noise.py`` measured, read from its
result file (never typed here), so the audit states an expected precision instead of an order.

The file exists in a source checkout (``benchmarks/results/audit_noise.json``); an installed package without it
says that the figure is not measured for this install and which script measures it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "label_precision", "label_precision_sentence"]

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "audit_noise.json"
SCRIPT = "benchmarks/audit_noise.py"


def _wilson(k: int, n: int) -> list[float]:
    """95% Wilson score interval of k/n (for a result file written before it stored the interval)."""
    z, p = 1.959964, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def label_precision(path: str | os.PathLike[str] = RESULTS) -> dict[str, Any] | None:
    """Precision of cleanlab's flagged list on the benchmark's planted label noise, or None when not measured."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        row = next(r for r in data["labels"]["rows"] if r["list"] == "cleanlab flagged")
        right, length = int(row["moved_found"]), int(row["length"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None
    if not length:
        return None
    return {"precision": right / length, "ci95": row.get("precision_ci95") or _wilson(right, length),
            "right": right, "flagged": length, "noise_share": data["labels"].get("noise_share", 0.05),
            "data": os.path.basename(str(data.get("data", "flowers"))), "source": f"{SCRIPT} -> "
            "benchmarks/results/audit_noise.json"}


def label_precision_sentence(measured: dict[str, Any] | None) -> str:
    """The expected precision of a flagged list, as a sentence for the summary and the page."""
    if measured is None:
        return (f"how many such flags are real errors is not measured for this install ({SCRIPT} measures it "
                "on planted noise)")
    lo, hi = measured["ci95"]
    return (f"on {measured['data']} with {measured['noise_share']:.0%} planted wrong labels, "
            f"{measured['precision']:.3f} [95% CI {lo:.3f}, {hi:.3f}] of the flagged images were wrong labels "
            f"({measured['right']}/{measured['flagged']}, {measured['source']}), so expect some flagged labels to "
            "be right")
