"""Every command's and group's `--help` reads as paragraphs at 80 columns.

Docstrings are wrapped for the editor (up to 120 columns); rich wraps help again at the terminal's
width and keeps every line break it is given, so `decide run --help` at 80 columns read
"… stop the ladder / in / `awaiting_approval`: …": short lines mid-sentence. `cli.app.paragraphs`
joins each paragraph's lines before rich sees them.

The check (`ragged_lines`): rich fills a help paragraph greedily, so within one paragraph the first
word of a line never fits on the line before it. A line on which the next line's first word would
still have fit (with its space, inside the 78 columns of text that 80 leave after rich's padding)
ended where a source line ended, not where the terminal did. Only the prose between the usage line
and the first panel is judged; option help inside the panels is one string each.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli.app import app, paragraphs

WIDTH = 80
TEXT_WIDTH = WIDTH - 2  # rich pads the help text by one column on each side
runner = CliRunner()


def _every_command() -> list[tuple[str, ...]]:
    """The path of every command and group under `decide` (hidden ones too), the root first."""
    paths: list[tuple[str, ...]] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        paths.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return paths


def _help(typer_app: typer.Typer, args: list[str]) -> str:
    res = runner.invoke(typer_app, [*args, "--help"], terminal_width=WIDTH)
    assert res.exit_code == 0, res.output
    return res.stdout


def _prose(text: str) -> list[str]:
    """The help text's prose lines (between the usage line and the first panel), padding removed;
    an empty string between paragraphs."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    out = []
    for line in lines[start:]:
        if line.lstrip().startswith("╭"):
            break
        out.append(line.strip())
    return out


def ragged_lines(text: str) -> list[str]:
    """The lines of `text`'s help prose after which the next line's first word would still have fit."""
    prose = _prose(text)
    bad = []
    for line, nxt in itertools.pairwise(prose):
        if line and nxt and len(line) + 1 + len(nxt.split()[0]) <= TEXT_WIDTH:
            bad.append(f"{line!r} ← {nxt.split()[0]!r}")
    return bad


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)


@pytest.mark.parametrize("path", _every_command(), ids=lambda p: " ".join(p) or "decide")
def test_every_help_reads_as_paragraphs_at_80_columns(path):
    text = _help(app, list(path))
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    assert _prose(text), text  # every command says something
    assert ragged_lines(text) == [], "\n".join(ragged_lines(text))


# `decide run`'s docstring as it was, hard-wrapped for the editor: what the check must catch.
HARD_WRAPPED = """Claim open reports, treat each along its escalation ladder, gate, promote or reject.

    Treatments the policy marks for approval, or above --max-cost, stop the ladder in
    `awaiting_approval`: `decide approve DECISION --reason …` lets the next run continue.
    A run whose process died (no heartbeat for DECIDE_STALE_SECONDS, default 90 s) is taken over by
    the next `decide run`, or at once with --take-over; runs still running are listed with when.
    Exit 1 if a decision ended with every treatment rejected or failed.
    """


def _one_command_app(doc: str | None) -> typer.Typer:
    one = typer.Typer(rich_markup_mode="rich")

    @one.command("run")
    def run() -> None:
        pass

    @one.command("other")  # two commands: `run` stays a subcommand
    def other() -> None:
        pass

    run.__doc__ = doc
    return one


def test_the_check_catches_a_hard_wrapped_docstring_and_paragraphs_fixes_it():
    bad = ragged_lines(_help(_one_command_app(HARD_WRAPPED), ["run"]))
    assert "'in' ← '`awaiting_approval`:'" in bad and "'is taken over by' ← 'the'" in bad, bad
    assert ragged_lines(_help(_one_command_app(paragraphs(HARD_WRAPPED)), ["run"])) == []


def test_paragraphs_joins_lines_and_keeps_paragraphs():
    assert paragraphs("One\n    two.\n\n    Three\n    four.\n   \n    \bkept\n    as is") == (
        "One two.\n\nThree four.\n\n\bkept\nas is")
    assert paragraphs(None) is None and paragraphs("") == ""
