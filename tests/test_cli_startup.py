"""`transferkit --help` starts fast: building the CLI loads neither torch, timm nor matplotlib."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from typer.testing import CliRunner
from transferkit.cli import app
result = CliRunner().invoke(app, ["--help"])
assert result.exit_code == 0, result.output
for command in ("train", "evaluate", "predict", "compare", "recommend", "embed"):
    assert command in result.output, command
heavy = [m for m in ("torch", "timm", "matplotlib", "sklearn") if m in sys.modules]
print("HEAVY", heavy)
"""


def test_help_imports_no_torch_timm_or_matplotlib():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, out.stdout


def test_the_package_api_still_resolves_every_public_name():
    out = subprocess.run([sys.executable, "-c", (
        "import transferkit as tk, transferkit.compare\n"
        "assert callable(tk.compare) and tk.compare.__module__ == 'transferkit.compare'\n"
        "from transferkit import train, evaluate, predict, load_run, resume, build_config, recommend\n"
        "assert all(callable(f) for f in (train, evaluate, predict, load_run, resume, build_config, recommend))\n"
        "assert set(tk.__all__) <= set(dir(tk))\n")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
