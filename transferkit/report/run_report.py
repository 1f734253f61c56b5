"""``report.html`` for a run folder and ``evaluation.html`` for an evaluation: one self-contained page each."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from transferkit.fileio import write_text
from transferkit.metrics.classification import format_metric
from transferkit.models.backbones import BackboneSpec
from transferkit.report import plots
from transferkit.report.html import Section, cards, esc, fmt_num, footer_text, img, kv_table, note, page, table
from transferkit.report.sections import (
    Evidence,
    calibration_section,
    confusion_section,
    gallery_section,
    guarded,
    lowest_recall,
    observations,
    observations_html,
    per_class_section,
    roc_section,
    skipped_section,
)

__all__ = ["build_run_report", "build_evaluation_report", "REPORT_FILE", "EVALUATION_REPORT_FILE"]

log = logging.getLogger(__name__)
REPORT_FILE = "report.html"
EVALUATION_REPORT_FILE = "evaluation.html"
METRIC_NAMES = [("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"),
                ("roc_auc", "ROC AUC"), ("nll", "NLL")]


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line must not hide the others
    return rows


def _model_and_spec(run_dir: Path, model: Any) -> tuple[Any, BackboneSpec | None, str]:
    """The model to explain (given, else loaded from the run folder) and its spec; or a note why not."""
    from transferkit.errors import TransferKitError

    if model is not None:
        return model, getattr(model, "spec", None), ""
    try:
        from transferkit.export.runfiles import load_run

        loaded = load_run(run_dir)
        return loaded.model, loaded.spec, ""
    except TransferKitError as exc:
        raw = _read_json(run_dir / "backbone.json")
        return None, BackboneSpec.from_dict(raw) if raw else None, f"the model could not be loaded ({exc})"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _metrics_table(rows: Sequence[tuple[str, Mapping[str, Any] | None]], ece: Mapping[str, Any] | None = None) -> str:
    ece = ece or {}
    headers = ["split"] + [label for _, label in METRIC_NAMES] + ["ECE"]
    body = [[name] + [fmt_num((m or {}).get(k)) for k, _ in METRIC_NAMES] + [fmt_num(ece.get(name))] for name, m in rows if m]
    return table(headers, body, numeric=tuple(range(1, len(headers))))


def _headline(metrics: Mapping[str, Any], ci95: Mapping[str, Any] | None = None,
              per_class: Mapping[str, Any] | None = None, imbalanced: bool = False) -> str:
    """The four headline figures, each with its 95% interval when the run recorded one.

    With imbalanced classes (``summary["balance"]["imbalanced"]``) balanced accuracy leads, followed by the
    lowest per-class recall (the class named, with its interval), then macro F1, accuracy and ROC AUC:
    accuracy first would let the large classes hide a rare class the model misses.
    """
    ci95 = ci95 or {}
    names = dict(METRIC_NAMES)
    if not imbalanced:
        return cards([(label, format_metric(metrics.get(key), ci95.get(key))) for key, label in METRIC_NAMES[:4]])
    items = [(names["balanced_accuracy"], format_metric(metrics.get("balanced_accuracy"), ci95.get("balanced_accuracy")))]
    worst = lowest_recall(per_class)
    if worst is not None:
        name, row = worst
        items.append((f"lowest recall: {name} (n={row.get('support', '?')})",
                      format_metric(row["recall"], (row.get("ci95") or {}).get("recall"))))
    items += [(names[key], format_metric(metrics.get(key), ci95.get(key))) for key in ("macro_f1", "accuracy", "roc_auc")]
    return cards(items)


def _summary_section(run_dir: Path, summary: Mapping[str, Any], spec: BackboneSpec | None, details: Mapping[str, Any] | None,
                     plan: Mapping[str, Any], config: Mapping[str, Any], ev: Evidence, rows: list[dict[str, Any]]) -> str:
    data = summary.get("data") or {}
    params = summary.get("params") or {}
    trainable, total = params.get("trainable"), params.get("total")
    fraction = f"{trainable:,} of {total:,} ({100 * trainable / total:.2f} %)" if trainable is not None and total else "–"
    planned = ((config.get("engine") or {}).get("epochs"))
    pairs = [
        ("backbone", f"{summary.get('backbone', '–')}" + (f" — {spec.description} (input {spec.input_size} px)" if spec else "")),
        ("strategy", f"{summary.get('strategy', '–')} (BatchNorm {plan.get('bn', '–')})"),
        ("data", f"{data.get('root', '–')} ({data.get('layout', '?')} layout)"),
        ("images", _roles_text(summary, data)),
        ("classes", ", ".join(data.get("classes") or ev.classes)),
        ("trainable parameters", fraction),
        ("epochs", f"{summary.get('epochs_run', '–')} of {planned or '–'}, kept epoch {summary.get('selected_epoch', '–')}"
                   + (" (the last: --select last)" if summary.get("select") == "last" else " (chosen on the selection split)")
                   + (" (interrupted)" if summary.get("interrupted") else "")),
        ("training time", f"{_duration(summary.get('time_s'))} on {summary.get('device', '?')}"),
        ("run folder", str(run_dir.resolve())),
    ]
    head = summary.get("head_fit") or {}
    if head.get("method") == "probe":
        pairs.insert(7, ("head", _probe_text(head)))
    metrics = (details or {}).get("metrics") or summary.get("metrics") or {}
    ece = {"test": ((details or {}).get("calibration") or {}).get("ece")}
    balance = summary.get("balance") or {}  # absent in runs written before the trainer recorded class balance
    per_class = (details or {}).get("per_class") or summary.get("per_class")
    headline = _headline(metrics, (details or {}).get("ci95") or summary.get("ci95"), per_class,
                         imbalanced=bool(balance.get("imbalanced")))
    parts = [headline, kv_table(pairs),
             _metrics_table([("test", metrics), ("selection (chose the epoch; optimistic)", summary.get("selection_metrics"))], ece),
             observations_html(observations(ev, rows, balance))]
    if summary.get("interrupted"):
        parts.insert(0, note("This run was interrupted; the report shows the best epoch reached.", "warn"))
    if head.get("method") == "probe" and head.get("converged") is False:
        parts.insert(0, note(f"The linear probe {head.get('convergence') or 'did not converge'} (L-BFGS, l2 "
                             f"{head.get('l2', 0):.3g}): its weights are the solver's last iterate.", "warn"))
    return "".join(parts)


def _probe_text(head: Mapping[str, Any]) -> str:
    """How the feature-extraction head was fitted: the probe's strength, what chose it, whether it converged."""
    by = "log loss" if str(head.get("selected_by", "")).startswith("lowest held-out log loss") else "held-out score"
    state = "converged" if head.get("converged", True) else (head.get("convergence") or "did not converge")
    text = f"linear probe (L-BFGS), l2 {head.get('l2', 0):.3g} chosen by {by} on the {head.get('selected_on', '?')}; {state}"
    folds = [c for c in head.get("grid") or [] if c.get("l2") == head.get("l2") and c.get("fold_nll")]
    if folds:
        text += " (fold log losses " + ", ".join(f"{v:.3f}" for v in folds[0]["fold_nll"]) + ")"
    return text


def _roles_text(summary: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """"N train (source), M selection (source), K test (source)" from the run's protocol record."""
    protocol = summary.get("protocol") or {}
    parts = []
    for role in ("train", "selection", "test"):
        entry = protocol.get(role) or {"n": data.get(f"n_{role}", "–"), "source": ""}
        source = f" ({entry['source']})" if entry.get("source") else ""
        parts.append(f"{entry.get('n', '–')} {role}{source}")
    return ", ".join(parts)


def _curves_section(rows: list[dict[str, Any]], best_epoch: Any, plan: Mapping[str, Any]) -> str:
    if not rows:
        return note("No learning curves: metrics.jsonl is missing or empty.")
    text = ("Training loss includes label smoothing and is measured on augmented images while the weights change, "
            "so it is not directly comparable with the selection split's NLL. The dotted line marks the epoch whose "
            "weights were kept. The test split is not shown per epoch: it is scored once, after the choice.")
    parts = [img(plots.learning_curves(rows, best_epoch if isinstance(best_epoch, int) else None), "learning curves", text)]
    chart = plots.plan_chart(plan)
    if chart:
        parts.append(img(chart, "training plan", "Which layer groups the strategy trained in each epoch, as a multiple of the head's learning rate."))
    return "".join(parts)


def _filters_section(model: Any, spec: BackboneSpec | None, config: Mapping[str, Any]) -> str:
    from transferkit.report.filters import filters_figure, first_layer_filters

    if model is None or spec is None:
        return note("No filters: the model could not be loaded.")
    first = first_layer_filters(model, spec, dict(config))
    if first is None:
        return note("This backbone has no plain RGB convolution to show.")
    change = first.relative_change
    text = ("The first layer's filters, each drawn as a small RGB patch (grey is zero weight). Pretrained "
            "networks learn edge, colour and texture detectors here; fine-tuning usually changes them only a little. ")
    if change is not None:
        text += f"Relative change of the layer's weights: {change:.2%}" + (" (the layer was frozen)." if change == 0 else ".")
    elif first.note:
        text += first.note + "."
    return img(filters_figure(first), "first-layer filters", text)


def _config_section(run_dir: Path) -> str:
    try:
        text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    except OSError:
        return note("config.yaml is missing.")
    return f"<p>The resolved configuration (defaults filled in); <code>transferkit train --config</code> accepts it as is.</p><pre>{esc(text)}</pre>"


def build_run_report(run_dir: str | Path, model: Any = None) -> Path:
    """Write ``report.html`` into a finished run folder and return its path.

    Args:
        run_dir: the run folder (summary.json, metrics.jsonl, test_metrics.json, test_predictions.json ...).
        model: the trained model already in memory (the trainer passes it); loaded from the folder if None.
    """
    run = Path(run_dir)
    summary = _read_json(run / "summary.json", {}) or {}
    details = _read_json(run / "test_metrics.json")
    config = {}
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        pass
    plan = _read_json(run / "plan.json", {}) or {}
    rows = _read_jsonl(run / "metrics.jsonl")
    classes = _read_json(run / "classes.json") or (details or {}).get("classes") or []
    model, spec, why = _model_and_spec(run, model)
    ev = Evidence(classes, details, _read_json(run / "test_predictions.json", []) or [],
                  _read_json(run / "skipped.json", summary.get("skipped_files", [])) or [], model, spec, why)
    sections = [
        guarded("summary", "Summary", lambda: _summary_section(run, summary, spec, details, plan, config, ev, rows)),
        guarded("curves", "Learning curves", lambda: _curves_section(rows, summary.get("selected_epoch"), plan)),
        *_metric_sections(ev),
        guarded("filters", "What the network learned", lambda: _filters_section(model, spec, config)),
        guarded("skipped", "Skipped files", lambda: skipped_section(ev.skipped)),
        guarded("config", "Configuration", lambda: _config_section(run)),
    ]
    title = f"{summary.get('backbone', 'model')} · {summary.get('strategy', 'run')} · {Path(str((summary.get('data') or {}).get('root', run.name))).name}"
    subtitle = ("Test-split results of the kept epoch. Everything on this page but the learning curves is computed on the "
                "test split, which chose nothing (the epoch was chosen on the selection split).")
    target = run / REPORT_FILE
    write_text(target, page(title, subtitle, sections, footer_text()))
    return target


def _metric_sections(ev: Evidence) -> list[Section]:
    return [
        guarded("confusion", "Confusion matrix", lambda: confusion_section(ev)),
        guarded("per-class", "Per-class precision, recall and F1", lambda: per_class_section(ev)),
        guarded("roc", "ROC curve", lambda: roc_section(ev)),
        guarded("calibration", "Calibration", lambda: calibration_section(ev)),
        guarded("gallery", "Mistakes and doubtful cases, with Grad-CAM", lambda: gallery_section(ev)),
    ]


def build_evaluation_report(
    out_dir: str | Path, report: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], run: Any = None
) -> Path:
    """Write ``evaluation.html`` next to ``evaluation.json`` and return its path.

    Args:
        out_dir: where evaluate() wrote evaluation.json.
        report: the dict evaluate() returns (detailed_metrics + data + skipped_files).
        predictions: one row per evaluated image: {"path", "label" (class index), "probs"}.
        run: the LoadedRun that was evaluated (for Grad-CAM and the backbone); None leaves Grad-CAM out.
    """
    out = Path(out_dir)
    classes = list(report.get("classes") or (run.classes if run is not None else []))
    model, spec = (run.model, run.spec) if run is not None else (None, None)
    ev = Evidence(classes, report, list(predictions), list(report.get("skipped_files") or []), model, spec,
                  "" if run is not None else "no model was given to the report")
    run_path = Path(run.path).resolve() if run is not None else None

    def summary() -> str:
        pairs = [("model", str(run_path) if run_path else "–"), ("data", str(report.get("data", "–"))),
                 ("images", fmt_num(report.get("n"))), ("classes", ", ".join(classes))]
        seen = (report.get("seen_check") or {}).get("summary")  # absent in evaluations made before the check
        if seen:
            pairs.insert(3, ("seen in training", seen))
        if spec is not None:
            pairs.insert(1, ("backbone", f"{spec.name} — {spec.description}"))
        ece = {"evaluation": (report.get("calibration") or {}).get("ece")}
        return (_headline(report.get("metrics") or {}, report.get("ci95")) + kv_table(pairs)
                + _metrics_table([("evaluation", report.get("metrics"))], ece) + observations_html(observations(ev)))

    sections = [guarded("summary", "Summary", summary), *_metric_sections(ev),
                guarded("skipped", "Skipped files", lambda: skipped_section(ev.skipped))]
    title = f"Evaluation of {run_path.name if run_path else 'a model'} on {Path(str(report.get('data', ''))).name or 'data'}"
    target = out / EVALUATION_REPORT_FILE
    write_text(target, page(title, "Results on the evaluation folder.", sections, footer_text()))
    return target
