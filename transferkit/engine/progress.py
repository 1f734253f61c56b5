"""What a person watching a run sees: the plan, the trainable fraction, a live bar, one line per epoch."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console

from transferkit.metrics.classification import format_metric
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["Reporter", "format_count", "metrics_line"]


def metrics_line(metrics: dict[str, Any], ci95: dict[str, Any] | None, n: int | None) -> str:
    """``accuracy 0.961 [0.935, 0.984], balanced ..., n=153``: every printed figure with its 95% interval."""
    ci95 = ci95 or {}
    parts = [f"{label} {format_metric(metrics.get(key), ci95.get(key))}" for key, label in
             (("accuracy", "accuracy"), ("balanced_accuracy", "balanced"), ("macro_f1", "macro-F1"), ("roc_auc", "ROC-AUC"))]
    return ", ".join(parts) + (f", n={n}" if n is not None else "")


def format_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    return f"{n:,}"


class Reporter:
    """Console output for a run; silent when ``quiet`` (tests, API callers who ask for it)."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def header(self, trainer: Any, trainable: int, total: int) -> None:
        data = trainer.data
        self.say(
            f"data: {len(data.classes)} classes; {len(data.train)} train ({data.sources.get('train', '')}) / "
            + (f"{len(data.selection)} selection ({data.sources.get('selection', '')}) / " if data.selection
               else "no selection split (--select last) / ")
            + f"{len(data.test)} test ({data.sources.get('test', '')})"
            + (f", {len(data.skipped)} file(s) skipped (listed in skipped.json)" if data.skipped else "")
        )
        self.say(f"backbone: {trainer.spec.name} ({trainer.spec.input_size}px) on {trainer.device}"
                 + (", SyncBatchNorm across processes" if getattr(trainer, "sync_bn", False) else ""))
        if getattr(trainer, "cpu", None) is not None:
            self.say(trainer.cpu.describe())
        self.say(trainer.plan.describe())
        self.say(f"training {format_count(trainable)} of {format_count(total)} parameters ({100 * trainable / total:.2f}%)")
        self.say(f"run folder: {trainer.run_dir}")

    @contextlib.contextmanager
    def epoch_bar(self, epoch: int, epochs: int, batches: int) -> Iterator[Callable[[float], None]]:
        if self.quiet or not self.console.is_terminal:
            yield lambda loss: None
            return
        columns = (TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task("train", total=batches, loss=float("nan"))
            yield lambda loss: progress.update(task, advance=1, loss=loss)

    def epoch_line(self, record: dict[str, Any], improved: bool) -> None:
        acc, nll = record.get("selection_accuracy"), record.get("selection_nll")
        chosen = ("" if "selection_accuracy" not in record else
                  f"selection acc {acc if acc is None else f'{acc:.4f}'}  selection loss {nll or float('nan'):.4f}  ")
        self.say(
            f"epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f}  train acc {record['train_accuracy']:.3f}  "
            f"{chosen}{record['time_s']:.1f}s" + ("  *best" if improved and chosen else "")
        )

    def summary(self, summary: dict[str, Any], run_dir: Path) -> None:
        data = summary.get("data") or {}
        how = ("the last epoch (--select last)" if summary.get("select") == "last"
               else "chosen on the selection split")
        self.say(f"epoch {summary['selected_epoch']} kept, {how} ({summary['time_s']:.0f}s) -> {run_dir}")
        self.say(f"test: {metrics_line(summary['metrics'], summary.get('ci95'), data.get('n_test'))}"
                 "  (nothing was chosen on these images)")
