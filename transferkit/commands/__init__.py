"""Sub-command modules. Each module here defines ``register(app: typer.Typer) -> None``; cli.py calls them all.

Adding a command means adding a module, not editing a shared list.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

__all__ = ["register_all"]


def register_all(app: typer.Typer) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(app)
