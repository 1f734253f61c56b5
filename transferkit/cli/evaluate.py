"""``transferkit evaluate RUN DATA``: metrics, per-class table and confusion matrix on labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from transferkit.cli.common import guarded

__all__ = ["register"]


def evaluate(
    run: Path = typer.Argument(..., help="A run folder."),
    data: Path = typer.Argument(..., help="Labelled image folder (class sub-folders, or its test/ or val/ split)."),
    out: Optional[Path] = typer.Option(None, help="Where to write evaluation.json (default: the run folder)."),
    engine: str = typer.Option("auto", help="auto | torch | onnx. auto: ONNX Runtime on the CPU when installed "
                                            "(2.4x PyTorch's compute in benchmarks/cpu_inference.py), PyTorch on a GPU."),
    tta: str = typer.Option("none", help="Test-time augmentation: none | flip (2 views) | flip-crops (ten crops: "
                                         "centre, corners and mirrors; 10x the compute). Probabilities are averaged."),
    include_seen: bool = typer.Option(False, "--include-seen",
                                      help="Also score images the run trained or selected on (matched by content); "
                                           "by default they are left out and counted: their figures are biased."),
) -> None:
    """Metrics, per-class precision/recall/F1 and confusion matrix of a run on labelled data."""

    def go() -> dict[str, Any]:
        import transferkit.api as api

        return api.evaluate(run, data, out=out, engine=engine, tta=tta, include_seen=include_seen)

    report = guarded(go)
    from transferkit.data.balance import IMBALANCE_RATIO
    from transferkit.engine.progress import metrics_line
    from transferkit.metrics.classification import format_per_class

    support = [row["support"] for row in report["per_class"].values()]
    imbalanced = min(support) == 0 or max(support) / min(support) > IMBALANCE_RATIO  # of the evaluated images
    lead = "balanced_accuracy" if imbalanced else "accuracy"
    seen = report.get("seen_check") or {}
    if seen.get("summary"):  # images the run trained or selected on: left out, included, or not checkable
        typer.echo(seen["summary"])
    typer.echo(f"{report['n']} images: {metrics_line(report['metrics'], report.get('ci95'), report['n'], lead)} "
               "(95% intervals: Clopper-Pearson; balanced accuracy MOVER)")
    typer.echo(format_per_class(report))
    width = max(len(c) for c in report["classes"])
    typer.echo("confusion matrix normalised by true class (rows: true, columns: predicted; the diagonal is recall):")
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        total = sum(row) or 1
        typer.echo(f"{name:<{width}}  " + " ".join(f"{v / total:5.2f}" for v in row))
    typer.echo("confusion matrix, counts:")
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        typer.echo(f"{name:<{width}}  " + " ".join(f"{v:5d}" for v in row))
    if report["skipped_files"]:
        typer.echo(f"{len(report['skipped_files'])} file(s) skipped (see evaluation.json)")


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
