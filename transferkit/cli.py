"""Command line: a thin layer over the API that turns TransferKitError into one clear line."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from transferkit.errors import TransferKitError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Transfer learning for small image datasets.")

_STATE = {"debug": False}


def _run(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; our own errors become one line on stderr and exit code 2 (1 for bugs)."""
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


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")) -> None:
    _STATE["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _parse_sets(sets: Optional[List[str]]) -> dict[str, str]:
    from transferkit.errors import ConfigError

    out = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like section.key=value (e.g. --set optim.weight_decay=0.05)")
        out[key.strip()] = value.strip()
    return out


@app.command()
def train(
    data: Optional[Path] = typer.Argument(None, help="Image folder: class sub-folders, or train/ + val/ (+ test/)."),
    backbone: Optional[str] = typer.Option(None, help="Backbone name (see `transferkit backbones`) or timm:NAME."),
    weights: Optional[Path] = typer.Option(None, help="Local weights (.safetensors or state dict) for the backbone."),
    strategy: Optional[str] = typer.Option(None, help="feature-extraction | finetune | scratch | partial | lp-ft | gradual | auto"),
    epochs: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None, help="Head learning rate; other groups get lr x their scale."),
    batch_size: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    unfreeze: Optional[int] = typer.Option(None, help="partial: number of last layer groups to train."),
    warmup_epochs: Optional[int] = typer.Option(None, help="lp-ft: head-only epochs before unfreezing."),
    unfreeze_every: Optional[int] = typer.Option(None, help="gradual: unfreeze one more group every M epochs."),
    layer_decay: Optional[float] = typer.Option(None, help="Layer-wise lr decay: group lr = decay ** distance from head."),
    group_lr_scales: Optional[str] = typer.Option(None, help="Explicit per-group multipliers, comma separated, stem first."),
    bn: Optional[str] = typer.Option(None, help="BatchNorm policy: auto | frozen | train."),
    l2sp: Optional[float] = typer.Option(None, help="L2-SP strength toward the pretrained weights."),
    backbone_lr_scale: Optional[float] = typer.Option(
        None, help="Backbone rate as a multiple of --lr when no --layer-decay/--group-lr-scales (default 0.1)."),
    input_size: Optional[int] = typer.Option(None, help="Override the backbone's input resolution."),
    mean: Optional[str] = typer.Option(
        None, help="Normalisation mean, 3 comma-separated values (default: the backbone's pretrained config)."),
    std: Optional[str] = typer.Option(
        None, help="Normalisation std, 3 comma-separated positive values (default: the backbone's)."),
    head: Optional[str] = typer.Option(None, help="linear | mlp"),
    head_fit: Optional[str] = typer.Option(
        None, help="Frozen-backbone linear head: auto (converged probe on cached embeddings) | probe | sgd (epochs)."),
    dropout: Optional[float] = typer.Option(None, help="Dropout before the head, in [0, 1)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing of the cross-entropy loss."),
    augment: Optional[str] = typer.Option(None, help="Training augmentation: none | light."),
    val_fraction: Optional[float] = typer.Option(None, help="Validation share when DATA has no val/ folder."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train/val split."),
    workers: Optional[int] = typer.Option(None, help="Data loader workers (-1: from the number of cores)."),
    patience: Optional[int] = typer.Option(None, help="Early stopping patience in epochs (0 = off)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    cache: Optional[bool] = typer.Option(None, "--cache/--no-cache", help="Cache frozen-backbone embeddings."),
    cache_dir: Optional[Path] = typer.Option(None),
    cache_views: Optional[int] = typer.Option(None, help="Augmented views per image to cache."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/<timestamp>-<strategy>)."),
    config: Optional[Path] = typer.Option(None, help="YAML/JSON config file; flags override it."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Any config key: section.key=value (repeatable)."),
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run folder."),
) -> None:
    """Train a classifier on an image folder and write a run folder."""
    given = dict(locals())  # every parameter named like a FLAT_KEYS entry is a setting
    import transferkit.api as api
    from transferkit.config import FLAT_KEYS

    def go() -> None:
        if resume is not None:
            api.resume(resume)
            return
        from transferkit.errors import ConfigError

        if data is None and config is None:
            raise ConfigError("pass DATA (an image folder) or --config FILE with data.path")
        flags = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if k in FLAT_KEYS and v is not None}
        api.train(data, config=config, overrides=_parse_sets(set_), **flags)

    _run(go)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run folder."),
    data: Path = typer.Argument(..., help="Labelled image folder (class sub-folders, or its test/ or val/ split)."),
    out: Optional[Path] = typer.Option(None, help="Where to write evaluation.json (default: the run folder)."),
) -> None:
    """Metrics, per-class precision/recall/F1 and confusion matrix of a run on labelled data."""
    import transferkit.api as api

    report = _run(lambda: api.evaluate(run, data, out=out))
    from transferkit.engine.progress import metrics_line

    typer.echo(f"{report['n']} images: {metrics_line(report['metrics'], report.get('ci95'), report['n'])} "
               "(95% intervals: stratified bootstrap)")
    width = max(len(c) for c in report["classes"])
    typer.echo(f"{'class':<{width}}  precision  recall     f1  support")
    for name, row in report["per_class"].items():
        typer.echo(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}")
    typer.echo("confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        typer.echo(f"{name:<{width}}  " + " ".join(f"{v:5d}" for v in row))
    if report["skipped_files"]:
        typer.echo(f"{len(report['skipped_files'])} file(s) skipped (see evaluation.json)")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run folder."),
    paths: List[Path] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(1, help="How many classes per image."),
    format: str = typer.Option("csv", help="csv | json"),
) -> None:
    """Predict classes for images; unreadable files get an error row."""
    import transferkit.api as api

    rows = _run(lambda: api.predict(run, paths, top_k=top_k))
    if format == "json":
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "rank", "label", "probability", "error"])
    for row in rows:
        if "error" in row:
            writer.writerow([row["path"], "", "", "", row["error"]])
            continue
        for rank, pred in enumerate(row["predictions"], 1):
            writer.writerow([row["path"], rank, pred["label"], f"{pred['probability']:.6f}", ""])


@app.command()
def backbones() -> None:
    """List the built-in backbones and the preprocessing their weights expect."""
    from transferkit.models.backbones import BACKBONES, resolve_spec

    def go() -> None:
        for name in BACKBONES.names():
            s = resolve_spec(name)
            typer.echo(f"{name}: {s.description}")
            typer.echo(f"    input {s.input_size}px, crop {s.crop_pct}, {s.interpolation}, mean {s.mean}, std {s.std}, "
                       f"features {s.feature_dim}")
            typer.echo(f"    layer groups: {', '.join(s.layer_groups)}")
        typer.echo("Any timm model: --backbone timm:NAME (online weights, or --weights FILE offline).")

    _run(go)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo data and runs."),
    quick: bool = typer.Option(False, help="Fewer epochs (a smoke test)."),
) -> None:
    """The embedded default: scikit-learn's handwritten digits, feature extraction vs fine-tuning."""
    from transferkit.demo import run_demo

    _run(lambda: run_demo(out, quick=quick))


def _register_subcommands() -> None:
    from transferkit.commands import register_all

    register_all(app)


_register_subcommands()


def run() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    run()
