"""Every `transferkit` command and flag the README shows exists: each command answers `--help`, and each
flag appears in that command's help.

Commands come from code blocks (`transferkit CMD ...` and `torchrun ... -m transferkit.cli CMD ...`) and
from inline code in tables and prose. A flag in inline code that names no command belongs to the command
named earlier on the same line, else earlier in the same paragraph, else to the section's command
(`SECTION_COMMANDS`, default `train`). Flags before `-m transferkit.cli` belong to torchrun and are skipped.
"""

from __future__ import annotations

import functools
import re

import pytest
from typer.testing import CliRunner

from transferkit.cli import app

from conftest import REPO

README = REPO / "README.md"
SECTION_COMMANDS = {"The recommender": "recommend"}  # sections whose bare flags belong to a command other than train
TORCHRUN_FLAGS = {"--nproc_per_node", "--nproc-per-node", "--nnodes", "--node_rank", "--node-rank", "--rdzv_backend",
                  "--rdzv-backend", "--rdzv_endpoint", "--rdzv-endpoint", "--rdzv_id", "--rdzv-id", "--master_addr",
                  "--master-addr", "--master_port", "--master-port", "--standalone", "--max_restarts"}
APP = ""  # options given before the command name (`transferkit --debug train`) belong to the app itself
_COMMAND = re.compile(r"(?:^|[\s`(])(?:transferkit|-m\s+transferkit\.cli)((?:\s+[^\s`|]+)+)")
_FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def _command_and_flags(words: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """(command, [(owner, flag)]) for the words after `transferkit`: flags before the command are the app's."""
    command, found = None, []
    for word in words:
        if word.startswith("#"):
            break
        flag = _FLAG.match(word)
        if flag:
            found.append((APP if command is None else command, flag.group(1)))
        elif command is None:
            command = word
    return command or APP, found


def _commands_in(text: str) -> list[tuple[int, str, list[tuple[str, str]]]]:
    """[(position, command, [(owner, flag)])] for every `transferkit CMD ...` in a line of text."""
    out = []
    for match in _COMMAND.finditer(text):
        command, flags = _command_and_flags(match.group(1).split())
        out.append((match.start(), command, flags))
    return out


def _code_block_items(lines: list[str], where: str) -> list[tuple[str, str, str]]:
    items, logical, current = [], [], ""  # logical lines: backslash continuations joined
    for line in lines:
        current += " " + line.strip()
        if current.endswith("\\"):
            current = current[:-1]
            continue
        logical.append(current.strip())
        current = ""
    for line in logical + ([current.strip()] if current.strip() else []):
        code = line.split(" # ")[0] if not line.startswith("#") else ""
        for _, command, flags in _commands_in(code):
            items.append((command, "", where))
            items.extend((owner, flag, where) for owner, flag in flags)
    return items


def _prose_items(paragraph: list[str], section: str, where: str) -> list[tuple[str, str, str]]:
    items = []
    paragraph_command = None
    default = SECTION_COMMANDS.get(section, "train")
    is_table = all(line.lstrip().startswith("|") for line in paragraph)
    for line in paragraph:
        spans = re.findall(r"`([^`]+)`", line)
        line_commands = [cmd for span in spans for _, cmd, _ in _commands_in(span)]
        line_command = None
        for span in spans:
            named = _commands_in(span)
            if named:
                for _, command, flags in named:
                    items.append((command, "", where))
                    items.extend((owner, flag, where) for owner, flag in flags)
                    line_command = command
                    if not is_table:
                        paragraph_command = command
                continue
            for flag in _FLAG.findall(span) if span.startswith("--") else []:
                if flag in TORCHRUN_FLAGS:
                    continue
                owner = line_command or (line_commands[0] if line_commands else None) or paragraph_command or default
                items.append((owner, flag, where))
    return items


def readme_items(text: str) -> list[tuple[str, str, str]]:
    """[(command, flag or "", where)] for every command and flag the README attributes to transferkit."""
    items: list[tuple[str, str, str]] = []
    section, fence, block, paragraph = "", None, [], []
    lines = text.splitlines() + [""]
    for number, line in enumerate(lines, 1):
        where = f"README.md:{number} ({section})"
        if line.startswith("```"):
            if fence is None:
                items += _prose_items(paragraph, section, where)
                fence, block, paragraph = line[3:].strip(), [], []
            else:
                if fence != "python":
                    items += _code_block_items(block, where)
                fence = None
            continue
        if fence is not None:
            block.append(line)
            continue
        if line.startswith("#"):
            items += _prose_items(paragraph, section, where)
            section, paragraph = line.lstrip("#").strip(), []
        elif not line.strip():
            items += _prose_items(paragraph, section, where)
            paragraph = []
        else:
            paragraph.append(line)
    return items


@functools.lru_cache(maxsize=None)
def help_text(command: str) -> tuple[int, str]:
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
                                terminal_width=200)
    return result.exit_code, re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", result.output)


ITEMS = sorted(set(readme_items(README.read_text(encoding="utf-8"))))


def test_the_readme_scan_finds_the_commands_and_flags():
    """Guards the scanner itself: it must see the commands and flags the README is known to use."""
    commands = {command for command, flag, _ in ITEMS if not flag}
    assert {"train", "evaluate", "predict", "recommend", "compare", "backbones"} <= commands
    pairs = {(command, flag) for command, flag, _ in ITEMS if flag}
    assert {("train", "--strategy"), ("predict", "--top-k"), ("compare", "--seeds"), ("train", "--batch-size"),
            ("train", "--set"), ("train", "--unfreeze"), ("train", "--resume")} <= pairs
    assert not any(flag in TORCHRUN_FLAGS for _, flag in pairs)


@pytest.mark.parametrize(("command", "flag", "where"), ITEMS, ids=[f"{c or 'app'} {f}".strip() for c, f, _ in ITEMS])
def test_readme_command_and_flag_exist(command: str, flag: str, where: str):
    code, text = help_text(command)
    assert code == 0, f"{where}: `transferkit {command}` is not a command:\n{text}"
    if flag:
        assert re.search(re.escape(flag) + r"(?![\w-])", text), (
            f"{where}: `transferkit {command}` has no option {flag}; fix the README or add the option")
