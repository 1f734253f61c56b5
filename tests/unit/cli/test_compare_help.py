"""`transferkit compare --help` says what the command prints: means with 95% intervals and paired verdicts.

(That the help loads no torch is checked for every command by test_cli_startup.py.)
"""

from __future__ import annotations

import re

from typer.testing import CliRunner

from transferkit.cli import app


def _help_text(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)  # one line, without the boxes rich draws


def test_compare_help_describes_intervals_and_paired_verdicts():
    text = _help_text("compare")
    assert "mean ± std" not in text and "± std table" not in text
    for said in ("95% interval", "paired", "best row", "better, worse, or no clear difference", "same test images"):
        assert said in text, said
    assert "only when they were trained with these settings" in text  # reuse of --out is conditional


def test_the_command_list_gives_the_same_summary():
    text = _help_text()
    assert "compare Train several strategies over several seeds on the same split; print each one's mean with a 95% " \
           "interval and its paired verdict against the best row." in text
