"""``transferkit report RUN``: rebuild the HTML report of a run folder or a comparison folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli.common import guarded
from transferkit.errors import ConfigError

__all__ = ["register"]


def report(
    run: Path = typer.Argument(..., help="A run folder (or a comparison folder holding comparison.json)."),
) -> None:
    """Rebuild report.html of a run folder (comparison.html of a comparison folder)."""

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

    typer.echo(f"written: {guarded(go)}")


def register(app: typer.Typer) -> None:
    app.command()(report)
