"""``transferkit audit DATA``: likely label issues, duplicates and leakage, outliers and balance, from cached
embeddings. Writes audit.json and a self-contained audit.html; never touches the images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from transferkit.cli.common import guarded
from transferkit.cli.options import with_settings

__all__ = ["register"]


@with_settings(["backbone", "weights", "input_size", "workers", "device", "cache", "cache_dir", "min_per_class"])
def audit(
    data: Path = typer.Argument(..., help="Image folder: class sub-folders, or split folders (train/ with val/ and/or test/); copies "
                                          "across those splits are reported as leakage."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for audit.json and audit.html (default "
                                                            "runs/<timestamp>-audit; never inside DATA)."),
    relabel_csv: Optional[Path] = typer.Option(None, "--relabel-csv", help="Also write the suspected label issues "
                                               "as a CSV (path, given, suggested, score) to review."),
    near_threshold: Optional[float] = typer.Option(None, help="A fixed embedding cosine similarity at and above which "
                                                              "two images are candidate near copies (default: relative "
                                                              "to the data, within 0.5 x its median nearest-neighbour "
                                                              "distance); candidates are confirmed on the pixels."),
    folds: Optional[int] = typer.Option(None, help="Stratified folds of the label check's out-of-fold predictions "
                                                   "(default 5)."),
    seed: int = typer.Option(0, help="Seed of the folds."),
    batch_size: int = typer.Option(64, help="Images per forward pass while embedding."),
    *,
    settings: dict[str, Any],
) -> None:
    """Audit a dataset before training: mislabelled images, duplicates/leakage, outliers, class balance."""
    from datetime import datetime

    from transferkit.audit.run import audit_folder

    target = out if out is not None else Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-audit"
    given = {k: v for k, v in (("near_threshold", near_threshold), ("folds", folds)) if v is not None}
    result = guarded(lambda: audit_folder(data, target, seed=seed, relabel_csv=relabel_csv, batch_size=batch_size,
                                          say=lambda line: typer.echo(line, err=True), **given, **settings))
    for line in result.report["summary"]:
        typer.echo(f"- {line}")
    typer.echo(f"audit of {result.report['images']} images -> {target / 'audit.html'} (and audit.json)")
    if relabel_csv is not None:
        typer.echo(f"label suggestions to review -> {relabel_csv}")


def register(app: typer.Typer) -> None:
    app.command()(audit)
