"""``transferkit cache info|clear``: look at or empty the embedding cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import guarded

__all__ = ["register"]

_DIR_HELP = "Embedding cache folder (default: $TRANSFERKIT_CACHE_DIR, else the user cache dir)."


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


cache_app = typer.Typer(no_args_is_help=True, help="The embedding cache of frozen-backbone features.")


@cache_app.command("info")
def info(
    cache_dir: Optional[Path] = typer.Option(None, help=_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the details as JSON."),
) -> None:
    """Where the cache is, how big, and which backbone/transform/view each part holds."""
    from transferkit.features.store import cache_info

    report = guarded(lambda: cache_info(cache_dir))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"cache: {report['root']}  ({_mb(report['bytes'])}, {len(report['namespaces'])} part(s))")
    for ns in report["namespaces"]:
        m = ns["meta"]
        what = f"{m.get('backbone', '?')} {m.get('input_size', '?')}px, {m.get('view', '?')} view"
        typer.echo(f"  {ns['key'][:12]}  {what}: {ns['rows']} embeddings in {ns['shards']} shard(s), {_mb(ns['bytes'])}")


@cache_app.command("clear")
def clear(
    cache_dir: Optional[Path] = typer.Option(None, help=_DIR_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete every cached embedding (they are recomputed when needed)."""
    from transferkit.features.store import cache_root, clear_cache

    root = cache_root(cache_dir)
    if not yes and not typer.confirm(f"delete all cached embeddings under {root}?"):
        raise typer.Exit(1)
    freed = guarded(lambda: clear_cache(cache_dir))
    typer.echo(f"cleared {root} ({_mb(freed)} freed)")


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
