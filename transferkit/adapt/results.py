"""Evaluation of the source-only baseline and the adapted model, side by side, and the run's files.

Both models are scored on the source selection split (when there is one) and the source test split (when
there is one), and on the labelled target folder when one was given; nothing here chooses anything.
:func:`score_run` scores a finished run's two models on a labelled folder later, e.g. a held-out target
test set that is read once, after every setting has been fixed on a development split.
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from transferkit.adapt.bn import adabn
from transferkit.adapt.projection import domain_separability, projection_figure
from transferkit.data.datasets import ImageDataset, make_loader
from transferkit.data.scan import Sample
from transferkit.data.transforms import eval_transform, resize_size
from transferkit.engine.loop import predict_loader
from transferkit.models.runtime import prediction_rows
from transferkit.fileio import write_json
from transferkit.metrics.classification import detailed_metrics, summary_metrics

# the runner's AdaptHook (the trainer's set-up seen through it), passed in (not imported: the runner imports
# this module, and a cycle would tie them)
Adapter = Any

BASELINE_FILE = "baseline.safetensors"  # the source-only weights beside model.safetensors

__all__ = ["evaluate_models", "write_results", "format_summary", "score_run", "PROJECTION_FILE",
           "SOURCE_ONLY_PREDICTIONS_FILE"]

PROJECTION_FILE = "projection.png"
SOURCE_ONLY_PREDICTIONS_FILE = "source_only_target_predictions.json"  # next to target_predictions.json (adapted)


def _run(adapter: "Adapter", model: torch.nn.Module, samples: Sequence[Sample], features: bool = False) -> dict[str, Any]:
    e = adapter.cfg.engine
    dataset = ImageDataset(samples, eval_transform(adapter.spec), resize_size(adapter.spec))
    loader = make_loader(dataset, e.batch_size * 2, False, 0, 0, adapter.cfg.data.workers)
    forward = model.features if features else None
    return predict_loader(model, loader, adapter.device, e.amp, e.channels_last, adapter._on_failed(dataset), forward)


def _scores(adapter: "Adapter", model: torch.nn.Module) -> dict[str, Any]:
    """Source selection / test metrics (None where the split is absent) and, when labelled target images
    were given, target metrics + predictions."""
    classes = adapter.data.classes
    out: dict[str, Any] = {}
    for key, samples in (("source_selection", adapter.data.selection), ("source_test", adapter.data.test)):
        scored = _run(adapter, model, samples) if samples else None
        out[key] = summary_metrics(scored["labels"], scored["outputs"], len(classes)) if scored else None
    if adapter.eval_samples:
        tgt = _run(adapter, model, adapter.eval_samples)
        out["target_details"] = detailed_metrics(tgt["labels"], tgt["outputs"], classes)
        out["target_predictions"] = prediction_rows([s.path for s in adapter.eval_samples], tgt["indices"],
                                                    tgt["labels"], tgt["outputs"])
    return out


def _subset(samples: Sequence[Sample], n: int, seed: int) -> list[Sample]:
    items = list(samples)
    random.Random(seed).shuffle(items)
    return items[:n]


def _with_source_statistics(adapter: "Adapter") -> torch.nn.Module:
    """A copy of the adapted model whose BatchNorm statistics are re-estimated on source training images.

    After AdaBN the saved model carries target statistics; per-domain BatchNorm means each domain is
    seen with its own, so the "after" picture shows source images through source statistics.
    """
    e = adapter.cfg.engine
    model = copy.deepcopy(adapter.model)
    samples = _subset(adapter.data.train, 2000, e.seed)
    dataset = ImageDataset(samples, eval_transform(adapter.spec), resize_size(adapter.spec))
    adabn(model, make_loader(dataset, e.batch_size * 2, False, 0, 0, adapter.cfg.data.workers), adapter.device, e.channels_last)
    return model


def _projection(adapter: "Adapter", baseline: torch.nn.Module) -> dict[str, Any]:
    """Features of source (validation) and target images before/after adaptation -> PNG + separability."""
    acfg, seed = adapter.acfg, adapter.cfg.engine.seed
    held_out = adapter.data.selection or adapter.data.test or adapter.data.train  # source images not trained on, if any
    src = _subset(held_out, acfg.projection_points, seed)
    tgt = _subset(adapter.eval_samples or adapter.target, acfg.projection_points, seed)
    before = (_run(adapter, baseline, src, True)["outputs"], _run(adapter, baseline, tgt, True)["outputs"])
    source_model = _with_source_statistics(adapter) if adapter.adabn_images else adapter.model
    after = (_run(adapter, source_model, src, True)["outputs"], _run(adapter, adapter.model, tgt, True)["outputs"])
    gap = {"before": domain_separability(*before, seed=seed), "after": domain_separability(*after, seed=seed)}
    info: dict[str, Any] = {"method": acfg.projection, "points_per_domain": [len(before[0]), len(before[1])],
                            "domain_separability": gap}
    if acfg.projection != "none" and min(len(before[0]), len(before[1])) >= 2:
        probe = {k: "" if v is None else f"\nsource-vs-target linear probe accuracy {v:.2f}" for k, v in gap.items()}
        panels = [(f"before: source-only baseline{probe['before']}", *before), (f"after: {acfg.method}{probe['after']}", *after)]
        projection_figure(panels, adapter.run_dir / PROJECTION_FILE, acfg.projection, seed)
        info["file"] = PROJECTION_FILE
    return info


def evaluate_models(adapter: "Adapter", baseline_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Scores of both models (target labels used here and only here) and the projection."""
    baseline = copy.deepcopy(adapter.model)
    baseline.load_state_dict(baseline_state)
    return {
        "source_only": _scores(adapter, baseline),
        "adapted": _scores(adapter, adapter.model),
        "projection": _projection(adapter, baseline),
    }


def _side(result: dict[str, Any]) -> dict[str, Any]:
    side: dict[str, Any] = {"source_selection": result["source_selection"], "source_test": result["source_test"]}
    details = result.get("target_details")
    if details:
        side["target"] = details["metrics"]
        side["target_per_class_accuracy"] = {c: row["recall"] for c, row in details["per_class"].items()}
    return side


def write_results(adapter: "Adapter", results: dict[str, Any], trainable: int, total: int, seconds: float) -> dict[str, Any]:
    """summary.json (+ target metrics and both models' target predictions) for the run folder; returns the summary."""
    run, a, acfg = adapter.run_dir, adapter, adapter.acfg
    base, adapted = _side(results["source_only"]), _side(results["adapted"])
    gain = None
    if "target" in base and "target" in adapted:
        gain = adapted["target"]["accuracy"] - base["target"]["accuracy"]
        write_json(run / "target_metrics.json", {"source_only": results["source_only"]["target_details"],
                                                 "adapted": results["adapted"]["target_details"]})
        write_json(run / "target_predictions.json", results["adapted"]["target_predictions"])
        write_json(run / SOURCE_ONLY_PREDICTIONS_FILE, results["source_only"]["target_predictions"])
    projection = results["projection"]
    summary = {
        "command": "adapt",
        "method": acfg.method,
        "backbone": a.spec.name,
        "strategy": a.run_plan.strategy,
        "bn": a.run_plan.bn,
        # as in train's summary: the saved model on the source test split (reported only; None without one)
        "metrics": adapted["source_test"],
        "metrics_split": "test",  # the source's test split (the target's figures are under source_only / adapted)
        "protocol": {**a.data.protocol(),
                     "target": {"role": "unlabelled images adapted to (their labels are never read)",
                                "source": acfg.target, "n": len(a.target)},
                     "target_eval": {"role": "labelled target images, only reported",
                                     "source": acfg.target_eval or "", "n": len(a.eval_samples)}},
        # by default adapt trains a fixed budget and keeps the last epoch of each phase: the selection split (if
        # any) is scored per epoch in metrics.jsonl, never used to choose; adapt.select best chooses the
        # adaptation epoch on it
        "select": acfg.select,
        "selected_epoch": a.selected_epoch,
        # the source's class balance and what the trainer did about it (weights in both phases' loss)
        "monitor": a.trainer.balancing.monitor,
        "balance": a.trainer.balance.to_dict(a.trainer.balancing.lead_metric),
        "balancing": a.trainer.balancing.to_dict(),
        "source_only": base,
        "adapted": adapted,
        "target_accuracy_gain": gain,
        "figures": {"projection": projection["file"]} if "file" in projection else {},
        "projection": projection,
        "adabn_images": a.adabn_images,  # target images the saved BatchNorm statistics come from (0: none)
        "params": {"trainable": trainable, "total": total},
        "epochs": {"source_only": a.cfg.engine.epochs, "adaptation": acfg.epochs if acfg.method in ("coral", "dann") else 0},
        "epochs_run": a.epoch,
        "baseline_from": None if a.baseline_from is None else str(a.baseline_from),
        "models": {"adapted": "model.safetensors", "source_only": "baseline.safetensors"},
        "time_s": round(seconds, 2),
        "data": {"root": a.data.root, "layout": a.data.layout, "classes": a.data.classes, "n_train": len(a.data.train),
                 "n_selection": len(a.data.selection), "n_test": len(a.data.test), "target": acfg.target, "n_target": len(a.target),
                 "target_eval": acfg.target_eval, "n_target_eval": len(a.eval_samples)},
        "skipped_files": [{"path": p, "reason": r} for p, r in sorted(a.skipped.items())],
        "device": str(a.device),
    }
    write_json(run / "skipped.json", summary["skipped_files"])
    write_json(run / "summary.json", summary)
    a.reporter.say(format_summary(summary))
    a.reporter.say(f"done in {seconds:.0f}s -> {run}")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Source-only vs adapted, overall and per class (target accuracy when labels were given)."""
    base, adapted, method = summary["source_only"], summary["adapted"], summary["method"]
    lines = [f"{'':<24}{'source-only':>12}{method:>12}"]
    for key, label in (("source_selection", "source selection acc."), ("source_test", "source test accuracy")):
        if base.get(key) and adapted.get(key):
            lines.append(f"{label:<24}{base[key]['accuracy']:>12.4f}{adapted[key]['accuracy']:>12.4f}")
    if "target" in adapted:
        lines.append(f"{'target accuracy':<24}{base['target']['accuracy']:>12.4f}{adapted['target']['accuracy']:>12.4f}")
        for name, acc in adapted["target_per_class_accuracy"].items():
            lines.append(f"{'  ' + name:<24}{base['target_per_class_accuracy'][name]:>12.4f}{acc:>12.4f}")
    else:
        lines.append("target accuracy: not measured (pass --target-labels-for-eval DIR)")
    gap = summary["projection"]["domain_separability"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines.append(f"domain separability (linear probe, 0.5 = none): {fmt(gap['before'])} -> {fmt(gap['after'])}")
    return "\n".join(lines)


def score_run(run_dir: str | os.PathLike, folder: str | os.PathLike, *, batch_size: int = 128, workers: int = 0,
              device: str = "cpu") -> dict[str, Any]:
    """Both models of a finished adapt run (source-only baseline and adapted) on a labelled folder.

    ``folder`` holds class sub-folders named like the run's classes (as ``--target-labels-for-eval``).
    Returns ``{"paths", "labels", "classes", "source_only": {"probs", "metrics"}, "adapted": {...}}`` with
    the images in one order for both models (so paired comparisons line up). The saved models carry their
    final BatchNorm statistics (AdaBN's, where it ran), so this reproduces the run's own evaluation.
    """
    from transferkit.adapt.data import labelled_eval_samples
    from transferkit.export.runfiles import MODEL_FILE, load_run

    run = Path(run_dir)
    out: dict[str, Any] = {}
    samples: list[Sample] = []
    for side, weights in (("source_only", BASELINE_FILE), ("adapted", MODEL_FILE)):
        loaded = load_run(run, weights_name=weights, device=device)
        if not samples:
            samples, _ = labelled_eval_samples(folder, loaded.classes, resize_size(loaded.spec))
            out.update(classes=list(loaded.classes), paths=[s.path for s in samples])
        dataset = ImageDataset(samples, eval_transform(loaded.spec), resize_size(loaded.spec))
        scored = predict_loader(loaded.model, make_loader(dataset, batch_size, False, 0, 0, workers), torch.device(device),
                                False, False)
        order = np.argsort(np.asarray(scored["indices"]))
        labels, probs = np.asarray(scored["labels"])[order], np.asarray(scored["outputs"])[order]
        if len(labels) != len(samples):
            raise ValueError(f"{folder}: {len(samples) - len(labels)} image(s) could not be read; score_run needs every image")
        out["labels"] = labels.tolist()
        out[side] = {"probs": probs, "metrics": summary_metrics(labels, probs, len(out["classes"]))}
    return out
