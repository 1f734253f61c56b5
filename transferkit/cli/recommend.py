"""``transferkit recommend DATA``: measure a dataset and recommend a strategy with its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import guarded

__all__ = ["register"]


def recommend(
    data: Path = typer.Argument(..., help="Image folder to measure."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone whose pretraining domain is the reference."),
    weights: Optional[Path] = typer.Option(None, help="Local weights for the backbone."),
) -> None:
    """Measure a dataset (size, balance, distance from ImageNet) and recommend a strategy."""

    def go() -> str:
        from transferkit.recommender import recommend as measure_and_recommend

        return measure_and_recommend(str(data), backbone, None if weights is None else str(weights)).explain()

    typer.echo(guarded(go))


def register(app: typer.Typer) -> None:
    app.command()(recommend)
