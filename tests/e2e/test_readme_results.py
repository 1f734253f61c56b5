"""README figures come from benchmarks/results: rendering the marked blocks changes nothing."""

from __future__ import annotations

import importlib.util

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
    tampered = text.replace("0.601 ± 0.045", "0.701 ± 0.045", 1)
    assert tampered != text and render.render(tampered) == text


def test_an_unknown_block_is_refused():
    render = _renderer()
    with pytest.raises(KeyError, match="no renderer"):
        render.render("<!-- results:nope -->\nx\n<!-- /results:nope -->")
