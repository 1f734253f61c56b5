"""`transferkit audit` end to end on a tiny generated train/ val/ folder (32 px inputs): a planted copy across
the splits is leakage, a planted wrong label is suggested back, the user's files are untouched, the CSV and the
page hold what a reviewer needs, and bad input gives one line naming the input, what was expected and the fix."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from transferkit.cli import app

from conftest import make_image_folder

FAST = ["--input-size", "32", "--workers", "0", "--batch-size", "16"]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> SHA-256), to prove nothing was added, moved or changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory):
    """One audit run shared by the tests that read its outputs (embedding is the slow part)."""
    base = tmp_path_factory.mktemp("audit")
    data = base / "data"
    make_image_folder(data / "train", {"red": 12, "green": 12, "blue": 12}, seed=1)
    make_image_folder(data / "val", {"red": 4, "green": 4, "blue": 4}, seed=2)
    shutil.copyfile(data / "train" / "red" / "red_000.jpg", data / "val" / "red" / "leaked.jpg")
    (data / "train" / "green" / "green_003.jpg").rename(data / "train" / "red" / "was_green.jpg")
    (data / "train" / "blue" / "broken.jpg").write_bytes(b"not a jpeg")
    before = tree_digest(data)
    out, relabel = base / "report", base / "review.csv"
    result = CliRunner().invoke(app, ["audit", str(data), "--out", str(out), "--relabel-csv", str(relabel),
                                      "--cache-dir", str(base / "cache"), *FAST])
    return {"data": data, "before": before, "out": out, "relabel": relabel, "result": result,
            "report": json.loads((out / "audit.json").read_text()) if (out / "audit.json").exists() else None}


def test_the_audit_runs_and_summarises(audited):
    result = audited["result"]
    assert result.exit_code == 0, result.output
    assert "leakage" in result.output and "audit.html" in result.output


def test_a_copy_from_train_in_val_is_reported_as_leakage(audited):
    pairs = audited["report"]["duplicates"]["pairs"]
    leak = [p for p in pairs if {p["a"]["path"], p["b"]["path"]} == {"train/red/red_000.jpg", "val/red/leaked.jpg"}]
    assert leak and leak[0]["leakage"] and leak[0]["kind"] == "exact"
    assert pairs[0]["leakage"], "leakage pairs come first"
    assert audited["report"]["duplicates"]["leakage_pairs"] >= 1


def test_a_wrong_label_is_flagged_with_the_true_class_suggested(audited):
    issues = audited["report"]["label_issues"]["issues"]
    planted = [r for r in issues if r["path"] == "train/red/was_green.jpg"]
    assert planted and planted[0]["given"] == "red" and planted[0]["suggested"] == "green"
    assert planted[0]["rank"] <= 3


def test_unreadable_images_are_skipped_and_reported(audited):
    skipped = audited["report"]["skipped"]
    assert [s["path"] for s in skipped] == ["train/blue/broken.jpg"] and skipped[0]["reason"]
    assert audited["report"]["images"] == 36 + 12 + 1  # the leaked copy counts; the broken file does not


def test_the_users_files_are_unchanged(audited):
    assert tree_digest(audited["data"]) == audited["before"]


def test_the_relabel_csv_lists_the_flagged_images_for_review(audited):
    rows = list(csv.DictReader(audited["relabel"].open(newline="")))
    issues = audited["report"]["label_issues"]["issues"]
    assert rows and list(rows[0]) == ["path", "given", "suggested", "score"]
    assert [(Path(r["path"]).relative_to(audited["data"]).as_posix(), r["given"], r["suggested"], float(r["score"]))
            for r in rows] == [(i["path"], i["given"], i["suggested"], i["score"]) for i in issues]
    assert all(Path(r["path"]).is_file() for r in rows)


def test_the_page_is_self_contained_and_shows_the_images(audited):
    page = (audited["out"] / "audit.html").read_text()
    outside = re.findall(r'(?i)(?:src|href)="(?!data:)[^"]*"|https?://|url\(|<link|<script', page)
    assert not outside, f"the page must load nothing from outside: {outside[:3]}"
    thumbs = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(thumbs) >= 3  # the leaked pair and the flagged image at least
    assert "leaked.jpg" in page and "was_green.jpg" in page and "Balance" in page


@pytest.mark.parametrize(("args", "expected"), [
    (["{data}", "--out", "{data}/report"], r"--out .* is inside the dataset folder .*choose a path outside"),
    (["{data}", "--out", "{tmp}/r", "--relabel-csv", "{data}/fix.csv"], r"--relabel-csv .* inside the dataset"),
    (["{data}", "--out", "{tmp}/r", "--relabel-csv", "{tmp}/fix.txt"], r"must end in \.csv"),
    (["{data}", "--out", "{tmp}/r", "--near-threshold", "0.5"], r"--near-threshold 0.5 must lie in \[0.8, 1.0\]"),
    (["{tmp}/nowhere", "--out", "{tmp}/r"], r"does not exist; check the path"),
    (["{data}", "--out", "{tmp}/afile"], r"--out .* is a file; expected a folder"),
])
def test_bad_input_is_one_line_naming_input_expectation_and_fix(tmp_path: Path, args, expected):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3})
    (tmp_path / "afile").write_text("x")
    before = tree_digest(data)
    argv = [a.format(data=data, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(app, ["audit", *argv, *FAST])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and re.search(expected, error[0]), result.output
    assert tree_digest(data) == before and not (data / "report").exists()


def test_a_class_with_one_image_is_reported_not_crashed_on(tmp_path: Path):
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6, "c": 1})
    result = CliRunner().invoke(app, ["audit", str(data), "--out", str(tmp_path / "r"), *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "audit.json").read_text())
    assert "'c' (1)" in report["label_issues"]["skipped"]
    assert report["balance"]["too_small"] == [{"class": "c", "images": 1, "needed": 5}]
    assert "too small to train" in result.output


def test_the_help_shows_the_library_defaults():
    """The CLI leaves unset options to the library (heavy to import at --help time); its help must agree."""
    from transferkit.audit.duplicates import NEAR_RADIUS
    from transferkit.audit.labels import FOLDS

    text = CliRunner().invoke(app, ["audit", "--help"], terminal_width=200, env={"COLUMNS": "200"}).output
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())  # the help's wrapped lines, box drawing removed
    assert f"within {NEAR_RADIUS:g} x its median nearest-neighbour" in text and f"(default {FOLDS})" in text


def test_only_confirmed_copies_are_listed_and_the_rejected_are_counted(audited):
    """Same-colour noise images sit close in embedding space but are different images: the report lists only
    the byte-identical copy, and says how many candidates the pixel check turned down (issue 25, item 6)."""
    d = audited["report"]["duplicates"]
    assert all(p["kind"] == "exact" or (p["pixel"] >= 0.95 and p["detail"] >= 0.85) for p in d["pairs"])
    assert [p["kind"] for p in d["pairs"]] == ["exact"] and d["near_pairs"] == 0
    assert d["candidates"] > 0 and d["rejected_at_pixel_level"] == d["candidates"]
    assert f"{d['rejected_at_pixel_level']} of {d['candidates']} candidate near-copy pair(s)" in audited["result"].output


def test_flagged_images_carry_score_rank_and_the_measured_precision(audited):
    """Item 7 of issue 25: no unconfirmed finding comes as an order; each shows its score and rank among all."""
    report = audited["report"]
    n = report["images"]
    issues = report["label_issues"]["issues"]
    assert issues and all(r["images"] == n and 1 <= r["rank_among_all"] <= n for r in issues)
    assert all(r["images"] == n and 1 <= r["rank_among_all"] <= n for r in report["outliers"]["outliers"])
    line = next(line for line in audited["result"].output.splitlines() if "mislabelled" in line)
    assert "unconfirmed" in line and f"rank among all {n} images" in line
    measured = report["label_issues"]["expected_precision"]
    assert measured is None or f"{measured['precision']:.3f}" in line
    page = (audited["out"] / "audit.html").read_text()
    assert "rank among all" in page and "Unconfirmed" in page
