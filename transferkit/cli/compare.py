"""``transferkit compare DATA``: several strategies over several seeds on the same split, means with 95% intervals
and paired verdicts against the best row."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from transferkit.cli.common import guarded
from transferkit.cli.options import with_settings
from transferkit.strategy.plan import default_comparison

__all__ = ["register"]

# the train settings compare passes to every run (flags generated from the config dataclasses)
SHARED_SETTINGS = ("backbone", "epochs", "lr", "batch_size", "input_size", "warmup_epochs", "unfreeze_every")


@with_settings(SHARED_SETTINGS)
def compare(
    data: Path = typer.Argument(..., help="Image folder."),
    strategies: str = typer.Option(",".join(default_comparison()), help="Comma-separated strategies."),
    seeds: int = typer.Option(3, help="Seeds per strategy (0..N-1)."),
    out: Optional[Path] = typer.Option(None, help="Folder for all runs and the comparison files."),
    *,
    settings: dict[str, Any],
) -> None:
    """Train several strategies over several seeds on the same split; print each one's mean with a 95% interval
    and its paired verdict against the best row.

    Every strategy is scored on the same test images with the same seeds. Per row: the mean over seeds of the
    lead metric (accuracy; balanced accuracy when the runs find the data imbalanced) with its 95% interval,
    and, against the best row, the paired difference (same seed, same images) with a verdict: better, worse,
    or no clear difference (the table's closing lines say how the intervals and verdicts are computed).
    Settings that differ between rows are listed under the table. Runs already in --out are reused (or
    resumed) only when they were trained with these settings; others are refused before anything trains.
    """
    names = [s.strip() for s in strategies.split(",") if s.strip()]

    def go() -> dict[str, Any]:
        from transferkit.compare import compare as run_compare

        return run_compare(data, names, seeds, out, **settings)

    result = guarded(go)
    from transferkit.compare import comparison_table

    typer.echo(comparison_table(result))
    typer.echo(f"written: {result['out']}/comparison.json, comparison.md")


def register(app: typer.Typer) -> None:
    app.command()(compare)
