"""`transferkit recommend` and `transferkit compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["register"]


def recommend(
    data: Path = typer.Argument(..., help="Image folder to measure."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone whose pretraining domain is the reference."),
    weights: Optional[Path] = typer.Option(None, help="Local weights for the backbone."),
) -> None:
    """Measure a dataset (size, balance, distance from ImageNet) and recommend a strategy."""
    from transferkit.cli import _run
    from transferkit.strategy.recommend import recommend as rec

    result = _run(lambda: rec(str(data), backbone, None if weights is None else str(weights)))
    typer.echo(result.explain())


def compare(
    data: Path = typer.Argument(..., help="Image folder."),
    strategies: str = typer.Option(",".join(("scratch", "feature-extraction", "finetune", "lp-ft", "gradual")),
                                   help="Comma-separated strategies."),
    seeds: int = typer.Option(3, help="Seeds per strategy (0..N-1)."),
    out: Optional[Path] = typer.Option(None, help="Folder for all runs and the comparison files."),
    backbone: Optional[str] = typer.Option(None),
    epochs: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    input_size: Optional[int] = typer.Option(None),
    warmup_epochs: Optional[int] = typer.Option(None, help="lp-ft head-only epochs."),
    unfreeze_every: Optional[int] = typer.Option(None, help="gradual: epochs between unfreezing steps."),
) -> None:
    """Train several strategies over several seeds on the same split; print a mean ± std table."""
    from transferkit.cli import _run
    from transferkit.compare import compare as run_compare, comparison_table

    common = dict(backbone=backbone, epochs=epochs, lr=lr, batch_size=batch_size, input_size=input_size,
                  warmup_epochs=warmup_epochs, unfreeze_every=unfreeze_every)
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    result = _run(lambda: run_compare(data, names, seeds, out, **{k: v for k, v in common.items() if v is not None}))
    typer.echo(comparison_table(result))
    typer.echo(f"written: {result['out']}/comparison.json, comparison.md")


def register(app: typer.Typer) -> None:
    app.command()(recommend)
    app.command()(compare)
