"""``transferkit backbones``: the built-in backbones and the preprocessing their weights expect."""

from __future__ import annotations

import typer

from transferkit.cli.common import guarded

__all__ = ["register"]


def backbones() -> None:
    """List the built-in backbones and the preprocessing their weights expect."""

    def go() -> None:
        from transferkit.models.backbones import BACKBONES, resolve_spec

        for name in BACKBONES.names():
            s = resolve_spec(name)
            typer.echo(f"{name}: {s.description}")
            typer.echo(f"    input {s.input_size}px, crop {s.crop_pct}, {s.interpolation}, mean {s.mean}, std {s.std}, "
                       f"features {s.feature_dim}")
            typer.echo(f"    layer groups: {', '.join(s.layer_groups)}")
        typer.echo("Any timm model: --backbone timm:NAME (online weights, or --weights FILE offline).")

    guarded(go)


def register(app: typer.Typer) -> None:
    app.command()(backbones)
