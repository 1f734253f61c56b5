"""The package's layer rules (.importlinter) hold: one-way flow, no cycles, the engine free of the report
stack, the data layer free of timm, and transferkit.api imported only by the CLI and __init__."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.is_file(), "import-linter is not installed; `make setup` installs it with the [test] extra"
    # no cache: a stale grimp cache must never hide a new upward import
    done = subprocess.run([str(lint), "--config", str(REPO / ".importlinter"), "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") == 5, done.stdout


def test_the_contracts_cover_every_top_level_module():
    """A new top-level module must be placed in the layer order (else the flow rule does not see it)."""
    text = (REPO / ".importlinter").read_text(encoding="utf-8")
    layers = text.split("layers =", 1)[1].split("[importlinter", 1)[0]
    named = {part.strip() for line in layers.splitlines() for part in line.split("|") if part.strip()}
    package = REPO / "transferkit"
    modules = {f"transferkit.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"transferkit.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert modules <= named, f"not in .importlinter's layers: {sorted(modules - named)}"
