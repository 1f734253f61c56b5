"""What produced a result file: the command, the script's SHA-256, the library versions and the machine.

Every benchmark whose file the README renders stores ``provenance(__file__)`` under the key ``"provenance"``;
``tests/e2e/test_readme_results.py`` checks that the recorded script is the one the README block names and that
its digest is the script as it is now, so a result cannot outlive a change to the code that measured it (edit a
benchmark, re-run it).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("transferkit", "torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn", "onnxruntime", "cleanlab")


def script_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the script's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "transferkit", "benchmarks"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + (" (with uncommitted changes to transferkit/ or benchmarks/)" if dirty.stdout.strip() else "")


def provenance(script: str | os.PathLike[str], argv: list[str] | None = None) -> dict[str, Any]:
    """The provenance record of a result produced by ``script`` run with ``argv`` (default: this process's)."""
    path = Path(script).resolve()
    args = list(sys.argv[1:] if argv is None else argv)
    relative = path.relative_to(REPO).as_posix()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "script": relative,
        "script_sha256": script_digest(path),
        "command": " ".join(["python", relative, *map(shlex.quote, args)]),
        "versions": _versions(),
        "git_commit": _commit(),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "load_avg_at_write": load},
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def test_outcomes(result: dict[str, Any]) -> dict[str, Any]:
    """Every run's predicted class per test image (paths sorted, labels once), read from the run folders of a
    ``transferkit compare`` result: enough to recompute accuracy, balanced accuracy, macro-F1 and the paired
    verdicts later without training again (ROC-AUC would need the probabilities, which stay in the run folders)."""
    import json

    paths: list[str] | None = None
    labels: list[int] | None = None
    predicted: dict[str, list[list[int]]] = {}
    for name, row in result["strategies"].items():
        predicted[name] = []
        for run_dir in row["run_dirs"]:
            rows = sorted(json.loads((Path(run_dir) / "test_predictions.json").read_text(encoding="utf-8")),
                          key=lambda r: r["path"])
            if paths is None:
                paths, labels = [r["path"] for r in rows], [int(r["label"]) for r in rows]
            predicted[name].append([max(range(len(r["probs"])), key=r["probs"].__getitem__) for r in rows])
    return {"paths": paths or [], "labels": labels or [], "predicted": predicted}
