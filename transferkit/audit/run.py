"""``audit_folder``: embed a dataset once (cached), run every check, write audit.json and audit.html.

The checks read embeddings and file bytes only; the user's images are never moved, renamed or rewritten,
and nothing is written inside the dataset folder (an output path there is refused).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from transferkit.audit.balance import balance_report
from transferkit.audit.duplicates import MIN_THRESHOLD, NEAR_RADIUS, find_duplicates, pair_rows
from transferkit.audit.evidence import label_precision, label_precision_sentence
from transferkit.audit.labels import FOLDS, RANK_BY, LabelIssues, find_label_issues, issue_rows
from transferkit.audit.outliers import outlier_rows, score_outliers
from transferkit.audit.report_html import render_html
from transferkit.errors import ConfigError
from transferkit.features.export import embed_folder
from transferkit.fileio import write_json, write_text

__all__ = ["FORMAT", "AuditResult", "audit_folder", "relabel_rows"]

FORMAT = 1  # bump when the meaning of a field of audit.json changes


@dataclass(frozen=True)
class AuditResult:
    """What the audit wrote, and the arrays behind it (for benchmarks and notebooks)."""

    report: dict[str, Any]  # audit.json's content
    out: Path
    paths: np.ndarray  # absolute path of every audited image, in the order of the arrays below
    labels: np.ndarray
    splits: np.ndarray
    embeddings: np.ndarray  # (n, dim) float32, as the checks saw them
    label_issues: LabelIssues | None  # None when the label check could not run (report says why)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def _check_inputs(data: Path, out: Path, relabel_csv: Path | None, near_threshold: float | None, folds: int,
                  min_per_class: int) -> None:
    """Refuse, before any work, outputs that would write into the dataset and settings that cannot work."""
    for flag, path in (("--out", out), ("--relabel-csv", relabel_csv)):
        if path is not None and data.is_dir() and _inside(path, data):
            raise ConfigError(f"{flag} {path} is inside the dataset folder {data}; the audit never writes into "
                              f"the data it checks; choose a path outside {data}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for audit.json and audit.html. "
                          "Give a folder path (it is created if missing)")
    if relabel_csv is not None and relabel_csv.suffix.lower() != ".csv":
        raise ConfigError(f"--relabel-csv {relabel_csv} must end in .csv (it is a table for a person to review)")
    if near_threshold is not None and not MIN_THRESHOLD <= near_threshold <= 1.0:
        raise ConfigError(f"--near-threshold {near_threshold} must lie in [{MIN_THRESHOLD}, 1.0] (cosine similarity; "
                          f"below {MIN_THRESHOLD} most same-class pairs are candidates). Leave it unset (candidates "
                          f"within {NEAR_RADIUS:g} x the data set's median nearest-neighbour distance) or give a value "
                          "in that range")
    if folds < 2:
        raise ConfigError(f"--folds {folds} must be at least 2 (out-of-fold predictions hold each image out once)")
    if min_per_class < 1:
        raise ConfigError(f"--min-per-class {min_per_class} must be at least 1 (images of each class in a carved "
                          "selection or test split)")


def _label_check(x: np.ndarray, y: np.ndarray, classes: Sequence[str], folds: int,
                 seed: int) -> tuple[LabelIssues | None, str | None]:
    counts = np.bincount(y, minlength=len(classes))
    small = [f"{classes[i]!r} ({n})" for i, n in enumerate(counts.tolist()) if n < 2]
    if small:
        return None, (f"class(es) {', '.join(small)} have fewer than 2 readable images, so no image of them can be "
                      "held out and still be learnt; add images to those classes")
    return find_label_issues(x, y, len(classes), folds=folds, seed=seed), None


def _label_section(issues: LabelIssues | None, why_not: str | None, y: np.ndarray, classes: Sequence[str],
                   rel: Sequence[str], splits: Sequence[str]) -> dict[str, Any]:
    """audit.json's ``label_issues``: how the check ran and the flagged images, or why it did not run."""
    if issues is None:
        return {"skipped": why_not, "issues": []}
    return {"skipped": None,
            "method": "cleanlab.filter.find_label_issues (prune_by_noise_rate) on out-of-fold probabilities of a "
                      f"logistic-regression head; ranked by cleanlab.rank.get_label_quality_scores ({RANK_BY})",
            "folds": issues.oof.folds, "seed": issues.oof.seed, "l2": issues.oof.l2,
            "out_of_fold_accuracy": round(float(np.mean(issues.suggested == y)), 4),
            "expected_precision": label_precision(),
            "issues": issue_rows(issues, y, classes, rel, splits)}


def _write_report(out: Path, report: dict[str, Any], root: str, say: Callable[[str], None] | None) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror or exc}); choose a "
                          "writable folder") from None
    write_json(out / "audit.json", report)
    write_text(out / "audit.html", render_html(report, root, say))


def _summary(report: dict[str, Any]) -> list[str]:
    """The report's findings as sentences, most urgent first (leakage invalidates held-out figures)."""
    d, li, o, b = report["duplicates"], report["label_issues"], report["outliers"], report["balance"]
    lines = []
    if d["leakage_pairs"]:
        lines.append(f"{d['leakage_pairs']} pair(s) of copies span two splits (leakage), each byte-identical or "
                     "confirmed on the pixels: delete one copy of each, or held-out figures measure memory")
    copies = d["exact_pairs"] + d["near_pairs"] - d["leakage_pairs"]
    if copies:
        where = "within one split" if report["layout"] == "split" else "(keep one copy of each before training)"
        lines.append(f"{copies} {'other ' if d['leakage_pairs'] else ''}duplicate pair(s) {where}; "
                     f"{d['exact_pairs']} of all pairs are byte-identical")
    if d["rejected_at_pixel_level"]:
        lines.append(f"{d['rejected_at_pixel_level']} of {d['candidates']} candidate near-copy pair(s) looked alike "
                     "to the embedding or in thumbnails but their pixels differ: not copies, not listed")
    if li.get("skipped"):
        lines.append(f"label check not run: {li['skipped']}")
    else:
        lines.append(f"{len(li['issues'])} image(s) may be mislabelled (given label vs out-of-fold prediction; "
                     f"unconfirmed): {label_precision_sentence(li['expected_precision'])}; each is listed with its "
                     f"score and its rank among all {report['images']} images for a person to judge")
    lines.append(f"{len(o['outliers'])} outlier(s) far from every other image (unconfirmed: how many are errors is "
                 f"not measured); each is listed with its score and its rank among all {report['images']} images "
                 "for a person to look at")
    if b["too_small"]:
        lines.append(f"{len(b['too_small'])} class(es) too small to train: " +
                     ", ".join(f"{s['class']} ({s['images']} < {s['needed']})" for s in b["too_small"]))
    if b["imbalanced"]:
        lines.append(f"imbalanced: largest/smallest class {b['ratio'] if b['ratio'] is not None else 'inf'}:1 "
                     f"(> {b['threshold']:g}:1); training balances it by default")
    if report["skipped"]:
        lines.append(f"{len(report['skipped'])} file(s) skipped (not images, or unreadable); listed in the report")
    return lines


def relabel_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The label suggestions for a person to review: path (absolute), given, suggested, score."""
    root = report["data"]
    return [{"path": os.path.join(root, r["path"]), "given": r["given"], "suggested": r["suggested"],
             "score": r["score"]} for r in report["label_issues"].get("issues", [])]


def _write_relabel_csv(path: Path, report: dict[str, Any]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "given", "suggested", "score"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(relabel_rows(report))
    write_text(path, buf.getvalue())


def audit_folder(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    near_threshold: float | None = None,
    folds: int = FOLDS,
    seed: int = 0,
    min_per_class: int = 2,
    relabel_csv: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] | None = None,
    **embed_settings: Any,
) -> AuditResult:
    """Audit an image-class folder: label issues, duplicates and leakage, outliers, balance.

    Args:
        data: class sub-folders, or train/ val/ (test/) splits (pairs across them are leakage).
        out: folder for ``audit.json`` and ``audit.html`` (created; must not lie inside ``data``).
        near_threshold: a fixed embedding cosine similarity at and above which two images are candidate near
            copies; by default candidates lie within ``NEAR_RADIUS`` x the data set's median nearest-neighbour
            distance. Either way a near copy is reported only once its pixels confirm it.
        folds, seed: the stratified k-fold of the out-of-fold predictions.
        min_per_class: ``data.min_per_class`` of the training that will follow (for "too small").
        relabel_csv: optional CSV of the flagged images (path, given, suggested, score) to review.
        say: optional callable receiving progress lines.
        **embed_settings: backbone, weights, input_size, workers, device, cache, cache_dir, batch_size
            (as ``transferkit.features.export.embed_folder``).

    Raises:
        ConfigError: an output inside ``data``, or a setting out of range. DataError: ``data`` unusable.
    """
    data_path, out_path = Path(data), Path(out)
    csv_path = Path(relabel_csv) if relabel_csv is not None else None
    _check_inputs(data_path, out_path, csv_path, near_threshold, folds, min_per_class)
    started = time.perf_counter()
    # the PyTorch engine's rows, which `train --strategy feature-extraction` caches too: an audit before or
    # after training embeds nothing twice (embed's default engine on the CPU, ONNX Runtime, keys its own rows)
    emb = embed_folder(data_path, None, dtype="float32", say=say, **{"engine": "torch", **embed_settings})
    root = os.path.abspath(data_path)
    abs_paths = np.array([os.path.abspath(p) for p in emb["paths"]], dtype=str)
    rel = [os.path.relpath(p, root) for p in abs_paths]
    x, y = emb["embeddings"], emb["labels"]
    splits, classes = [str(s) for s in emb["splits"]], [str(c) for c in emb["classes"]]
    layout = "flat" if set(splits) <= {"all"} else "split"
    if say:
        say(f"audit: {len(y)} images embedded; checking labels, duplicates, outliers")

    issues, why_not = _label_check(x, y, classes, folds, seed)
    pairs, dup_info = find_duplicates(abs_paths.tolist(), x, near_threshold)
    rows, left_out = pair_rows(pairs, rel, splits, y, classes)
    outliers = score_outliers(x, y)
    skipped = [{"path": os.path.relpath(os.path.abspath(p), root), "reason": str(r)}
               for p, r in zip(emb["skipped_paths"], emb["skipped_reasons"])]
    skipped += [{"path": os.path.relpath(s["path"], root), "reason": s["reason"]} for s in dup_info.pop("unhashed")]
    report: dict[str, Any] = {
        "format": FORMAT, "data": root, "layout": layout, "images": int(len(y)), "classes": classes,
        "backbone": {k: v for k, v in json.loads(str(emb["meta"])).items() if k != "root"},
        "label_issues": _label_section(issues, why_not, y, classes, rel, splits),
        "duplicates": {**dup_info, "leakage_pairs": sum(r["leakage"] for r in rows), "left_out": left_out,
                       "pairs": rows},
        "outliers": {"neighbours": outliers.neighbours, "fence": round(outliers.fence, 4),
                     "outliers": outlier_rows(outliers, y, classes, rel, splits)},
        "balance": balance_report(classes, y, splits, layout, min_per_class),
        "skipped": skipped,
    }
    report["summary"] = _summary(report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    _write_report(out_path, report, root, say)
    if csv_path is not None:
        _write_relabel_csv(csv_path, report)
    return AuditResult(report, out_path, abs_paths, y, np.asarray(splits), x, issues)
