"""``transferkit predict RUN PATHS...``: top-k classes per image as CSV or JSON; unreadable files get an error row."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, List

import typer

from transferkit.cli.common import guarded

__all__ = ["register"]


def predict(
    run: Path = typer.Argument(..., help="A run folder."),
    paths: List[Path] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(1, help="How many classes per image."),
    format: str = typer.Option("csv", help="csv | json"),
    engine: str = typer.Option("auto", help="auto | torch | onnx. auto: ONNX Runtime on the CPU when installed "
                                            "(2.4x PyTorch's compute in benchmarks/cpu_inference.py), PyTorch on a GPU."),
    tta: str = typer.Option("none", help="Test-time augmentation: none | flip (2 views) | flip-crops (ten crops: "
                                         "centre, corners and mirrors; 10x the compute). Probabilities are averaged."),
) -> None:
    """Predict classes for images; unreadable files get an error row."""

    def go() -> list[dict[str, Any]]:
        import transferkit.api as api

        return api.predict(run, paths, top_k=top_k, engine=engine, tta=tta)

    rows = guarded(go)
    if format == "json":
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "rank", "label", "probability", "error"])
    for row in rows:
        if "error" in row:
            writer.writerow([row["path"], "", "", "", row["error"]])
            continue
        for rank, pred in enumerate(row["predictions"], 1):
            writer.writerow([row["path"], rank, pred["label"], f"{pred['probability']:.6f}", ""])


def register(app: typer.Typer) -> None:
    app.command()(predict)
