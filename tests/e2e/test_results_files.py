"""Committed benchmark results: portable (no path of the machine that ran them) and recorded with a command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from transferkit.fileio import portable_paths

from conftest import REPO

RESULTS = REPO / "benchmarks" / "results"
# an absolute POSIX path with at least two components, or a Windows drive path, standing on its own
ABSOLUTE = re.compile(r"(?:^|[\s\"'`(=:,\[])(/[\w.\-]+/[\w.\-]+|[A-Za-z]:\\\w)")


def _strings(data: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(data, str):
        yield where, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(value, f"{where}.{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _strings(value, f"{where}[{i}]")


def _result_files(suffix: str) -> list[Path]:
    return sorted(RESULTS.glob(f"*{suffix}"))


@pytest.mark.parametrize("path", _result_files(".json"), ids=lambda p: p.name)
def test_json_results_hold_no_absolute_paths(path: Path):
    found = [(where, text) for where, text in _strings(json.loads(path.read_text(encoding="utf-8")))
             if ABSOLUTE.search(text)]
    assert not found, f"{path.name} holds absolute paths (store them relative to the datasets root or the repo): {found[:5]}"


@pytest.mark.parametrize("path", _result_files(".md"), ids=lambda p: p.name)
def test_markdown_results_hold_no_absolute_paths(path: Path):
    found = ABSOLUTE.findall(path.read_text(encoding="utf-8"))
    assert not found, f"{path.name} holds absolute paths: {found[:5]}"


def test_the_absolute_path_check_catches_what_it_must():
    for text in ("/work/shared/datasets/flowers", "Data: `/home/me/data`", '"/tmp/x/y"', r"C:\Users\me"):
        assert ABSOLUTE.search(text), text
    for text in ("$TRANSFERKIT_DATASETS/flowers", "benchmarks/runs/x/seed0", "images/s", "1/2", "n/a"):
        assert not ABSOLUTE.search(text), text


def test_portable_paths_rewrites_under_each_root_and_keeps_the_rest(tmp_path: Path):
    datasets, repo = tmp_path / "shared" / "datasets", tmp_path / "main"
    roots = {"$TRANSFERKIT_DATASETS": datasets, "": repo}
    data = {
        "data": str(datasets / "flowers"),
        "runs": [str(repo / "benchmarks" / "runs" / "a"), str(repo)],
        "text": f"Data: `{datasets / 'hymenoptera'}`, 3 seeds",
        "sibling": str(tmp_path / "mainly" / "x"),  # shares a prefix with the repo, is not under it
        "number": 3,
    }
    assert portable_paths(data, roots) == {
        "data": "$TRANSFERKIT_DATASETS/flowers",
        "runs": ["benchmarks/runs/a", "."],
        "text": "Data: `$TRANSFERKIT_DATASETS/hymenoptera`, 3 seeds",
        "sibling": str(tmp_path / "mainly" / "x"),
        "number": 3,
    }


def test_readme_demo_figures_are_the_recorded_ones():
    """The quick-start sentence is rendered from benchmarks/results/demo.json (benchmarks/demo_record.py), and
    that record follows the protocol: equal budgets, test figures with intervals, verdicts."""
    record = json.loads((RESULTS / "demo.json").read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("<!-- results:demo -->"):readme.index("<!-- /results:demo -->")]
    assert "`make demo` writes" in block and "make demo" in readme[:readme.index("<!-- results:demo -->")]
    assert [r["strategy"] for r in record["rows"]] == ["feature-extraction", "finetune", "lp-ft"]
    for r in record["rows"]:
        lo, hi = r["ci95"]["accuracy"]
        assert f"{r['metrics']['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" in block
    assert set(record["differing_settings"]) <= {"bn"}, "the demo's rows differ in more than the strategy"
    assert record["verdicts"]["split"] == "test"
    minutes, seconds = (int(v) for v in re.search(r"(\d+) min (\d+) s", block).groups())
    assert minutes * 60 + seconds == round(record["process_wall_time_s"])
    assert record["benchmark_command"] in (REPO / "benchmarks" / "demo_record.py").read_text(encoding="utf-8")
