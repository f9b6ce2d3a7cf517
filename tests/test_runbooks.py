"""The runbooks in docs/operations/ do not rot: every ``x0t`` command they quote (in code
blocks and in inline code) must name a command the CLI has, with options it accepts, and
``x0t <command> --help`` must exit 0."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from x0tta6bl4.cli import app

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations"
# The pages this runbooks helper owns; the others (deploy, alerts, dashboards) are
# checked too when present.
RUNBOOKS = (
    "README.md",
    "upgrade.md",
    "backup-restore.md",
    "ca-rotation.md",
    "revoke-node.md",
    "troubleshooting.md",
)
# "--": the command after it, as in `kubectl run ... -- x0t db upgrade`.
SEPARATORS = {";", "&&", "||", "|", "(", ")", "&", "--"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^\s*```")
INLINE = re.compile(r"(?<!`)`(x0t [^`]+)`(?!`)")


@dataclass(frozen=True)
class Quoted:
    where: str  # file:line
    words: tuple[str, ...]  # what follows "x0t"


def _logical_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join shell continuation lines (a trailing backslash)."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in block:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
            pending = None
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        out.append((number, line))
    if pending is not None:
        out.append(pending)
    return out


def _split(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.commenters = "#"
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in an example: fall back to plain words
        return line.split("#", 1)[0].split()


def commands_in_line(line: str) -> list[tuple[str, ...]]:
    """The words after each ``x0t`` in command position (after env assignments)."""
    words = _split(line)
    found: list[tuple[str, ...]] = []
    at_start = True
    for i, w in enumerate(words):
        if w in SEPARATORS:
            at_start = True
            continue
        if at_start and ENV_ASSIGNMENT.match(w):
            continue
        if at_start and w == "x0t":
            rest: list[str] = []
            for v in words[i + 1 :]:
                if v in SEPARATORS:
                    break
                rest.append(v)
            found.append(tuple(rest))
        at_start = False
    return found


def quoted_commands(text: str, name: str) -> list[Quoted]:
    found: list[Quoted] = []
    block: list[tuple[int, str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                for n, logical in _logical_lines(block):
                    found += [Quoted(f"{name}:{n}", c) for c in commands_in_line(logical)]
                block = None
            continue
        if block is not None:
            block.append((number, line))
    for m in INLINE.finditer(text):
        number = text.count("\n", 0, m.start()) + 1
        words = tuple(" ".join(m.group(1).split()).split()[1:])
        found.append(Quoted(f"{name}:{number}", words))
    return found


def _is_group(cmd: Any) -> bool:
    # Typer ships its own copy of click, so no isinstance against the click package.
    return isinstance(getattr(cmd, "commands", None), dict)


@functools.cache
def _root() -> Any:
    return get_command(app)  # builds the whole command tree: once


def resolve(words: tuple[str, ...]) -> tuple[list[str], Any, list[str]]:
    """(command path, the command, the words after it)."""
    cmd: Any = _root()
    path: list[str] = []
    rest = list(words)
    while _is_group(cmd) and rest:
        sub = cmd.commands.get(rest[0])
        if sub is None:
            break
        cmd, path = sub, [*path, rest.pop(0)]
    return path, cmd, rest


def problems(q: Quoted) -> list[str]:
    path, cmd, rest = resolve(q.words)
    said = "x0t " + " ".join(q.words)
    if not path:
        return [f"{q.where}: `{said}`: no such x0t command"]
    if _is_group(cmd):
        if rest and not rest[0].startswith("-"):
            return [f"{q.where}: `{said}`: x0t {' '.join(path)} has no command {rest[0]!r}"]
        return []
    accepted = {"--help"}
    for p in cmd.params:
        accepted.update(p.opts)
        accepted.update(p.secondary_opts)
    out = []
    for w in rest:
        option = w.split("=", 1)[0]
        is_option = (option.startswith("--") and len(option) > 2) or re.fullmatch(
            r"-[A-Za-z]", option
        )
        if is_option and option not in accepted:
            out.append(f"{q.where}: `{said}`: x0t {' '.join(path)} has no option {option}")
    return out


def all_quoted() -> list[Quoted]:
    found: list[Quoted] = []
    for page in sorted(OPERATIONS.glob("*.md")):
        found += quoted_commands(page.read_text(), page.name)
    return found


def test_the_runbooks_exist() -> None:
    missing = [name for name in RUNBOOKS if not (OPERATIONS / name).is_file()]
    assert not missing, f"docs/operations/ lacks {missing}"


def test_every_quoted_x0t_command_and_option_exists() -> None:
    quoted = all_quoted()
    paths = {tuple(resolve(q.words)[0]) for q in quoted}
    # The runbooks quote at least these; fewer means the extraction broke.
    for needed in [("serve",), ("db", "upgrade"), ("admin", "create-key"), ("node", "join")]:
        assert needed in paths, f"no runbook quotes `x0t {' '.join(needed)}` any more"
    bad = [p for q in quoted for p in problems(q)]
    assert not bad, "runbooks quote commands the CLI does not have:\n" + "\n".join(bad)


def test_help_of_every_quoted_command_exits_0() -> None:
    runner = CliRunner()
    paths = sorted({tuple(resolve(q.words)[0]) for q in all_quoted()} - {()})
    assert len(paths) >= 8, paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"x0t {' '.join(path)} --help: {result.output}"


def test_the_installed_entry_point_answers_help() -> None:
    # One real process: the console script the runbooks call is the one tested above.
    done = subprocess.run(
        [sys.executable, "-m", "x0tta6bl4.cli", "db", "upgrade", "--help"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"migration" in done.stdout


@pytest.mark.parametrize(
    ("markdown", "complaint"),
    [
        ("```sh\nx0t db downgrade\n```\n", "has no command 'downgrade'"),
        ("```sh\nX0T_A=1 x0t serve --workers 2 --tls\n```\n", "has no option --tls"),
        ("run `x0t certs show ca.crt` first", "no such x0t command"),
        ("```sh\nx0t node join $CP \\\n    --token T --confg node.toml\n```\n", "--confg"),
        ("```sh\ncd /x && x0t ca rotate --dir ca\n```\n", "has no command 'rotate'"),
    ],
)
def test_the_checker_catches_rot(markdown: str, complaint: str) -> None:
    quoted = quoted_commands(markdown, "t.md")
    assert quoted, "the checker found no command"
    found = [p for q in quoted for p in problems(q)]
    assert any(complaint in p for p in found), found


def test_the_checker_passes_real_commands() -> None:
    markdown = (
        "```sh\nexport A=1\nX0T_JOIN_TOKEN=t x0t node join $CP --config /etc/x0t/node.toml\n"
        "x0t admin create-key ops --role admin   # prints the key once\n```\n"
    )
    quoted = quoted_commands(markdown, "t.md")
    assert [q.words[:2] for q in quoted] == [("node", "join"), ("admin", "create-key")]
    assert [p for q in quoted for p in problems(q)] == []
