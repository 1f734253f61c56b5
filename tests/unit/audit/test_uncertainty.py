"""Label-issue and outlier findings carry their uncertainty (issue 25, item 7): every flagged image has its
score and its rank among all images, and the label summary states the precision the benchmark measured (read
from benchmarks/results/audit_noise.json, never typed) instead of telling the user to relabel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from transferkit.audit.labels import find_label_issues, issue_rows
from transferkit.audit.outliers import outlier_rows, score_outliers

from test_audit_checks import blobs

RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "audit_noise.json"


def test_a_flagged_label_shows_its_score_and_its_rank_among_all_images():
    x, y = blobs()
    given = y.copy()
    given[7] = 2
    issues = find_label_issues(x, given, 3)
    rows = issue_rows(issues, given, ["a", "b", "c"], [f"p{i}" for i in range(len(y))], ["all"] * len(y))
    first = rows[0]
    assert first["path"] == "p7" and first["rank_among_all"] == 1 and first["images"] == len(y)
    below = int(np.sum(issues.scores < issues.scores[7]))
    assert first["rank_among_all"] == below + 1 and first["score"] == round(float(issues.scores[7]), 4)


def test_an_outlier_shows_its_score_and_its_rank_among_all_images():
    x, y = blobs(per_class=20)
    x[5] = x[5] + 40  # far from everything
    rows = outlier_rows(score_outliers(x, y), y, ["a", "b", "c"], [f"p{i}" for i in range(len(y))], ["all"] * len(y))
    assert rows[0]["path"] == "p5" and rows[0]["rank_among_all"] == 1 and rows[0]["images"] == len(y)
    assert all(1 <= r["rank_among_all"] <= len(y) for r in rows)


def test_the_summary_states_the_measured_precision_not_an_order():
    from transferkit.audit.evidence import label_precision, label_precision_sentence
    from transferkit.audit.run import _summary

    row = next(r for r in json.loads(RESULTS.read_text())["labels"]["rows"] if r["list"] == "cleanlab flagged")
    measured = label_precision(RESULTS)
    assert measured["right"] == row["moved_found"] and measured["flagged"] == row["length"]
    report = {"images": 60, "layout": "flat", "skipped": [],
              "duplicates": {"leakage_pairs": 0, "exact_pairs": 0, "near_pairs": 0, "rejected_at_pixel_level": 0,
                             "candidates": 0},
              "label_issues": {"skipped": None, "issues": [{}] * 3, "expected_precision": measured},
              "outliers": {"outliers": [{}]}, "balance": {"too_small": [], "imbalanced": False}}
    lines = _summary(report)
    label_line = next(line for line in lines if "mislabelled" in line)
    assert f"{row['moved_found'] / row['length']:.3f}" in label_line and "unconfirmed" in label_line
    assert "rank among all 60 images" in label_line
    outlier_line = next(line for line in lines if "outlier" in line)
    assert "unconfirmed" in outlier_line and "rank among all 60" in outlier_line
    for line in (label_line, outlier_line):
        assert not any(word in line.lower() for word in ("delete", "relabel", "remove"))
    assert "not measured for this install" in label_precision_sentence(label_precision(RESULTS.parent / "none.json"))
