"""``evaluate`` never scores, silently, an image the run trained or selected on: the run records the SHA-256
of its train and selection images (seen.json), and evaluate leaves matching images out and counts them (so
renamed or copied files are caught too); ``--include-seen`` scores them, labelled as not unbiased."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import transferkit as tk
import transferkit.report as report
from conftest import TINY, make_image_folder
from transferkit.cli import app
from transferkit.errors import DataError


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A flat folder (2 classes x 10) trained with tiny settings: its split.json says which image had which role."""
    root = tmp_path_factory.mktemp("seen")
    data = make_image_folder(root / "data", {"a": 10, "b": 10})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "build_run_report", lambda *a, **k: None)
        run = tk.train(data, out=str(root / "run"), epochs=1, cache=False, **TINY).run_dir
    split = json.loads((run / "split.json").read_text())
    return run, data, split


def _paths(split: dict, *roles: str) -> set[str]:
    return {str(Path(split["root"]) / rel) for role in roles for rel, _ in split[role]}


def test_the_run_records_the_digests_of_its_train_and_selection_images(flat_run) -> None:
    run, _, split = flat_run
    seen = json.loads((run / "seen.json").read_text())
    assert seen["hash"] == "sha256"
    assert [rel for _, rel in seen["train"]] == [rel for rel, _ in split["train"]]
    assert [rel for _, rel in seen["selection"]] == [rel for rel, _ in split["selection"]]
    assert all(len(digest) == 64 for digest, _ in seen["train"] + seen["selection"])


def test_evaluating_the_training_folder_scores_only_the_test_split(flat_run, tmp_path: Path) -> None:
    run, data, split = flat_run
    result = tk.evaluate(run, data, out=tmp_path)
    n_seen = len(split["train"]) + len(split["selection"])
    assert result["n"] == len(split["test"]) == 20 - n_seen
    check = result["seen_check"]
    assert (check["method"], check["images_given"], check["left_out"], check["included"]) == ("sha256", 20, n_seen, 0)
    left_out = {row["path"]: row["role"] for row in result["seen_files"]}
    assert set(left_out) == _paths(split, "train", "selection")
    assert sorted(left_out.values()).count("selection") == len(split["selection"])
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["seen_check"] == check and saved["n"] == result["n"]
    assert f"{n_seen} of 20 images were used for training or selection" in (tmp_path / "evaluation.html").read_text()


def test_a_renamed_copy_of_a_training_image_is_caught(flat_run, tmp_path: Path) -> None:
    run, _, split = flat_run
    fresh = make_image_folder(tmp_path / "fresh", {"a": 3, "b": 3}, seed=7)
    rel, _ = split["train"][0]
    copy = fresh / Path(rel).parent.name / "renamed_copy.jpg"
    shutil.copyfile(Path(split["root"]) / rel, copy)
    result = tk.evaluate(run, fresh, out=tmp_path)
    assert result["n"] == 6
    assert result["seen_files"] == [{"path": str(copy), "role": "train"}]


def test_include_seen_scores_every_image_and_says_so(flat_run, tmp_path: Path) -> None:
    run, data, split = flat_run
    result = tk.evaluate(run, data, out=tmp_path, include_seen=True)
    n_seen = len(split["train"]) + len(split["selection"])
    assert result["n"] == 20
    assert (result["seen_check"]["included"], result["seen_check"]["left_out"]) == (n_seen, 0)
    assert "not an unbiased estimate" in result["seen_check"]["summary"]


def test_only_seen_images_are_refused_naming_the_fix(flat_run, tmp_path: Path) -> None:
    run, _, split = flat_run
    only_train = tmp_path / "only_train"
    for rel, _ in split["train"]:
        target = only_train / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(split["root"]) / rel, target)
    with pytest.raises(DataError, match=r"all \d+ images.*--include-seen"):
        tk.evaluate(run, only_train, out=tmp_path)


def test_cli_prints_how_many_images_were_left_out_or_included(flat_run, tmp_path: Path) -> None:
    run, data, split = flat_run
    n_seen = len(split["train"]) + len(split["selection"])
    result = CliRunner().invoke(app, ["evaluate", str(run), str(data), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"{n_seen} of 20 images were used for training or selection and are not scored" in result.output
    assert f"{20 - n_seen} images: accuracy" in result.output
    included = CliRunner().invoke(app, ["evaluate", str(run), str(data), "--out", str(tmp_path), "--include-seen"])
    assert included.exit_code == 0, included.output
    assert (f"includes {n_seen} images seen in training or selection: not an unbiased estimate"
            in included.output)
    assert "20 images: accuracy" in included.output


def test_runs_without_digests_fall_back_to_paths_then_warn(flat_run, tmp_path: Path) -> None:
    run, data, split = flat_run
    old = Path(shutil.copytree(run, tmp_path / "old_run"))
    (old / "seen.json").unlink()  # a run made before digests were recorded
    result = tk.evaluate(old, data, out=tmp_path)
    assert result["seen_check"]["method"] == "path" and "by path only" in result["seen_check"]["summary"]
    assert result["n"] == len(split["test"])
    (old / "split.json").unlink()
    cli = CliRunner().invoke(app, ["evaluate", str(old), str(data), "--out", str(tmp_path)])
    assert cli.exit_code == 0, cli.output
    assert "WARNING: could not check" in cli.output and "20 images: accuracy" in cli.output
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["seen_check"]["method"] == "none"
