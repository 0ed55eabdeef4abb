"""The documentation's promises: README.md and every page of docs/ run as written.

Every ```bash block of README.md and of each page in docs/ runs, page by page in order, against a
copy of the demo's home (`.decide-demo`, beside a `.venv` that points at the running environment).
A block that cannot run in a test says so on the line before its fence, in the page itself:

    <!-- not run: needs a Ray cluster -->

Such a block is listed as a skipped test with that reason; nothing else is left out. Pages whose
blocks read the NIH sample films (`$NIH_SAMPLE`) skip, naming the folder, when it is absent. The
site builds with `mkdocs build --strict`, the README stays a front door (at most 250 lines), and
the error report schema on its reference page is the generated one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from decision.error_reports import json_schema

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
NIH_SAMPLE = ROOT.parent / "shared" / "data" / "nih-sample"
README_MAX_LINES = 250

#: a fenced block: its info string (language first) and its body; fences start at the line's start
_FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.+?)\s*-->$")
#: lines that are shell commands, wherever they appear: they belong in ```bash blocks
_COMMAND = re.compile(r"^\s*(decide|\.venv/bin/decide|make|pip|python bench/|DECIDE_\w+=\S* decide)\b")


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    number: int  # 1-based, among the page's fenced blocks
    lang: str
    body: str
    not_run: str | None  # the marker's reason, when the block is excluded


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _blocks(page: Path) -> list[Block]:
    text = page.read_text()
    blocks = []
    for number, m in enumerate(_FENCE.finditer(text), 1):
        before = text[:m.start()].removesuffix("\n").rsplit("\n", 1)[-1].strip()  # the line right before
        marker = _NOT_RUN.match(before)
        blocks.append(Block(str(page.relative_to(ROOT)), number, (m["info"].split() or [""])[0], m["body"],
                            marker["reason"] if marker else None))
    return blocks


ALL_BLOCKS = [b for page in _pages() for b in _blocks(page)]
NOT_RUN = [b for b in ALL_BLOCKS if b.not_run]
#: page → its bash blocks that run, in order
RUNNABLE = {page: blocks for page in dict.fromkeys(b.page for b in ALL_BLOCKS)
            if (blocks := [b for b in ALL_BLOCKS if b.page == page and b.lang == "bash" and not b.not_run])}


def test_the_first_lines_give_the_two_commands():
    head = README.read_text().splitlines()[:10]
    assert any(line.startswith("make demo") for line in head) and any(line.startswith("make test") for line in head)


def test_the_readme_is_a_front_door():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def _prose_lines(page: Path) -> list[str]:
    """The page's lines outside fenced blocks (a marker shown as an example inside one is no marker)."""
    return _FENCE.sub("", page.read_text()).splitlines()


def test_every_not_run_marker_sits_on_a_bash_block():
    lines = [line.strip() for page in _pages() for line in _prose_lines(page)]
    loose = [line for line in lines if line.startswith("<!--") and "not run" in line and not _NOT_RUN.match(line)]
    assert not loose, f"malformed not-run markers (write `<!-- not run: REASON -->`): {loose}"
    markers = sum(1 for line in lines if _NOT_RUN.match(line))
    assert markers == len(NOT_RUN), "a not-run marker must be the line right before a ```bash fence"
    assert all(b.lang == "bash" for b in NOT_RUN), [f"{b.page} block {b.number}" for b in NOT_RUN if b.lang != "bash"]


def test_shell_commands_are_in_bash_blocks():
    """No command hides from the test in a ```text (or unlabelled) fence: it runs or says why not."""
    hidden = [f"{b.page} block {b.number} ({b.lang or 'no language'}): {line.strip()}"
              for b in ALL_BLOCKS if b.lang not in ("bash", "python", "toml", "json")
              for line in b.body.splitlines() if _COMMAND.match(line)]
    assert not hidden, "shell commands outside ```bash blocks:\n" + "\n".join(hidden)


def test_every_page_is_in_the_site():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in sorted(DOCS.rglob("*.md")) if not re.search(rf":\s*{re.escape(p.name)}\s*$", nav, re.M)]
    assert not missing, f"docs pages missing from mkdocs.yml's nav: {missing}"


def test_the_error_report_schema_page_is_the_generated_one():
    (block,) = [b for b in _blocks(DOCS / "error-reports.md") if b.lang == "json"]
    assert json.loads(block.body) == json_schema()


def test_the_site_builds_strictly_without_warnings(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs and mkdocs-material are not installed (the `docs` extra, part of `dev`)")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "WARNING" not in out, out
    assert (tmp_path / "site" / "index.html").is_file()


@pytest.mark.parametrize("block", NOT_RUN, ids=[f"{b.page}#{b.number}" for b in NOT_RUN])
def test_blocks_that_do_not_run_say_why(block):
    pytest.skip(f"{block.page} block {block.number}: not run: {block.not_run}")


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
@pytest.mark.parametrize("page", list(RUNNABLE))
def test_the_guides_run_as_written_against_a_demo_home(page, demo, tmp_path):
    blocks = RUNNABLE[page]
    if any("NIH_SAMPLE" in b.body for b in blocks) and not NIH_SAMPLE.is_dir():
        pytest.skip(f"{page} reads the real NIH sample films, which are not at {NIH_SAMPLE}")
    shutil.copytree(demo.home, tmp_path / ".decide-demo")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the README's `.venv/bin/decide`
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "NIH_SAMPLE": str(NIH_SAMPLE)}
    env.pop("DECIDE_HOME", None)
    for block in blocks:
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", block.body], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        out = f"--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
        assert res.returncode == 0, f"{page} block {block.number} failed:\n{block.body}\n{out}"
