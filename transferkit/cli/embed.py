"""``transferkit embed DATA --out FILE.npz``: export frozen-backbone embeddings for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import guarded

__all__ = ["register"]


def embed(
    data: Path = typer.Argument(..., help="Image folder: class sub-folders, or train/ + val/ (+ test/)."),
    out: Path = typer.Option(..., "--out", help="The .npz to write (embeddings, labels, paths, splits, classes)."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone name or timm:NAME."),
    weights: Optional[Path] = typer.Option(None, help="Local weights (.safetensors or state dict)."),
    input_size: Optional[int] = typer.Option(None, help="Override the backbone's input resolution."),
    batch_size: int = typer.Option(64),
    workers: int = typer.Option(-1, help="Decoding workers (-1: chosen from the cores)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    dtype: str = typer.Option("float16", help="float16 | float32"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Read and fill the embedding cache."),
    cache_dir: Optional[Path] = typer.Option(None, help="Embedding cache folder (default: the user cache dir)."),
) -> None:
    """Embed every image with a pretrained backbone and write an .npz (np.load needs no pickle)."""
    from transferkit.features.export import embed_folder

    result = guarded(lambda: embed_folder(
        data, out, backbone=backbone, weights=None if weights is None else str(weights), input_size=input_size,
        batch_size=batch_size, workers=workers, device=device, cache=cache,
        cache_dir=None if cache_dir is None else str(cache_dir), dtype=dtype, say=lambda line: typer.echo(line, err=True),
    ))
    n, dim = result["embeddings"].shape
    typer.echo(f"{n} embeddings of size {dim} ({dtype}), {len(result['classes'])} classes -> {out}")
    if len(result["skipped_paths"]):
        typer.echo(f"{len(result['skipped_paths'])} file(s) skipped (skipped_paths / skipped_reasons in the file)")


def register(app: typer.Typer) -> None:
    app.command()(embed)
