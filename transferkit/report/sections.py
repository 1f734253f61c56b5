"""Report sections shared by the run and evaluation reports. Each returns HTML (or a note when its input is missing)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from transferkit.metrics.classification import format_metric
from transferkit.report import plots
from transferkit.report.html import Raw, Section, esc, fmt_num, img, note, table
from transferkit.report.style import image_to_uri

__all__ = ["Evidence", "guarded", "confusion_section", "per_class_section", "roc_section", "calibration_section",
           "gallery_section", "skipped_section", "observations", "observations_html", "lowest_recall",
           "imbalance_text", "GALLERY_SIZE"]

log = logging.getLogger(__name__)
GALLERY_SIZE = 8


@dataclass
class Evidence:
    """What the metric sections need: class names, detailed metrics and per-image probabilities."""

    classes: list[str]
    details: Mapping[str, Any] | None = None  # detailed_metrics(): metrics, per_class, confusion_matrix, calibration
    predictions: list[Mapping[str, Any]] = field(default_factory=list)  # [{path, label, probs}]
    skipped: list[Mapping[str, Any]] = field(default_factory=list)  # [{path, reason}]
    model: Any = None
    spec: Any = None
    model_note: str = ""  # why there is no model (no Grad-CAM)

    @property
    def labels(self) -> np.ndarray:
        return np.array([int(r["label"]) for r in self.predictions], dtype=np.int64)

    @property
    def probs(self) -> np.ndarray:
        return np.array([r["probs"] for r in self.predictions], dtype=np.float64).reshape(len(self.predictions), -1)


def guarded(anchor: str, title: str, build: Callable[[], str]) -> Section:
    """Build one section; a failure becomes a visible note instead of losing the whole report.

    The report is written at the end of a finished training run: one figure failing (an odd metric,
    a missing image) must not turn that run into an error, so any exception is caught here, logged,
    and shown in place of the section.
    """
    try:
        return Section(anchor, title, build())
    except Exception as exc:  # noqa: BLE001 - see docstring
        log.warning("report section %r failed: %s", title, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return Section(anchor, title, note(f"This section could not be drawn: {type(exc).__name__}: {exc}", "warn"))


def _most_confused(cm: np.ndarray, classes: Sequence[str]) -> list[tuple[int, str, str]]:
    off = [(int(cm[i, j]), classes[i], classes[j]) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j]]
    return sorted(off, key=lambda t: -t[0])


def confusion_section(ev: Evidence) -> str:
    if not ev.details:
        return note("No confusion matrix: the metrics file is missing.")
    cm = np.asarray(ev.details["confusion_matrix"])
    pairs = _most_confused(cm, ev.classes)[:3]
    text = ", ".join(f"{t} → {p} ({n} image{'s' if n != 1 else ''})" for n, t, p in pairs) or "none"
    return (
        img(plots.confusion_matrices(cm, ev.classes), "confusion matrices",
            "Rows are the true class, columns the prediction; the diagonal holds the correct predictions. "
            "Left, shown first: normalised by true class (each row divided by its total), so the diagonal is each "
            "class's recall and a rare class weighs as much as a common one. Right: the counts.")
        + f"<p>Most frequent confusions (true → predicted): {esc(text)}.</p>"
    )


def lowest_recall(per_class: Mapping[str, Mapping[str, Any]] | None) -> tuple[str, Mapping[str, Any]] | None:
    """The class with the lowest recall among those with test images (the first on ties); None if none.

    A class with no test images has no recall (scikit-learn's 0 there is a convention, not a failure)."""
    present = [(name, row) for name, row in (per_class or {}).items() if row.get("support", 1)]
    return min(present, key=lambda kv: kv[1]["recall"], default=None)


def _has_intervals(per_class: Mapping[str, Mapping[str, Any]]) -> bool:
    return any("ci95" in row for row in per_class.values())


def per_class_section(ev: Evidence) -> str:
    """Precision, recall, F1 and support per class, in class order; with their 95% intervals when the
    metrics file has them (runs written before per-class intervals show the values alone, as they did)."""
    if not ev.details:
        return note("No per-class metrics: the metrics file is missing.")
    cm = np.asarray(ev.details["confusion_matrix"])
    per_class = ev.details["per_class"]
    intervals = _has_intervals(per_class)
    worst = lowest_recall(per_class) if intervals else None
    recalls = [row["recall"] for row in per_class.values() if row.get("support", 1)]
    if worst is not None and min(recalls) == max(recalls):
        worst = None  # every class has the same recall: no class to point at
    rows = []
    for i, (name, row) in enumerate(per_class.items()):
        wrong = [(int(cm[i, j]), ev.classes[j]) for j in range(len(cm)) if j != i and cm[i, j]]
        confused = max(wrong)[1] + f" ({max(wrong)[0]})" if wrong else "–"
        if intervals:
            ci = row.get("ci95") or {}
            recall = row["recall"] if row.get("support", 1) else None  # no images of the class: no recall
            cells = [format_metric(row["precision"], ci.get("precision"), 2), format_metric(recall, ci.get("recall"), 2),
                     format_metric(row["f1"], ci.get("f1"), 2)]
            label = Raw(f'{esc(name)} <span class="warn">· lowest recall</span>') if worst and name == worst[0] else name
        else:
            cells = [fmt_num(row["precision"]), fmt_num(row["recall"]), fmt_num(row["f1"])]
            label = name
        rows.append([label, *cells, fmt_num(row["support"]), confused])
    caption = ("Precision: of the images predicted as the class, the fraction that are. "
               "Recall: of the images of the class, the fraction found.")
    if intervals:
        caption += (" Each figure has its 95% interval [low, high]: Clopper-Pearson for precision and recall (exact "
                    "binomial), and for F1 the harmonic means of their limits at 97.5% each. The fewer images a "
                    "class has (support), the wider its interval. A figure without an interval is undefined "
                    "(precision of a class the model never predicts; n/a: no test images of the class).")
    return table(["class", "precision", "recall", "F1", "support", "most often mistaken for"], rows, numeric=(1, 2, 3, 4),
                 caption=caption)


def roc_section(ev: Evidence) -> str:
    if not ev.predictions:
        return note("No ROC curve: the per-image predictions are missing.")
    uri, aucs = plots.roc_curves(ev.labels, ev.probs, ev.classes)
    if uri is None:
        return note("No ROC curve: the evaluated images hold a single class.")
    text = ("The curve traces true vs false positive rate as the decision threshold moves; the area under it (AUC) "
            "is the chance that a random positive image scores higher than a random negative one (0.5 = guessing).")
    return img(uri, "ROC curves", text)


def calibration_section(ev: Evidence) -> str:
    cal = (ev.details or {}).get("calibration")
    if not cal:
        return note("No calibration data.")
    bins = cal.get("bins") or []
    n = sum(b["count"] for b in bins) or 1
    mean_conf = sum(b["confidence"] * b["count"] for b in bins) / n
    mean_acc = sum(b["accuracy"] * b["count"] for b in bins) / n
    direction = "over-confident" if mean_conf > mean_acc + 0.02 else "under-confident" if mean_conf < mean_acc - 0.02 else "well calibrated on average"
    before = (ev.details or {}).get("calibration_before")
    fitted = (" The bars are the probabilities after temperature scaling (one temperature fitted on the selection "
              "split); the points are the same test images before it.") if before else ""
    return img(plots.reliability_diagram(cal, before), "reliability diagram",
               "Each bar is the accuracy of the images whose top-class probability falls in that bin. A calibrated model "
               "sits on the diagonal; bars below it mean over-confidence, above it under-confidence. "
               "ECE is the image-weighted mean gap." + fitted) + (
        f"<p>Mean confidence {mean_conf:.3f} vs accuracy {mean_acc:.3f}: the model is {direction}.</p>"
    )


def _pick_gallery(ev: Evidence) -> tuple[list[int], list[int]]:
    """Indices of the most confident mistakes and of the least confident correct predictions."""
    probs, labels = ev.probs, ev.labels
    if len(probs) == 0:
        return [], []
    pred, conf = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(pred != labels)
    right = np.flatnonzero(pred == labels)
    mistakes = wrong[np.argsort(-conf[wrong], kind="stable")][:GALLERY_SIZE]
    unsure = right[np.argsort(conf[right], kind="stable")][:GALLERY_SIZE]
    return mistakes.tolist(), unsure.tolist()


def _explain(ev: Evidence, indices: list[int]) -> dict[int, Any]:
    if ev.model is None or not indices:
        return {}
    from transferkit.report.gradcam import explain_images

    found = [i for i in indices if Path(ev.predictions[i]["path"]).is_file()]
    items = explain_images(ev.model, ev.spec, [ev.predictions[i]["path"] for i in found])
    return dict(zip(found, items))


def _item_html(ev: Evidence, index: int, explained: Any) -> str:
    row = ev.predictions[index]
    probs = np.asarray(row["probs"])
    pred = int(probs.argmax())
    caption = (f"<b>true {esc(ev.classes[int(row['label'])])}</b> · predicted {esc(ev.classes[pred])} "
               f"({probs[pred]:.0%})<br><span class=muted>{esc(Path(row['path']).name)}</span>")
    if explained is None or explained.error or explained.image is None:
        why = explained.error if explained is not None and explained.error else (
            ev.model_note or f"image not found at {row['path']} (paths are relative to where training ran)")
        return f'<div class="item"><div class="muted">{esc(why)}</div><div class="cap">{caption}</div></div>'
    pair = (f'<img src="{image_to_uri(explained.image, "JPEG")}" alt="{esc(Path(row["path"]).name)}">'
            f'<img src="{image_to_uri(explained.overlay, "JPEG")}" alt="Grad-CAM of {esc(Path(row["path"]).name)}">')
    return f'<div class="item"><div class="pair">{pair}</div><div class="cap">{caption}</div></div>'


def gallery_section(ev: Evidence) -> str:
    if not ev.predictions:
        return note("No gallery: the per-image predictions are missing.")
    mistakes, unsure = _pick_gallery(ev)
    explained = _explain(ev, mistakes + unsure)
    intro = ("Each image is shown as the model sees it (resized and centre-cropped) next to its Grad-CAM map for the "
             "predicted class: red regions raised that class's score most. Check that it looks at the object, "
             "not at the background, a watermark or the border.")
    parts = [f"<p>{esc(intro)}</p>"]
    if ev.model is None and ev.model_note:
        parts.append(note(f"No Grad-CAM: {ev.model_note}", "warn"))
    for title, chosen, empty in (
        ("Most confident mistakes", mistakes, "No mistakes: every image was classified correctly."),
        ("Least confident correct predictions", unsure, "No correct predictions."),
    ):
        parts.append(f"<h3>{esc(title)}</h3>")
        items = "".join(_item_html(ev, i, explained.get(i)) for i in chosen)
        parts.append(f'<div class="gallery">{items}</div>' if chosen else note(empty))
    return "".join(parts)


def skipped_section(skipped: Sequence[Mapping[str, Any]]) -> str:
    if not skipped:
        return note("No files were skipped: every image was read.")
    return table(["file", "reason"], [[s.get("path"), s.get("reason")] for s in skipped],
                 caption=f"{len(skipped)} file(s) could not be used and were left out.")


def imbalance_text(balance: Mapping[str, Any] | None) -> str | None:
    """The observation for an imbalanced training split (``summary["balance"]`` written by the trainer:
    ratio = largest / smallest class count in the training split); None when balanced or not recorded."""
    if not balance or not balance.get("imbalanced"):
        return None
    ratio = balance.get("ratio")
    times = f"{ratio:.1f}×" if isinstance(ratio, (int, float)) and np.isfinite(ratio) else "many times"
    counts = ((balance.get("counts") or {}).get("train") or {})
    extremes = ""
    if len(counts) >= 2:
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        extremes = f" ({big}: {counts[big]:,}, {small}: {counts[small]:,})"
    return (f"The training data is imbalanced: the largest class has {times} as many images as the smallest{extremes}. "
            "Accuracy alone would hide missed rare classes, so balanced accuracy and per-class recall lead this report.")


def observations(ev: Evidence, rows: Sequence[Mapping[str, Any]] = (),
                 balance: Mapping[str, Any] | None = None) -> list[str]:
    """A few plain-language findings worth a reader's attention.

    ``balance`` is the run's ``summary["balance"]``; an imbalanced training split is the first finding."""
    out: list[str] = []
    imbalanced = imbalance_text(balance)
    if imbalanced:
        out.append(imbalanced)
    if ev.details:
        cm = np.asarray(ev.details["confusion_matrix"])
        worst = lowest_recall(ev.details["per_class"])
        if worst is not None:
            name, row = worst
            ci = (row.get("ci95") or {}).get("recall")
            if ci is None:
                out.append(f"Hardest class: {name} (recall {row['recall']:.2f}).")
            else:
                out.append(f"Hardest class: {name} (recall {format_metric(row['recall'], ci, 2)}, "
                           f"{row['support']:,} test image{'s' if row['support'] != 1 else ''}).")
        pairs = _most_confused(cm, ev.classes)
        if pairs:
            n, t, p = pairs[0]
            out.append(f"Most frequent confusion: {t} predicted as {p} ({n} image{'s' if n != 1 else ''}).")
        ece = (ev.details.get("calibration") or {}).get("ece")
        if ece is not None and ece > 0.1:
            out.append(f"Probabilities are poorly calibrated (ECE {ece:.2f}); read them as rankings, not as frequencies.")
    if rows:
        last = rows[-1]
        gap = (last.get("train_accuracy") or 0) - (last.get("selection_accuracy") or 0)
        if "selection_accuracy" in last and gap > 0.1:
            out.append(f"Training accuracy exceeds selection-split accuracy by {gap:.2f} in the last epoch: the model may be overfitting.")
        nll = [r.get("selection_nll") for r in rows if r.get("selection_nll") is not None]
        if len(nll) >= 3 and nll[-1] > min(nll) * 1.1:
            out.append("Selection-split loss rose after its minimum: later epochs made the model more confidently wrong.")
    return out


def observations_html(items: Sequence[str]) -> str:
    if not items:
        return ""
    return Raw("<ul class=obs>" + "".join(f"<li>{esc(t)}</li>" for t in items) + "</ul>")
