"""Run and comparison reports (HTML with plots and Grad-CAM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["build_run_report"]


def build_run_report(run_dir: str | Path, model: Any = None) -> Path | None:
    """Placeholder until the HTML report lands (issue 6): writes nothing."""
    return None
