"""The run's summary.json: what was trained, on which data roles, what was chosen, and the test figures."""

from __future__ import annotations

from typing import Any

__all__ = ["run_summary"]


def run_summary(trainer: Any, details: dict[str, Any], selection_metrics: dict[str, Any] | None,
                adjustment: dict[str, Any] | None, params: dict[str, int], elapsed_s: float,
                interrupted: bool) -> dict[str, Any]:
    """summary.json of a finished :class:`~transferkit.engine.trainer.Trainer` run.

    ``details``: detailed_metrics of the test split (read once, after everything was chosen);
    ``selection_metrics``: the selection split's (None under ``--select last``); ``adjustment``: the logit
    adjustment's record (None when off).
    """
    return {
        "backbone": trainer.spec.name,
        "strategy": trainer.plan.strategy,
        "metrics": details["metrics"],  # the test split's: nothing was chosen on it
        "metrics_split": "test",
        "ci95": details["ci95"],
        "per_class": details["per_class"],  # test split: precision/recall/F1, support and 95% intervals
        "selection_metrics": selection_metrics,
        "select": trainer.cfg.engine.select,
        "selected_epoch": trainer.state.best_epoch + 1,
        "monitor": trainer.balancing.monitor,
        "balance": trainer.balance.to_dict(trainer.balancing.lead_metric),
        "balancing": trainer.balancing.to_dict(),
        "logit_adjustment": adjustment,
        "protocol": trainer.data.protocol(),
        "params": params,
        "epochs_run": trainer.state.epoch,
        "head_fit": trainer.state.head_fit or {"method": "sgd"},
        "time_s": round(elapsed_s, 2),
        "skipped_files": [{"path": p, "reason": r} for p, r in sorted(trainer.state.skipped.items())],
        "interrupted": interrupted,
        "data": {"root": trainer.data.root, "layout": trainer.data.layout, "classes": trainer.data.classes,
                 "n_train": len(trainer.data.train), "n_selection": len(trainer.data.selection),
                 "n_test": len(trainer.data.test)},
        "device": str(trainer.device),
        "world_size": trainer.dist.world_size,
    }
