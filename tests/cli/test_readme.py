"""The README's promises: its shell blocks run as written, its schema is the generated one."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from decision.error_reports import json_schema

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _blocks(title: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(title), flags=re.S)


def test_the_first_lines_give_the_two_commands():
    head = README.read_text().splitlines()[:10]
    assert any(line.startswith("make demo") for line in head) and any(line.startswith("make test") for line in head)


def test_the_schema_in_the_readme_is_the_generated_one():
    (block,) = _blocks("Error report JSON schema", "json")
    assert json.loads(block) == json_schema()


NIH_SAMPLE = README.parents[1] / "shared" / "data" / "nih-sample"
#: sections whose blocks read the real NIH films of ../shared/data/nih-sample
NEEDS_NIH = {"Reading a study: the clinical report", "DICOM and other real films"}


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
@pytest.mark.parametrize("guide", ["Operator guide", "Auditor guide", "Reading a study: the clinical report",
                                   "DICOM and other real films", "Label exclusivity and polarized channels"])
def test_the_guides_run_as_written_against_a_demo_home(guide, demo, tmp_path):
    if guide in NEEDS_NIH and not NIH_SAMPLE.is_dir():
        pytest.skip(f"the NIH sample films are not at {NIH_SAMPLE} (see DEVELOPERS.md)")
    shutil.copytree(demo.home, tmp_path / ".decide-demo")
    blocks = _blocks(guide, "bash")
    assert blocks
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "NIH_SAMPLE": str(NIH_SAMPLE)}
    env.pop("DECIDE_HOME", None)
    for block in blocks:
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        out = f"--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
        assert res.returncode == 0, f"{guide} block failed:\n{block}\n{out}"
