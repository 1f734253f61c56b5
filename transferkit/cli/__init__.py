"""Command line: a thin layer over the API that turns TransferKitError into one clear line.

One module per command; each defines ``register(app: typer.Typer) -> None`` and imports what is heavy
(torch, timm, matplotlib, transferkit.api) inside the command, so building the app and ``--help`` stay
fast. Adding a command is a new module here and its name in ``COMMANDS`` (the order of ``--help``).
Shared helpers are public: ``common`` (errors, ``--set``) and ``options`` (settings as flags).
"""

from __future__ import annotations

from importlib import import_module

import typer

from transferkit.cli.common import configure

__all__ = ["app", "run", "COMMANDS"]

COMMANDS = ("train", "evaluate", "predict", "backbones", "demo", "adapt", "cache", "embed", "report", "explain",
            "recommend", "compare", "export", "serve", "audit")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Transfer learning for small image datasets.")


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")) -> None:
    configure(debug)


for _name in COMMANDS:
    import_module(f"{__name__}.{_name}").register(app)


def run() -> None:
    """Console-script entry point (``transferkit``)."""
    app()
