"""`decide record` and the change records in `decide export`, on a registry where a pass promoted a candidate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli.app import app
from decision.documents.change_record import promoted_version_ids
from policies import load_policy, policy_digest
from registry.session import dispose_engines, session_scope
from tests.cli.test_fast_cli import NOT_FOR_HELP, _drive
from tests.decision.test_change_record import promote_one, validator

pytestmark = pytest.mark.xdist_group("tiny-home")
runner = CliRunner()


@pytest.fixture
def promoted(tiny_home):
    """(export, promoted candidate's id, policy): `tests.decision.test_change_record.promote_one`."""
    return promote_one(tiny_home)


def _ref(export, vid):
    v = next(v for v in export["versions"] if v["id"] == vid)
    return f"{v['model']}:{v['version']}"


def test_record_writes_the_page_and_prints_the_same_record_as_json(promoted, tmp_path):
    export, vid, _ = promoted
    ref = _ref(export, vid)
    out = tmp_path / "record.html"
    res = runner.invoke(app, ["record", ref, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"change record of {ref}" in res.output and "gate passed" in res.output
    text = out.read_text()
    assert f"Change record: {ref}" in text and 'id="forest-0"' in text
    res = runner.invoke(app, ["record", ref, "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert not list(validator().iter_errors(record))
    assert record["version"]["ref"] == ref and record["verification"]["subgroups"]
    # the bundled policy is not the one this decision was made under: its sections are not quoted as declared
    assert record["protocol"]["policy_at_hand_digest"] == policy_digest(load_policy())
    assert not record["protocol"]["policy_verified"] and record["protocol"]["declared"] is None


def test_record_refuses_a_version_never_promoted_with_exit_2(promoted, tmp_path):
    from tests.registry import factories as f

    with session_scope() as s:
        extra = f.version(s, parent_id=1, payload=b"never promoted")
    dispose_engines()
    res = runner.invoke(app, ["record", f"cxr:{extra.version}", "--out", str(tmp_path / "x.html")])
    assert res.exit_code == 2
    assert "never promoted" in res.output and not (tmp_path / "x.html").exists()
    res = runner.invoke(app, ["record", "cxr:9999"])
    assert res.exit_code == 2 and "cxr:9999" in res.output


def test_export_carries_a_valid_change_record_for_every_promoted_version(promoted, tmp_path):
    export, _, _ = promoted
    out = tmp_path / "export.json"
    res = runner.invoke(app, ["export", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    records = data["change_records"]
    assert [r["version"]["id"] for r in records] == promoted_version_ids(data) == promoted_version_ids(export)
    check = validator()
    for r in records:
        assert not [e.message for e in check.iter_errors(r)], r["version"]["ref"]


def test_record_runs_as_a_real_process_and_its_help_is_light(promoted, tmp_path):
    export, vid, _ = promoted
    ref = _ref(export, vid)
    res = subprocess.run([sys.executable, "-m", "cli", "record", ref, "--out", str(tmp_path / "r.html")],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r.html").stat().st_size > 10_000
    out = _drive(["record", "--help"])
    assert out["codes"] == [0] and "Usage" in out["stdout"]
    assert not set(out["modules"]) & NOT_FOR_HELP, sorted(set(out["modules"]) & NOT_FOR_HELP)
