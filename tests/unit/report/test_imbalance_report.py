"""Rare classes in the reports: balanced accuracy and per-class recall lead when the training data is
imbalanced, per-class figures carry their intervals, the normalised confusion matrix comes first."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from transferkit.metrics.classification import detailed_metrics, format_metric
from transferkit.report import build_evaluation_report, build_run_report, plots

from report_pages import RUN_SECTIONS, parse

CLASSES = ["common", "middle", "rare"]
BALANCE = {"ratio": 12.0, "threshold": 3.0, "imbalanced": True,
           "counts": {"train": {"common": 240, "middle": 120, "rare": 20}, "selection": {"common": 60, "middle": 30, "rare": 5},
                      "test": {"common": 60, "middle": 30, "rare": 10}},
           "lead_metric": "balanced_accuracy"}


def _test_split() -> tuple[np.ndarray, np.ndarray]:
    """60/30/10 test images; the rare class is found 3 times in 10, the others nearly always."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60, int), np.ones(30, int), np.full(10, 2)]
    pred = y.copy()
    pred[[90, 91, 92, 93, 94, 95, 96]] = 0  # 7 of the 10 rare images called common
    pred[[0, 1, 60]] = [1, 1, 0]
    probs = rng.random((len(y), 3))
    probs[np.arange(len(y)), pred] += 2.0
    return y, probs / probs.sum(axis=1, keepdims=True)


def fake_run(root: Path, balance: dict[str, Any] | None = None, intervals: bool = True) -> Path:
    """A finished run folder as the trainer writes it, without training (and without model files)."""
    run = root / "run"
    run.mkdir(parents=True)
    y, probs = _test_split()
    details = detailed_metrics(y, probs, CLASSES)
    if not intervals:  # as written before per-class intervals existed
        for row in details["per_class"].values():
            del row["ci95"]
    summary: dict[str, Any] = {
        "backbone": "toy", "strategy": "finetune", "metrics": details["metrics"], "metrics_split": "test",
        "ci95": details["ci95"], "selection_metrics": details["metrics"], "select": "best", "selected_epoch": 2,
        "params": {"trainable": 10, "total": 100}, "epochs_run": 2, "time_s": 3.0, "skipped_files": [],
        "interrupted": False, "device": "cpu",
        "data": {"root": str(root / "data"), "layout": "folders", "classes": CLASSES, "n_train": 380, "n_selection": 95, "n_test": 100},
    }
    if balance is not None:
        summary["balance"] = balance
    rows = [{"epoch": e, "train_loss": 1.0 / e, "selection_nll": 0.9 / e, "train_accuracy": 0.7 + 0.1 * e,
             "selection_accuracy": 0.7 + 0.1 * e, "lr": {"head": 0.01}} for e in (1, 2)]
    predictions = [{"path": str(root / "data" / f"{i}.jpg"), "label": int(label), "probs": p.tolist()}
                   for i, (label, p) in enumerate(zip(y, probs))]
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "test_metrics.json").write_text(json.dumps(details))
    (run / "test_predictions.json").write_text(json.dumps(predictions))
    (run / "classes.json").write_text(json.dumps(CLASSES))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def section(text: str, anchor: str) -> str:
    found = re.search(rf'<section id="{anchor}">(.*?)</section>', text, re.S)
    assert found, anchor
    return found.group(1)


def cards(text: str) -> list[tuple[str, str]]:
    """(label, value) of the headline cards, unescaped."""
    pairs = re.findall(r'<div class="card"><div class="value">(.*?)</div><div class="label">(.*?)</div></div>', text)
    return [(html.unescape(label), html.unescape(value)) for value, label in pairs]


@pytest.fixture(scope="module")
def imbalanced_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = fake_run(tmp_path_factory.mktemp("imbalanced"), BALANCE)
    return run, build_run_report(run).read_text(encoding="utf-8")


def test_imbalanced_run_leads_with_balanced_accuracy_and_the_lowest_recall(imbalanced_report: tuple[Path, str]):
    run, text = imbalanced_report
    assert parse(run / "report.html").ids == RUN_SECTIONS
    summary = json.loads((run / "summary.json").read_text())
    details = json.loads((run / "test_metrics.json").read_text())
    headline = cards(section(text, "summary"))
    assert headline[0] == ("balanced accuracy", format_metric(summary["metrics"]["balanced_accuracy"],
                                                              summary["ci95"]["balanced_accuracy"]))
    rare = details["per_class"]["rare"]
    assert rare["recall"] == pytest.approx(0.3)
    assert headline[1] == ("lowest recall: rare (n=10)", format_metric(rare["recall"], rare["ci95"]["recall"]))
    assert [label for label, _ in headline[2:]] == ["macro F1", "accuracy", "ROC AUC"]


def test_imbalanced_run_says_why_in_an_observation(imbalanced_report: tuple[Path, str]):
    observations = re.findall(r"<li>(.*?)</li>", section(imbalanced_report[1], "summary"))
    first = html.unescape(observations[0])
    assert "imbalanced" in first and "12.0×" in first and "common: 240, rare: 20" in first
    assert "Accuracy alone would hide missed rare classes" in first
    hardest = next(html.unescape(o) for o in observations if o.startswith("Hardest class"))
    assert re.fullmatch(r"Hardest class: rare \(recall 0\.30 \[\d\.\d\d, \d\.\d\d\], 10 test images\)\.", hardest)


def test_per_class_table_shows_intervals_and_support_in_class_order(imbalanced_report: tuple[Path, str]):
    run, text = imbalanced_report
    part = section(text, "per-class")
    rows = re.findall(r"<tr>(.*?)</tr>", part.split("<tbody>")[1])
    names = [re.sub(r"<.*?>", "", re.findall(r"<td[^>]*>(.*?)</td>", r)[0]) for r in rows]
    assert [n.split(" ·")[0] for n in names] == CLASSES  # class order kept, not sorted by support
    rare = json.loads((run / "test_metrics.json").read_text())["per_class"]["rare"]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[2])
    assert cells[2] == format_metric(rare["recall"], rare["ci95"]["recall"], 2) and cells[4] == "10"
    assert "lowest recall" in rows[2] and "lowest recall" not in rows[0] + rows[1]
    assert "Clopper-Pearson" in part


def test_confusion_section_shows_the_normalised_matrix_first(imbalanced_report: tuple[Path, str]):
    caption = html.unescape(section(imbalanced_report[1], "confusion"))
    assert "Left, shown first: normalised by true class" in caption and "Right: the counts" in caption


def test_confusion_figure_draws_the_normalised_matrix_on_the_left(monkeypatch: pytest.MonkeyPatch):
    drawn: list[np.ndarray] = []
    real = plots.skm.ConfusionMatrixDisplay

    class Recording(real):
        def __init__(self, values, **kwargs):
            drawn.append(np.asarray(values))
            super().__init__(values, **kwargs)

    monkeypatch.setattr(plots.skm, "ConfusionMatrixDisplay", Recording)
    plots.confusion_matrices([[8, 2], [1, 1]], ["a", "b"])
    np.testing.assert_allclose(drawn[0], [[0.8, 0.2], [0.5, 0.5]])
    np.testing.assert_array_equal(drawn[1], [[8, 2], [1, 1]])


def test_runs_without_balance_render_as_before(tmp_path: Path):
    run = fake_run(tmp_path, balance=None, intervals=False)  # an older run: neither balance nor per-class intervals
    text = build_run_report(run).read_text(encoding="utf-8")
    summary = json.loads((run / "summary.json").read_text())
    headline = cards(section(text, "summary"))
    assert [label for label, _ in headline] == ["accuracy", "balanced accuracy", "macro F1", "ROC AUC"]
    assert headline[0][1] == format_metric(summary["metrics"]["accuracy"], summary["ci95"]["accuracy"])
    assert "imbalanced" not in text and "lowest recall" not in text
    assert "Hardest class: rare (recall 0.30)." in text  # the old wording
    per_class = section(text, "per-class")
    assert "<td class=num>0.300</td>" in per_class and "[" not in per_class.split("<tbody>")[1]
    balanced = fake_run(tmp_path / "balanced", {**BALANCE, "ratio": 1.5, "imbalanced": False, "lead_metric": "accuracy"})
    again = build_run_report(balanced).read_text(encoding="utf-8")
    assert [label for label, _ in cards(section(again, "summary"))] == ["accuracy", "balanced accuracy", "macro F1", "ROC AUC"]
    assert "imbalanced" not in again


def test_evaluation_report_takes_per_class_intervals_from_the_details(tmp_path: Path):
    y, probs = _test_split()
    details = detailed_metrics(y, probs, CLASSES)
    details.update(data="some/folder", skipped_files=[])
    rows = [{"path": f"{i}.jpg", "label": int(label), "probs": p.tolist()} for i, (label, p) in enumerate(zip(y, probs))]
    text = build_evaluation_report(tmp_path, details, rows).read_text(encoding="utf-8")
    rare = details["per_class"]["rare"]
    assert format_metric(rare["recall"], rare["ci95"]["recall"], 2) in section(text, "per-class")
    headline = cards(section(text, "summary"))
    assert headline[0] == ("accuracy", format_metric(details["metrics"]["accuracy"], details["ci95"]["accuracy"]))
    assert "could not be drawn" not in text
