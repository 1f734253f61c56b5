"""``transferkit demo``: the embedded default job (scikit-learn's digits, feature extraction vs fine-tuning)."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli.common import guarded

__all__ = ["register"]


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo data and runs."),
    quick: bool = typer.Option(False, help="Fewer epochs (a smoke test)."),
) -> None:
    """The embedded default: scikit-learn's handwritten digits, feature extraction vs fine-tuning."""

    def go() -> None:
        from transferkit.demo import run_demo

        run_demo(out, quick=quick)

    guarded(go)


def register(app: typer.Typer) -> None:
    app.command()(demo)
