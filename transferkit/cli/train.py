"""``transferkit train``: every setting of the config dataclasses is an option (transferkit.cli.options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from transferkit.cli.common import guarded, parse_sets
from transferkit.cli.options import with_settings
from transferkit.errors import ConfigError

__all__ = ["register"]


@with_settings()
def train(
    data: Optional[Path] = typer.Argument(None, help="Image folder: class sub-folders, or split folders: train/ with val/ (valid, validation, dev) and/or test/."),
    config: Optional[Path] = typer.Option(None, help="YAML/JSON config file; flags override it."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Any config key: section.key=value (repeatable)."),
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run folder."),
    *,
    settings: dict[str, Any],
) -> None:
    """Train a classifier on an image folder and write a run folder."""

    def go() -> None:
        import transferkit.api as api

        if resume is not None:
            api.resume(resume)
            return
        if data is None and config is None:
            raise ConfigError("pass DATA (an image folder) or --config FILE with data.path")
        api.train(data, config=config, overrides=parse_sets(set_), **settings)

    guarded(go)


def register(app: typer.Typer) -> None:
    app.command()(train)
