"""`transferkit report` (rebuild a run's or a comparison's HTML report) and `transferkit explain` (Grad-CAM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

__all__ = ["register"]


def report(
    run: Path = typer.Argument(..., help="A run folder (or a comparison folder holding comparison.json)."),
) -> None:
    """Rebuild report.html of a run folder (comparison.html of a comparison folder)."""
    from transferkit.cli import _run
    from transferkit.errors import ConfigError

    def go() -> Path:
        from transferkit import report as reports

        if (run / "comparison.json").is_file():
            comparison = json.loads((run / "comparison.json").read_text(encoding="utf-8"))
            return reports.build_comparison_report(run, comparison)
        if not (run / "summary.json").is_file():
            raise ConfigError(
                f"{run} is neither a finished run folder (no summary.json) nor a comparison folder (no comparison.json); "
                "pass the --out folder of `transferkit train` or `transferkit compare`"
            )
        return reports.build_run_report(run)

    typer.echo(f"written: {_run(go)}")


def explain(
    run: Path = typer.Argument(..., help="A run folder."),
    images: List[Path] = typer.Argument(..., help="Image files or folders."),
    out: Path = typer.Option(..., "--out", help="Folder for the overlays (created)."),
    target: Optional[str] = typer.Option(None, help="Class to explain (default: each image's predicted class)."),
) -> None:
    """Write Grad-CAM overlays (where the model looks) for chosen images."""
    from transferkit.cli import _run
    from transferkit.report import explain as run_explain

    written = _run(lambda: run_explain(run, images, out, target))
    for path in written:
        typer.echo(str(path))
    typer.echo(f"{len(written)} overlay(s) written to {out}")


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command()(explain)
