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
) -> None:
    """Metrics, per-class precision/recall/F1 and confusion matrix of a run on labelled data."""

    def go() -> dict[str, Any]:
        import transferkit.api as api

        return api.evaluate(run, data, out=out)

    report = guarded(go)
    from transferkit.engine.progress import metrics_line

    typer.echo(f"{report['n']} images: {metrics_line(report['metrics'], report.get('ci95'), report['n'])} "
               "(95% intervals: stratified bootstrap)")
    width = max(len(c) for c in report["classes"])
    typer.echo(f"{'class':<{width}}  precision  recall     f1  support")
    for name, row in report["per_class"].items():
        typer.echo(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}")
    typer.echo("confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        typer.echo(f"{name:<{width}}  " + " ".join(f"{v:5d}" for v in row))
    if report["skipped_files"]:
        typer.echo(f"{len(report['skipped_files'])} file(s) skipped (see evaluation.json)")


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
