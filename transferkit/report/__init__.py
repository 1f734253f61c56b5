"""Run, evaluation and comparison reports: self-contained HTML with plots and Grad-CAM.

* :func:`build_run_report` writes ``report.html`` into a run folder (the trainer calls it at the end of every run).
* :func:`build_evaluation_report` writes ``evaluation.html`` next to ``evaluation.json``.
* :func:`build_comparison_report` writes ``comparison.html`` next to ``comparison.json``.
* :func:`explain` writes Grad-CAM overlays for chosen images.

Heavy imports (matplotlib, grad-cam) happen inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["build_run_report", "build_evaluation_report", "build_comparison_report", "explain"]


def build_run_report(run_dir: str | Path, model: Any = None) -> Path:
    """Write ``report.html`` into a finished run folder; see :mod:`transferkit.report.run_report`."""
    from transferkit.report.run_report import build_run_report as build

    return build(run_dir, model=model)


def build_evaluation_report(
    out_dir: str | Path, report: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], run: Any = None
) -> Path:
    """Write ``evaluation.html`` into ``out_dir``; see :mod:`transferkit.report.run_report`."""
    from transferkit.report.run_report import build_evaluation_report as build

    return build(out_dir, report, predictions, run=run)


def build_comparison_report(out_dir: str | Path, comparison: Mapping[str, Any]) -> Path:
    """Write ``comparison.html`` into ``out_dir``; see :mod:`transferkit.report.comparison`."""
    from transferkit.report.comparison import build_comparison_report as build

    return build(out_dir, comparison)


def explain(
    run: Any, images: Sequence[str | Path], out_dir: str | Path, target: str | None = None
) -> list[Path]:
    """Grad-CAM overlays for image files or folders: one ``<name>_gradcam.png`` each in ``out_dir``.

    Args:
        run: a run folder or a LoadedRun.
        images: image files and/or folders of images.
        out_dir: where the PNGs go (created).
        target: class name to explain; None explains each image's predicted class.

    Returns the written files. Unreadable images are skipped with a warning; none readable is a DataError.
    """
    from transferkit.report.gradcam import explain_run

    return explain_run(run, images, out_dir, target)
