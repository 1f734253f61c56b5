"""``transferkit embed DATA --out FILE.npz``: export frozen-backbone embeddings for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from transferkit.cli.common import guarded
from transferkit.cli.options import with_settings

__all__ = ["register"]


@with_settings(["backbone", "weights", "input_size", "workers", "device", "cache", "cache_dir"])
def embed(
    data: Path = typer.Argument(..., help="Image folder: class sub-folders, or split folders: train/ with val/ (valid, validation, dev) and/or test/."),
    out: Path = typer.Option(..., "--out", help="The .npz to write (embeddings, labels, paths, splits, classes)."),
    batch_size: int = typer.Option(64, help="Images per forward pass (embedding only: no gradients, so larger "
                                            "than training's)."),
    dtype: str = typer.Option("float16", help="float16 | float32"),
    engine: str = typer.Option("auto", help="auto | torch | onnx. auto: ONNX Runtime on the CPU when installed "
                                            "(2.4x PyTorch's compute in benchmarks/cpu_inference.py), PyTorch on a GPU."),
    *,
    settings: dict[str, Any],
) -> None:
    """Embed every image with a pretrained backbone and write an .npz (np.load needs no pickle)."""
    from transferkit.features.warm import warm_embed

    def go() -> dict[str, Any]:
        # everything cached: answered without importing torch, torchvision or timm (3.7 s of imports by
        # `python -X importtime -c 'import transferkit.features.export'` on 2 cores)
        warm = warm_embed(data, out, dtype=dtype, engine=engine, **settings)
        if warm is not None:
            return warm
        from transferkit.features.export import embed_folder

        return embed_folder(data, out, batch_size=batch_size, dtype=dtype, engine=engine,
                            say=lambda line: typer.echo(line, err=True), **settings)

    result = guarded(go)
    import os

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 writes the file and speaks for the job
        return
    n, dim = result["embeddings"].shape
    typer.echo(f"{n} embeddings of size {dim} ({dtype}), {len(result['classes'])} classes -> {out}")
    if len(result["skipped_paths"]):
        typer.echo(f"{len(result['skipped_paths'])} file(s) skipped (skipped_paths / skipped_reasons in the file)")


def register(app: typer.Typer) -> None:
    app.command()(embed)
