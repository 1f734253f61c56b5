"""What every command shares: the --debug switch and one-line errors with exit codes."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Optional

import typer

from transferkit.config import parse_overrides
from transferkit.errors import TransferKitError

__all__ = ["configure", "guarded", "parse_sets"]

_STATE = {"debug": False}


def configure(debug: bool) -> None:
    """Apply the app-wide options (``transferkit --debug CMD``): full tracebacks and debug logging."""
    _STATE["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def guarded(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; our own errors become one line on stderr and exit code 2 (Ctrl-C: 130; bugs: a traceback)."""
    try:
        return fn()
    except TransferKitError as exc:
        if _STATE["debug"]:
            raise
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        raise typer.Exit(130) from None


def parse_sets(items: Optional[Iterable[str]]) -> dict[str, str]:
    """The repeatable ``--set section.key=value`` option as {dotted key: text}."""
    return parse_overrides(items or [])
