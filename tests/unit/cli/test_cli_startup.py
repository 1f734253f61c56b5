"""`transferkit --help` starts fast: building the CLI loads neither torch, timm nor matplotlib.

Commands live one per module in transferkit/cli/, registered the same way, and share only the public
helpers of transferkit.cli.common and transferkit.cli.options.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import transferkit.cli as cli

CLI_DIR = Path(cli.__file__).parent
HEAVY = ("torch", "timm", "matplotlib", "sklearn", "transferkit.api")

CHECK = """
import sys
from typer.testing import CliRunner
from transferkit.cli import COMMANDS, app
result = CliRunner().invoke(app, ["--help"])
assert result.exit_code == 0, result.output
for command in ("train", "evaluate", "predict", "compare", "recommend", "embed"):
    assert command in result.output, command
for args in [[c, "--help"] for c in COMMANDS] + [["cache", "info", "--help"], ["cache", "clear", "--help"]]:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
heavy = [m for m in HEAVY if m in sys.modules]
print("HEAVY", heavy)
"""


def _run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}"], capture_output=True, text=True,
                          timeout=120)


def test_help_imports_no_torch_timm_or_matplotlib():
    """The app, `--help` and every command's `--help` (train's generated options included) stay light."""
    out = _run_fresh(CHECK)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, out.stdout


def test_the_console_script_module_answers_help_without_torch():
    """`python -m transferkit.cli train --help` (the torchrun entry) works and loads no torch."""
    code = ("import runpy, sys\nsys.argv = ['transferkit', 'train', '--help']\n"
            "try:\n    runpy.run_module('transferkit.cli', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n"
            "print('HEAVY', [m for m in HEAVY if m in sys.modules])\n")
    out = _run_fresh(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--backbone-lr-scale" in out.stdout and "HEAVY []" in out.stdout, out.stdout[-2000:]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def test_every_command_module_registers_the_same_way_and_imports_no_other_command():
    shared = {"transferkit.cli.common", "transferkit.cli.options"}
    commands = {f"transferkit.cli.{name}" for name in cli.COMMANDS}
    modules = {p.stem for p in CLI_DIR.glob("*.py")} - {"__init__", "__main__", "common", "options"}
    assert modules == set(cli.COMMANDS), "every command module is listed in COMMANDS, and only those"
    for name in cli.COMMANDS:
        module = sys.modules[f"transferkit.cli.{name}"]
        assert callable(getattr(module, "register", None)), f"transferkit/cli/{name}.py has no register(app)"
        for imported, names in _imports(CLI_DIR / f"{name}.py"):
            assert imported not in commands and imported != "transferkit.cli", f"{name}.py imports {imported}"
            if imported in shared:
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{name}.py imports private names {private} from {imported}"


def test_the_package_api_still_resolves_every_public_name():
    out = subprocess.run([sys.executable, "-c", (
        "import transferkit as tk, transferkit.compare\n"
        "assert callable(tk.compare) and tk.compare.__module__ == 'transferkit.compare'\n"
        "from transferkit import train, evaluate, predict, load_run, resume, build_config, recommend\n"
        "assert all(callable(f) for f in (train, evaluate, predict, load_run, resume, build_config, recommend))\n"
        "assert set(tk.__all__) <= set(dir(tk))\n")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_public_names_are_not_shadowed_by_submodules():
    """tk.compare and tk.recommend stay callable after their modules are imported (a submodule named like a
    lazily exported function would replace it as the package attribute)."""
    import importlib

    import transferkit as tk

    for name in ("compare", "recommend", "train", "evaluate", "predict"):
        try:
            importlib.import_module(f"transferkit.{name}")
        except ModuleNotFoundError:
            pass
        assert callable(getattr(tk, name)), f"transferkit.{name} is a module, not the API function"


def test_help_does_not_load_numpy():
    """`transferkit --help` stays light: numpy (and with it the interval code) loads when a command needs it."""
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from transferkit.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
