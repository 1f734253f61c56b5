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
