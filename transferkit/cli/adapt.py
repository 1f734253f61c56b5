"""`transferkit adapt`: labelled source images + unlabelled target images -> a model for the target domain.

The options come from the config dataclasses: the shared run settings (transferkit.config) and the
adaptation settings (transferkit.adapt.config.AdaptCfg), as for ``train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from transferkit.adapt.config import ADAPT_DEFAULTS, ADAPT_SETTINGS, BN_BY_METHOD
from transferkit.cli.common import guarded, parse_sets
from transferkit.cli.options import with_settings
from transferkit.config import FLAT_SETTINGS
from transferkit.errors import ConfigError

__all__ = ["register"]

# the run settings adapt takes (the others do not apply to an adaptation run or are refused by it)
SHARED = ("backbone", "weights", "strategy", "epochs", "lr", "batch_size", "seed", "bn", "input_size", "augment",
          "workers", "device", "out")
_FLAT = {setting.key: name for name, setting in FLAT_SETTINGS.items()}
_BN = "; ".join(f"{m} {bn}" for m, bn in BN_BY_METHOD.items())
SHARED_DEFAULTS = {**{_FLAT[key]: value for key, value in ADAPT_DEFAULTS.items()}, "bn": f"by method ({_BN})"}


@with_settings(ADAPT_SETTINGS, registry=ADAPT_SETTINGS, into="adapt_settings")
@with_settings(SHARED, defaults=SHARED_DEFAULTS)
def adapt(
    source: Optional[Path] = typer.Option(None, help="Labelled source folder (class sub-folders, or train/ + val/)."),
    target: Optional[Path] = typer.Option(None, help="Target-domain images; sub-folder names (labels) are ignored."),
    target_labels_for_eval: Optional[Path] = typer.Option(None, help="Labelled target folder, used only to evaluate."),
    baseline_from: Optional[Path] = typer.Option(None, help="Reuse the source-only baseline of an earlier adapt run."),
    config: Optional[Path] = typer.Option(None, help="YAML/JSON config file with the shared sections."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="section.key=value; adapt.KEY sets an adaptation option."),
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted adapt run folder."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress; print only the final table (stdout)."),
    *,
    settings: dict[str, Any],
    adapt_settings: dict[str, Any],
) -> None:
    """Domain adaptation (DANN, Deep CORAL, AdaBN) with the source-only baseline reported next to it."""
    def go() -> dict[str, Any]:
        import transferkit.adapt as ta

        if resume is not None:
            given = [name for name, value in (("--source", source), ("--target", target), ("--config", config),
                     ("--set", set_), ("--baseline-from", baseline_from), ("--target-labels-for-eval",
                     target_labels_for_eval)) if value] + [f"--{k.replace('_', '-')}" for k in {**settings, **adapt_settings}]
            if given:
                raise ConfigError(f"--resume continues a run with its own settings (its config.yaml and adapt.yaml); "
                                  f"drop {', '.join(given)}")
            return ta.resume(resume, quiet=quiet).summary
        if source is None or target is None:
            raise ConfigError("pass --source FOLDER (labelled images) and --target FOLDER (unlabelled target "
                              "images), or --resume RUN to continue an interrupted adapt run")
        sets = parse_sets(set_)
        options = {k.partition(".")[2]: v for k, v in sets.items() if k.startswith("adapt.")}
        shared = {k: v for k, v in sets.items() if not k.startswith("adapt.")}
        method = adapt_settings.pop("method", options.pop("method", "dann"))
        return ta.adapt(source, target, method=method, target_labels_for_eval=target_labels_for_eval,
                        config=config, overrides=shared, adapt_options=options, baseline_from=baseline_from,
                        quiet=quiet, **settings, **adapt_settings).summary

    summary = guarded(go)
    if quiet:  # otherwise the run already printed the table (on stderr, with its progress)
        from transferkit.adapt.results import format_summary

        typer.echo(format_summary(summary))


def register(app: typer.Typer) -> None:
    app.command()(adapt)
