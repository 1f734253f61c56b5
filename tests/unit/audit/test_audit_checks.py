"""The audit's checks on synthetic embeddings (no images, no backbone): label issues, duplicates, outliers,
balance. What matters: a planted error ranks first, leakage is told from plain duplicates, the blocked
similarity search finds exactly what the full matrix does, and "too small" means what training refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transferkit.audit.balance import balance_report, images_needed
from transferkit.audit.duplicates import (Pair, exact_duplicate_pairs, find_duplicates, is_leakage,
                                          near_duplicate_pairs, pair_rows)
from transferkit.audit.labels import find_label_issues, out_of_fold_probs
from transferkit.audit.outliers import score_outliers


def blobs(per_class: int = 30, classes: int = 3, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian clusters, one per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim)) * 4
    y = np.repeat(np.arange(classes), per_class)
    return centres[y] + rng.normal(0, 0.5, (len(y), dim)), y


def test_a_planted_mislabelled_sample_ranks_first_with_its_true_class_suggested():
    x, y = blobs()
    given = y.copy()
    given[7] = 2  # a class-0 point labelled 2
    issues = find_label_issues(x, given, 3)
    assert issues.ranking()[0] == 7
    assert 7 in issues.flagged.tolist() and issues.flagged[0] == 7
    assert issues.suggested[7] == 0
    assert len(issues.flagged) <= 3, "a separable problem with one error should flag (almost) nothing else"


def test_out_of_fold_probabilities_never_come_from_a_head_that_saw_the_label():
    """A point whose label no other point supports gets a low probability for it: it was held out."""
    x, y = blobs(per_class=20)
    given = y.copy()
    given[3] = 1
    oof = out_of_fold_probs(x, given, 3)
    assert oof.probs[3, 1] < 0.2 and oof.probs.shape == (60, 3)
    np.testing.assert_allclose(oof.probs.sum(axis=1), 1.0, atol=1e-9)
    assert oof.l2 in oof.log_loss and oof.log_loss[oof.l2] == min(oof.log_loss.values())


def test_folds_shrink_to_the_smallest_class_and_a_single_image_class_is_refused():
    x, y = blobs(per_class=10)
    y3 = np.concatenate([y[:20], y[20:23]])  # class 2 has 3 images
    assert out_of_fold_probs(x[:23], y3, 3).folds == 3
    with pytest.raises(ValueError, match="at least 2 images"):
        out_of_fold_probs(x[:21], y[:21], 3)


def test_a_feature_dead_in_training_does_not_blow_up_a_held_out_probability():
    """Features that are (nearly) always zero get a floor on their std, so one image where they are not
    does not get a z-score in the thousands (seen with 64 px embeddings)."""
    x, y = blobs(per_class=20, dim=8)
    x = np.hstack([x, np.zeros((len(x), 4))])
    x[5, 8:] = 0.5  # one image of class 0 lights up the dead features
    oof = out_of_fold_probs(x, y, 3)
    assert oof.probs[5, 0] > 0.5


def test_blocked_similarity_search_equals_the_full_matrix():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (50, 8))
    x[30] = x[4] * 3 + 1e-3  # same direction: cosine ~1
    x[41] = x[4] + rng.normal(0, 0.05, 8)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = xn @ xn.T
    expected = {(i, j) for i in range(50) for j in range(i + 1, 50) if full[i, j] >= 0.9}
    found = near_duplicate_pairs(x, 0.9, block_rows=7)
    assert {(i, j) for i, j, _ in found} == expected and {(4, 30), (4, 41)} <= expected
    assert [s for *_, s in found] == sorted((s for *_, s in found), reverse=True)


def test_exact_duplicates_are_found_by_content_and_reported_once(tmp_path: Path):
    files = []
    for name, content in (("a.jpg", b"one"), ("b.jpg", b"two"), ("c.jpg", b"one"), ("d.jpg", b"one")):
        (tmp_path / name).write_bytes(content)
        files.append(str(tmp_path / name))
    pairs, errors = exact_duplicate_pairs(files + [str(tmp_path / "missing.jpg")])
    assert pairs == [(0, 2), (0, 3), (2, 3)] and list(errors) == [4]
    embeddings = np.eye(4)
    embeddings[[2, 3]] = embeddings[0]  # exact copies also have identical embeddings
    found, info = find_duplicates(files, embeddings)
    assert [(p.first, p.second, p.kind) for p in found] == [(0, 2, "exact"), (0, 3, "exact"), (2, 3, "exact")]
    assert info["exact_pairs"] == 3 and info["near_pairs"] == 0


def test_leakage_is_a_pair_across_two_predefined_splits_and_is_listed_first():
    assert is_leakage("train", "val") and is_leakage("val", "test") and is_leakage("train", "test")
    assert not is_leakage("train", "train") and not is_leakage("all", "all")
    pairs = [Pair(0, 1, "near", 0.99), Pair(0, 2, "near", 0.96), Pair(1, 3, "exact", 1.0)]
    rows, left_out = pair_rows(pairs, ["p0", "p1", "p2", "p3"], ["train", "train", "val", "train"],
                               np.array([0, 0, 1, 0]), ["a", "b"])
    assert [(r["a"]["path"], r["b"]["path"], r["leakage"]) for r in rows] == [
        ("p0", "p2", True), ("p1", "p3", False), ("p0", "p1", False)]
    assert rows[0]["same_label"] is False and left_out == 0
    rows, left_out = pair_rows(pairs, ["p0", "p1", "p2", "p3"], ["all"] * 4, np.zeros(4, int), ["a", "b"], max_pairs=2)
    assert not any(r["leakage"] for r in rows) and len(rows) == 2 and left_out == 1


def test_an_image_far_from_everything_is_the_first_outlier():
    x, y = blobs(per_class=30, dim=16)
    x[10] = -x.mean(axis=0) * 10 + 7  # somewhere no cluster is
    found = score_outliers(x, y)
    assert found.flagged[0] == 10
    assert found.scores[10] == found.scores.min()
    assert np.isnan(score_outliers(x[:33], np.r_[y[:31], 5, 5]).class_scores[-1])  # class of 2: not scored


def test_balance_counts_ratio_and_classes_too_small_for_the_split():
    classes = ["big", "mid", "tiny"]
    y = np.array([0] * 40 + [1] * 10 + [2] * 4 + [0] * 5 + [1] * 2)
    splits = ["train"] * 54 + ["val"] * 7
    report = balance_report(classes, y, splits, "split", min_per_class=4)
    assert report["counts"]["train"] == {"big": 40, "mid": 10, "tiny": 4}
    assert report["ratio"] == 10.0 and report["imbalanced"]
    assert report["too_small"] == [{"class": "tiny", "images": 4, "needed": 5}]
    assert report["missing_in_held_out"] == {"val": ["tiny"]}
    assert images_needed("flat", ["all"], 2)[0] == 5  # selection + test carved, one left to train
    assert images_needed("split", ["train", "val", "test"], 2)[0] == 1  # nothing carved
    assert images_needed("split", ["train", "test"], 2)[0] == 3  # train/ test/: selection carved from train/
    flat = balance_report(classes, y[:54], ["all"] * 54, "flat", min_per_class=2)
    assert flat["split_that_trains"] == "all" and flat["too_small"] == [{"class": "tiny", "images": 4, "needed": 5}]
