"""What a person watching a run sees: the plan, the trainable fraction, a live bar, one line per epoch."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console

from transferkit.metrics.classification import format_metric
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["Reporter", "format_count", "metrics_line"]


_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced", "macro_f1": "macro-F1", "roc_auc": "ROC-AUC"}


def metrics_line(metrics: dict[str, Any], ci95: dict[str, Any] | None, n: int | None, lead: str = "accuracy") -> str:
    """``accuracy 0.961 [0.935, 0.984], balanced ..., n=153``: every printed figure with its 95% interval,
    ``lead`` first (balanced accuracy on imbalanced data, where accuracy hides the missed rare classes)."""
    ci95 = ci95 or {}
    keys = [lead] + [k for k in _LABELS if k != lead]
    label = lambda k: "balanced accuracy" if k == lead == "balanced_accuracy" else _LABELS[k]  # noqa: E731
    parts = [f"{label(key)} {format_metric(metrics.get(key), ci95.get(key))}" for key in keys]
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
        if getattr(trainer, "balance", None) is not None:
            self.say(trainer.balance.describe())
            self.say(trainer.balancing.describe())
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

    def epoch_line(self, record: dict[str, Any], improved: bool, monitor: str = "accuracy") -> None:
        acc, nll = record.get("selection_accuracy"), record.get("selection_nll")
        chosen = ("" if "selection_accuracy" not in record else
                  f"selection acc {acc if acc is None else f'{acc:.4f}'}  selection loss {nll or float('nan'):.4f}  ")
        if chosen and monitor != "accuracy":  # the metric that chooses the epoch is shown too
            value = record.get(f"selection_{monitor}")
            chosen += f"selection {_LABELS.get(monitor, monitor)} {value if value is None else f'{value:.4f}'}  "
        self.say(
            f"epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f}  train acc {record['train_accuracy']:.3f}  "
            f"{chosen}{record['time_s']:.1f}s" + ("  *best" if improved and chosen else "")
        )

    def summary(self, summary: dict[str, Any], run_dir: Path, details: dict[str, Any] | None = None) -> None:
        """The closing lines: the kept epoch and the test metrics with intervals; on imbalanced data led by
        balanced accuracy and followed by per-class recall/precision/F1 (lowest recall first)."""
        data = summary.get("data") or {}
        how = ("the last epoch (--select last)" if summary.get("select") == "last"
               else f"chosen on the selection split's {summary.get('monitor', 'accuracy').replace('_', ' ')}")
        self.say(f"epoch {summary['selected_epoch']} kept, {how} ({summary['time_s']:.0f}s) -> {run_dir}")
        balance = summary.get("balance") or {}
        lead = balance.get("lead_metric", "accuracy")
        self.say(f"test: {metrics_line(summary['metrics'], summary.get('ci95'), data.get('n_test'), lead)}"
                 "  (nothing was chosen on these images)")
        if balance.get("imbalanced") and details:
            from transferkit.metrics.classification import format_per_class

            self.say(f"imbalanced data ({balance.get('ratio') or 'inf'}:1 in train): per class on the test split")
            self.say(format_per_class(details))
