"""``transferkit explain RUN IMAGES... --out DIR``: Grad-CAM overlays of where the model looks."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from transferkit.cli.common import guarded

__all__ = ["register"]


def explain(
    run: Path = typer.Argument(..., help="A run folder."),
    images: List[Path] = typer.Argument(..., help="Image files or folders."),
    out: Path = typer.Option(..., "--out", help="Folder for the overlays (created)."),
    target: Optional[str] = typer.Option(None, help="Class to explain (default: each image's predicted class)."),
) -> None:
    """Write Grad-CAM overlays (where the model looks) for chosen images."""

    def go() -> list[Path]:
        from transferkit.report import explain as run_explain

        return run_explain(run, images, out, target)

    written = guarded(go)
    for path in written:
        typer.echo(str(path))
    typer.echo(f"{len(written)} overlay(s) written to {out}")


def register(app: typer.Typer) -> None:
    app.command()(explain)
