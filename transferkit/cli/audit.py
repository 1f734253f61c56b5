"""``transferkit audit``: (being written)."""

from __future__ import annotations

import typer

__all__ = ["register"]


def audit() -> None:
    """(being written)"""
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command()(audit)
