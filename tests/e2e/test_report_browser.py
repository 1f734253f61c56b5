"""The reports as a person sees them: rendered by headless Chromium, every image loaded, no console errors.

Needs Debian's ``chromium`` (``scripts/install-chromium.sh``, run by ``make test``); skips without it, except
under ``CI=true``, where a missing browser fails the tests (CI must not pass with no browser test run).
The render of a real run's report (hymenoptera) is in ``tests/e2e/test_e2e_real.py``.
Set TRANSFERKIT_SCREENSHOTS=DIR to keep the screenshots for a look.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import transferkit as tk

from conftest import TINY, make_image_folder, require_chromium

# After the load event: count the images, name the broken ones (console.error, so the log check sees them
# too) and leave the result in the DOM, where --dump-dom returns it.
CHECKER = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                   .map(function (i) { return i.alt || i.src.slice(0, 60); });
  broken.forEach(function (b) { console.error('broken image: ' + b); });
  var out = document.createElement('pre');
  out.id = 'tk-check';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, height: document.body.scrollHeight});
  document.body.appendChild(out);
});
</script>"""
CONSOLE = re.compile(r"(?:INFO|WARNING|ERROR|VERBOSE\d*):CONSOLE[^\]]*\]\s*(.*)")


def chromium() -> str:
    """The browser; without one the test skips, or fails under CI=true (conftest.require_chromium)."""
    return require_chromium()


@pytest.fixture(autouse=True)
def _need_chromium() -> None:
    """Skip (or, under CI, fail) before any training when there is no browser."""
    chromium()


def render(page: Path, tmp_path: Path, height: int = 4000) -> dict:
    """Open a copy of ``page`` (with the checker added) in headless Chromium; screenshot, DOM check, console."""
    probe = tmp_path / f"{page.stem}.checked.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECKER + "</body>"), encoding="utf-8")
    shot = tmp_path / f"{page.stem}.png"
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=10000", f"--window-size=1280,{height}", f"--screenshot={shot}", "--dump-dom",
        probe.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="tk-check">(.*?)</pre>', done.stdout, re.S)
    assert found, "the page did not finish loading (no checker output in the DOM)\n" + done.stderr[-2000:]
    keep = os.environ.get("TRANSFERKIT_SCREENSHOTS")
    if keep and shot.is_file():
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    check = json.loads(html.unescape(found.group(1)))
    check["console"] = [m.group(1) for m in map(CONSOLE.search, done.stderr.splitlines()) if m]
    check["screenshot"] = shot
    return check


def assert_renders_cleanly(check: dict, min_images: int) -> None:
    assert check["broken"] == [], f"broken images: {check['broken']}"
    assert check["images"] >= min_images
    assert check["console"] == [], f"console messages: {check['console']}"
    shot = Image.open(check["screenshot"]).convert("L")
    assert shot.size[0] == 1280
    assert np.asarray(shot, dtype=float).std() > 10, "the screenshot is blank"


def test_the_checker_catches_broken_images_and_script_errors(tmp_path: Path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA" alt="bad">'
                   "<script>undefinedFunction();</script></body></html>")
    check = render(bad, tmp_path, height=300)
    assert check["broken"] == ["bad"]
    assert any("Uncaught" in line for line in check["console"])


def test_run_report_renders_in_chromium(tmp_path: Path):
    make_image_folder(tmp_path / "data", {"red": 8, "green": 8, "blue": 8})
    run = tk.train(tmp_path / "data", strategy="finetune", epochs=1, out=str(tmp_path / "run"), **TINY).run_dir
    n_images = (run / "report.html").read_text(encoding="utf-8").count("<img ")
    check = render(run / "report.html", tmp_path)
    assert_renders_cleanly(check, min_images=8)
    assert check["images"] == n_images
    assert check["height"] > 3000  # every section laid out, not an error page


def test_comparison_report_renders_in_chromium(tmp_path: Path):
    from transferkit.report import build_comparison_report

    strategies = {}
    for name in ("scratch", "feature-extraction"):
        run = tmp_path / name / "seed0"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "selection_accuracy": 0.5 + e / 10, "selection_nll": 1 / e}) + "\n"
                                                   for e in (1, 2, 3)))
        strategies[name] = {"runs": [{"metrics": {"accuracy": 0.7, "balanced_accuracy": 0.7, "macro_f1": 0.7, "roc_auc": 0.8},
                                      "epochs_run": 3, "time_s": 5.0, "params": {"trainable": 5, "total": 10}}],
                            "run_dirs": [str(run)], "mean": {}, "std": {}}
    page = build_comparison_report(tmp_path, {"data": "d", "seeds": 1, "strategies": strategies})
    assert_renders_cleanly(render(page, tmp_path, height=2400), min_images=3)
