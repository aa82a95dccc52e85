"""Every `vllm-fleet <command>` that a message, doc, default or script names is a real command.

The repository's files are searched for the command line as users would type it (in backticks,
C(...), after a path such as .venv/bin/, after '$ ' or 'with: ', or as a line of a shell script),
and each command, and each option written after it, is checked against the argparse parser.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from vllm_fleet import cli

REPO = Path(__file__).resolve().parents[2]
# The command as typed: after `, C(, a path, '$ ' or 'with: '; its options up to the span's end.
TYPED = re.compile(
    r"(?:`|C\(|/|\$ |\b(?i:with|run|try|use): )vllm-fleet (?P<command>[a-z][\w-]*)(?P<rest>[^`#)\"\n]*)"
)
# A line of a shell script that runs it.
SCRIPT_LINE = re.compile(r"^\s*vllm-fleet (?P<command>[a-z][\w-]*)(?P<rest>[^#\n]*)", re.MULTILINE)
OPTION = re.compile(r"(?<!\S)(-{1,2}[a-zA-Z][\w-]*)")
SKIPPED_SUFFIXES = (".tar.gz", ".whl", ".png", ".jpg", ".gguf", ".safetensors")


def _files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of the repository's files")
    this = Path(__file__).resolve()
    return [
        REPO / name
        for name in listed
        if not name.endswith(SKIPPED_SUFFIXES) and (REPO / name).is_file() and (REPO / name).resolve() != this
    ]


def _mentions() -> list[tuple[str, str, list[str]]]:
    """(where, command, options) for every command line the repository's files name."""
    found: list[tuple[str, str, list[str]]] = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        patterns = [TYPED]
        if text.startswith("#!") and "sh" in text.splitlines()[0]:
            patterns.append(SCRIPT_LINE)
        for pattern in patterns:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                where = f"{path.relative_to(REPO)}:{line}"
                found.append((where, match["command"], OPTION.findall(match["rest"])))
    return found


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no subcommands")


def test_the_search_finds_the_known_mentions() -> None:
    commands = {command for _where, command, _options in _mentions()}
    assert {"demo", "plan", "build", "wheelhouse"} <= commands


def test_every_named_command_and_option_exists() -> None:
    commands = _commands()
    wrong = []
    for where, command, options in _mentions():
        sub = commands.get(command)
        if sub is None:
            wrong.append(f"{where}: no command `vllm-fleet {command}`")
            continue
        known = {flag for action in sub._actions for flag in action.option_strings}
        wrong += [f"{where}: `vllm-fleet {command}` has no option {o}" for o in options if o not in known]
    assert wrong == []


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert f"usage: vllm-fleet {command}" in capsys.readouterr().out
