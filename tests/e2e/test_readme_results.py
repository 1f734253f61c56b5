"""README figures come from benchmarks/results: rendering the marked blocks changes nothing."""

from __future__ import annotations

import importlib.util
import re

import pytest

from conftest import REPO


def _renderer():
    spec = importlib.util.spec_from_file_location("render_readme", REPO / "scripts" / "render_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_figures_are_what_the_result_files_say():
    render = _renderer()
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert render.render(text) == text, "README figures differ from benchmarks/results: run python scripts/render_readme.py"


def test_every_renderer_has_its_block_and_a_changed_figure_is_caught():
    render = _renderer()
    text = (REPO / "README.md").read_text(encoding="utf-8")
    names = {m["name"] for m in render.BLOCK.finditer(text)}
    assert names == set(render.RENDERERS)
    for name in sorted(names):  # in every block, a figure typed over is put back by the renderer
        start = text.index(f"<!-- results:{name} -->")
        figure = re.search(r"\d\.\d{3}", text[start:])
        assert figure, f"block {name} shows no figure"
        at = start + figure.start()
        changed = "1.234" if figure.group() != "1.234" else "4.321"
        tampered = text[:at] + changed + text[at + 5:]
        assert tampered != text and render.render(tampered) == text, name


def test_an_unknown_block_is_refused():
    render = _renderer()
    with pytest.raises(KeyError, match="no renderer"):
        render.render("<!-- results:nope -->\nx\n<!-- /results:nope -->")


def _provenance_records(data, where="") -> list[tuple[str, dict]]:
    """Every ``provenance`` record in a result file, with where it sits (a file may hold one per data set)."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "provenance" and isinstance(value, dict):
                found.append((where or "top level", value))
            else:
                found += _provenance_records(value, f"{where}.{key}" if where else str(key))
    return found


def test_every_rendered_result_file_records_the_script_the_readme_names_as_it_is_now():
    """A result file names the command, library versions and the SHA-256 of the script that wrote it, and that
    script is the one the README block names, unchanged since: editing a benchmark means re-running it."""
    import json

    render = _renderer()
    spec = importlib.util.spec_from_file_location("provenance", REPO / "benchmarks" / "provenance.py")
    provenance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(provenance)
    assert set(render.SOURCES) == set(render.RENDERERS), "every README block must name its result files and script"
    problems = []
    for block, (files, script) in render.SOURCES.items():
        digest = provenance.script_digest(REPO / script)
        for name in files:
            records = _provenance_records(json.loads((render.RESULTS / name).read_text(encoding="utf-8")))
            if not records:
                problems.append(f"{name} ({block}): no provenance record; re-run `python {script}`")
            for where, record in records:
                if record.get("script") != script:
                    problems.append(f"{name} [{where}]: written by {record.get('script')!r}, the README names {script!r}")
                elif record.get("script_sha256") != digest:
                    problems.append(f"{name} [{where}]: {script} changed since it wrote this file; re-run it")
                elif script not in record.get("command", "") or not record.get("versions", {}).get("torch"):
                    problems.append(f"{name} [{where}]: the command or the library versions are missing")
    assert not problems, "\n".join(problems)


def test_the_provenance_check_catches_an_edited_script(tmp_path):
    spec = importlib.util.spec_from_file_location("provenance", REPO / "benchmarks" / "provenance.py")
    provenance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(provenance)
    script = tmp_path / "bench.py"
    script.write_text("print(1)\n")
    before = provenance.script_digest(script)
    script.write_text("print(2)\n")
    assert provenance.script_digest(script) != before
