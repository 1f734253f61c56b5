"""`transferkit adapt`: labelled source images + unlabelled target images -> a model for the target domain."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from transferkit.cli.common import guarded, parse_sets

__all__ = ["register"]


def adapt(
    source: Path = typer.Option(..., help="Labelled source folder (class sub-folders, or train/ + val/)."),
    target: Path = typer.Option(..., help="Target-domain images; sub-folder names (labels) are ignored."),
    target_labels_for_eval: Optional[Path] = typer.Option(None, help="Labelled target folder, used only to evaluate."),
    method: str = typer.Option("dann", help="dann | coral | adabn | source-only"),
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/<timestamp>-adapt-<method>)."),
    backbone: Optional[str] = typer.Option(None, help="Backbone name or timm:NAME."),
    weights: Optional[Path] = typer.Option(None, help="Local weights for the backbone."),
    strategy: Optional[str] = typer.Option(None, help="Source-only strategy (default finetune)."),
    epochs: Optional[int] = typer.Option(None, help="Source-only baseline epochs (default 3)."),
    adapt_epochs: Optional[int] = typer.Option(None, help="CORAL/DANN epochs after the baseline (default 5)."),
    lr: Optional[float] = typer.Option(None, help="Head learning rate; backbone groups get lr x their scale."),
    adapt_lr: Optional[float] = typer.Option(None, help="Head learning rate of the adaptation phase (default --lr)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per domain per step."),
    seed: Optional[int] = typer.Option(None),
    bn: Optional[str] = typer.Option(None, help="BatchNorm policy: auto | frozen | train."),
    input_size: Optional[int] = typer.Option(None, help="Override the backbone's input resolution."),
    augment: Optional[str] = typer.Option(None, help="none (default for adapt) | light"),
    workers: Optional[int] = typer.Option(None, help="Data-loading workers."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    lambda_max: Optional[float] = typer.Option(None, help="DANN: cap of the ramped adaptation weight."),
    disc_lr_scale: Optional[float] = typer.Option(None, help="DANN: discriminator rate relative to the head's."),
    coral_weight: Optional[float] = typer.Option(None, help="CORAL: weight of the CORAL loss."),
    warm_start: Optional[bool] = typer.Option(None, "--warm-start/--no-warm-start", help="Adapt from the baseline (default) or from the pretrained backbone."),
    per_domain_bn: Optional[bool] = typer.Option(None, "--per-domain-bn/--shared-bn", help="Separate source/target forward passes (default)."),
    adabn: Optional[bool] = typer.Option(None, "--adabn/--no-adabn", help="After CORAL/DANN, re-estimate BatchNorm statistics on target images (default: when BatchNorm trains in train mode)."),
    projection: Optional[str] = typer.Option(None, help="tsne (default) | pca | none"),
    baseline_from: Optional[Path] = typer.Option(None, help="Reuse the source-only baseline of an earlier adapt run."),
    config: Optional[Path] = typer.Option(None, help="YAML/JSON config file with the shared sections."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="section.key=value; adapt.KEY sets an adaptation option."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress; print only the final table (stdout)."),
) -> None:
    """Domain adaptation (DANN, Deep CORAL, AdaBN) with the source-only baseline reported next to it."""
    def go() -> dict[str, Any]:
        from transferkit.adapt import adapt as run_adapt

        sets = parse_sets(set_)
        options = {k.partition(".")[2]: v for k, v in sets.items() if k.startswith("adapt.")}
        shared = {k: v for k, v in sets.items() if not k.startswith("adapt.")}
        flags = dict(lambda_max=lambda_max, disc_lr_scale=disc_lr_scale, coral_weight=coral_weight, warm_start=warm_start,
                     per_domain_bn=per_domain_bn, adabn=adabn, projection=projection, lr=adapt_lr, epochs=adapt_epochs)
        options.update({k: v for k, v in flags.items() if v is not None})
        kwargs = dict(backbone=backbone, weights=None if weights is None else str(weights), strategy=strategy,
                      epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, bn=bn, input_size=input_size,
                      augment=augment, workers=workers, device=device, out=None if out is None else str(out))
        return run_adapt(source, target, method=method, target_labels_for_eval=target_labels_for_eval, config=config,
                         overrides=shared, adapt_options=options, baseline_from=baseline_from, quiet=quiet,
                         **{k: v for k, v in kwargs.items() if v is not None}).summary

    summary = guarded(go)
    if quiet:  # otherwise the run already printed the table (on stderr, with its progress)
        from transferkit.adapt.results import format_summary

        typer.echo(format_summary(summary))


def register(app: typer.Typer) -> None:
    app.command()(adapt)
