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
    for name in sorted(names):  # in every block that shows figures, a figure typed over is put back by the renderer
        start = text.index(f"<!-- results:{name} -->")
        body = text[start:text.index(f"<!-- /results:{name} -->")]
        figure = re.search(r"\d\.\d{3}", body)
        if body.split("\n", 1)[1].startswith("(Withdrawn until re-measured"):
            assert not figure, f"block {name} is withdrawn but shows a figure"
            continue
        if not figure and "ithdrawn until" in body:  # every row of it is withdrawn
            continue
        assert figure, f"block {name} shows no figure"
        at = start + figure.start()
        changed = "1.234" if figure.group() != "1.234" else "4.321"
        tampered = text[:at] + changed + text[at + 5:]
        assert tampered != text and render.render(tampered) == text, name


def test_an_unknown_block_is_refused():
    render = _renderer()
    with pytest.raises(KeyError, match="no renderer"):
        render.render("<!-- results:nope -->\nx\n<!-- /results:nope -->")


def test_no_block_shows_a_figure_from_a_file_that_does_not_record_the_script_as_it_is_now():
    """Each figure shown comes from a result file (or data set section) that names the command, the library
    versions and the SHA-256 of the script that wrote it, and that script is the one the README block names,
    unchanged since; any other file's block (or row) says it is withdrawn instead: editing a benchmark means
    re-running it, and figures measured with replaced code or statistics are never shown as current."""
    import json

    render = _renderer()
    assert set(render.SOURCES) == set(render.RENDERERS), "every README block must name its result files and script"
    text = (REPO / "README.md").read_text(encoding="utf-8")
    shown, withdrawn = [], []
    for block, (files, script) in render.SOURCES.items():
        body = text[text.index(f"<!-- results:{block} -->"):text.index(f"<!-- /results:{block} -->")]
        for name in files:
            data = json.loads((render.RESULTS / name).read_text(encoding="utf-8"))
            sections = {name: data} if block not in ("accuracy",) else {k: v for k, v in data.items() if k != "provenance"}
            for label, section in sections.items():
                if render.stale(section, script):
                    withdrawn.append(f"{block}: {label}")
                    assert "ithdrawn until" in body and label.split(".")[0] in body, (block, label)
                else:
                    shown.append(f"{block}: {label}")
    print("shown:", shown, "\nwithdrawn:", withdrawn)
    assert shown, "no block shows a current measurement"


def test_a_stale_result_file_is_withdrawn_not_shown(tmp_path, monkeypatch):
    import json
    import shutil

    render = _renderer()
    for name in ("adapt_mnistm.json", "accuracy.json", "compare_hymenoptera.json"):
        shutil.copy(render.RESULTS / name, tmp_path / name)
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    current = json.loads((tmp_path / "adapt_mnistm.json").read_text())
    current["provenance"] = render.provenance_records(current)[0][1] | {
        "script": "benchmarks/adapt_mnistm.py", "script_sha256": __import__("hashlib").sha256(
            (REPO / "benchmarks" / "adapt_mnistm.py").read_bytes()).hexdigest(), "command": "python benchmarks/adapt_mnistm.py",
        "versions": {"torch": "x"}}
    (tmp_path / "adapt_mnistm.json").write_text(json.dumps(current))
    assert "Withdrawn" not in render.RENDERERS["adapt"]()
    current["provenance"]["script_sha256"] = "0" * 64  # the script was edited after the run
    (tmp_path / "adapt_mnistm.json").write_text(json.dumps(current))
    block = render.RENDERERS["adapt"]()
    assert block.startswith("(Withdrawn until re-measured") and "earlier version of benchmarks/adapt_mnistm.py" in block
    assert not re.search(r"\d\.\d{3}", block)
    del current["provenance"]  # no record at all
    (tmp_path / "adapt_mnistm.json").write_text(json.dumps(current))
    assert "records no provenance" in render.RENDERERS["adapt"]()
    # by data set: a stale section is withdrawn row by row, the current ones stay
    accuracy = json.loads((tmp_path / "accuracy.json").read_text())
    first = next(k for k in accuracy if k != "provenance")
    accuracy[first]["provenance"] = {"script": "benchmarks/accuracy.py", "script_sha256": "0" * 64}
    (tmp_path / "accuracy.json").write_text(json.dumps(accuracy))
    assert f"| {first}: withdrawn until" in render.RENDERERS["accuracy"]()


def test_the_provenance_check_catches_an_edited_script(tmp_path):
    spec = importlib.util.spec_from_file_location("provenance", REPO / "benchmarks" / "provenance.py")
    provenance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(provenance)
    script = tmp_path / "bench.py"
    script.write_text("print(1)\n")
    before = provenance.script_digest(script)
    script.write_text("print(2)\n")
    assert provenance.script_digest(script) != before
