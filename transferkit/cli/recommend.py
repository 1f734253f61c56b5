"""``transferkit recommend DATA``: measure a dataset and recommend a strategy with its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from transferkit.cli.common import guarded
from transferkit.cli.options import with_settings

__all__ = ["register"]


@with_settings(["backbone", "weights"])
def recommend(
    data: Path = typer.Argument(..., help="Image folder to measure."),
    *,
    settings: dict[str, Any],
) -> None:
    """Measure a dataset (size, balance, distance from ImageNet from the backbone's features) and recommend a strategy."""

    def go() -> str:
        from transferkit.config import ModelCfg
        from transferkit.recommender import recommend as measure_and_recommend

        backbone = settings.get("backbone", ModelCfg.backbone)
        return measure_and_recommend(str(data), backbone, settings.get("weights")).explain()

    typer.echo(guarded(go))


def register(app: typer.Typer) -> None:
    app.command()(recommend)
