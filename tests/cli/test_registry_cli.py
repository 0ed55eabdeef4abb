"""The registry commands through the CLI (CliRunner), plus one real `decide` subprocess."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from cli.app import app
from registry.session import head_revision
from registry.settings import get_settings
from tests import dates

runner = CliRunner()


def _run(*args, code=0):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res


def _json(*args):
    return json.loads(_run(*args, "--json").stdout)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from cxr.model import build_model
    from cxr.spec import preset
    from cxr.weights import save_model

    d = tmp_path_factory.mktemp("w")
    for seed in (0, 1):
        save_model(d / f"m{seed}.safetensors", build_model(preset("tiny"), seed=seed))
    return d / "m0.safetensors", d / "m1.safetensors"


@pytest.fixture
def registry(weights, tmp_path):
    _run("init")
    thr = tmp_path / "thr.json"
    thr.write_text(json.dumps({"Effusion": 0.4, "Cardiomegaly": None}))
    v1 = _json("register", weights[0], "--model", "cxr", "--promote", "--thresholds", thr)
    v2 = _json("register", weights[1], "--model", "cxr", "--parent", "cxr@production", "--reason", "retrained")
    return v1, v2


def test_commands_need_a_registry():
    res = _run("history", code=2)
    assert "no registry here" in res.output and "decide init" in res.output and "Traceback" not in res.output


def test_register_promote_history_show_lineage_diff_rollback(registry):
    v1, v2 = registry
    assert (v1["ref"], v1["status"], v1["thresholds"]) == ("cxr:1", "production", {"Effusion": 0.4,
                                                                                  "Cardiomegaly": None})
    assert v2["parent_ref"] == "cxr:1" and v2["thresholds"] == v1["thresholds"]  # inherited
    assert v1["parameter_count"] > 0 and len(v1["weights_digest"]) == 64
    _run("register", "--help")
    shown = _json("show", "cxr:2")
    assert shown["spec"]["growth_rate"] == 4 and shown["evaluations"] == []
    assert "thresholds and evaluations" in _run("show", "cxr@production").stdout
    lin = _json("lineage", "2")
    assert [a["version"] for a in lin["ancestors"]] == [1]
    d = _json("diff", "cxr:1", "cxr:2")
    assert not d["same_weights"] and "classifier.weight" in d["tensors_changed"]
    _run("rollback", "cxr:1", code=2)  # --reason is required
    _run("rollback", "cxr:2", "--reason", "try v2")
    _run("rollback", "cxr:1", "--reason", "v2 misses effusions")
    h = _json("history", "cxr")
    assert [(m["from_version"], m["to_version"], m["reason"]) for m in h["moves"]] == [
        (None, 1, "registered with --promote"), (1, 2, "try v2"), (2, 1, "v2 misses effusions")]
    assert "alias moves" in _run("history").stdout and "lineage of" in _run("lineage", "cxr:1").stdout
    assert "tensors:" in _run("diff", "1", "2").stdout


def test_register_refuses_bad_inputs(registry, weights, tmp_path):
    bad_thr = tmp_path / "bad.json"
    bad_thr.write_text(json.dumps({"Unicorn": 0.5}))
    res = _run("register", weights[0], "--model", "cxr", "--thresholds", bad_thr, code=2)
    assert "thresholds" in res.output
    broken = tmp_path / "broken.safetensors"
    data = bytearray(weights[0].read_bytes())
    data[-1] ^= 0xFF  # flip a bit of the last tensor
    broken.write_bytes(bytes(data))
    res = runner.invoke(app, ["register", str(broken), "--model", "cxr"])
    assert res.exit_code == 1 and "digest mismatch" in res.output
    assert len(_json("history")["versions"]) == 2


def _report(line_day: int, **kw) -> str:
    r = {"model": "cxr", "version": 1, "pathology": "Effusion", "kind": "false_positives", "metric": "fpr",
         "value": 0.3, "target": 0.1, "site": "site-b", "window_start": dates.iso(dates.day(line_day)),
         "window_end": dates.iso(dates.day(line_day + 1) - timedelta(seconds=1)),
         "counts": {"tp": 1, "fp": 27, "tn": 63, "fn": 2}}
    r.update(kw)
    return json.dumps(r)


def test_ingest_all_or_nothing_and_reports(registry, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([_report(1), _report(2, counts={"tp": 1, "fp": -3, "tn": 0, "fn": 0}), _report(3)]))
    res = _run("ingest", bad, code=2)
    assert "line 2: counts.fp" in res.output and len(res.output.strip().splitlines()) == 1
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(_report(1) + "\n" + _report(2, pathology="Unicorn") + "\n")
    assert "line 2: pathology" in _run("ingest", unknown, code=2).output
    assert _json("reports") == []
    good = tmp_path / "good.jsonl"
    good.write_text(_report(1) + "\n" + _report(2) + "\n")
    assert _json("ingest", good)["created"] == 2
    assert _json("ingest", good)["existing"] == 2  # the monitor re-sends: no-op
    rows = _json("reports", "--status", "open")
    assert [r["source"] for r in rows] == ["jsonl", "jsonl"]
    assert "2 report(s)" in _run("reports").stdout
    _run("reports", "--status", "bogus", code=2)


def test_audit_verify_export_schema_and_db(registry, tmp_path):
    assert _json("audit", "verify")["ok"] is True
    assert "event(s)" in _run("audit", "log").stdout
    log = _json("audit", "log", "--entity", "model_version:2")
    assert [e["action"] for e in log] == ["version.register"]
    out = tmp_path / "export.json"
    _run("export", "--format", "json", "--out", out)
    data = json.loads(out.read_text())
    assert len(data["versions"]) == 2 and data["audit_verification"]["ok"]
    assert json.loads(_run("export").stdout)["format"] == "cxr-decide/export-1"
    _run("export", "--format", "xml", code=2)
    schema = json.loads(_run("schema", "report").stdout)
    assert schema["title"] == "ErrorReport"
    assert _json("db", "current")["up_to_date"] is True
    assert _json("db", "downgrade", "base")["to"] is None
    assert "decide init" in _run("show", "1", code=2).output
    assert _json("db", "upgrade")["to"] == head_revision()


def test_real_subprocess_verify_names_the_tampered_event(registry):
    db = get_settings().home_dir / "registry.db"
    cmd = [sys.executable, "-c", "from cli.app import main; main()", "audit", "verify"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "intact" in ok.stdout
    with sqlite3.connect(db) as c:
        c.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "seq 2" in bad.stderr


def test_gc_lists_then_deletes_unregistered_blobs(registry):
    import os
    import time

    from registry import blobs

    assert _json("gc")["orphans"] == []
    orphan = blobs.put_bytes(b"weights of a registration that failed")
    old = time.time() - 3 * 3600
    os.utime(orphan.path, (old, old))
    listed = _json("gc")
    assert [o["path"] for o in listed["orphans"]] == [blobs.relative_path(orphan.digest)]
    assert "decide gc --apply" in _run("gc").output and os.path.exists(orphan.path)
    done = _json("gc", "--apply")
    assert done["applied"] and done["bytes_freed"] == orphan.size and not os.path.exists(orphan.path)
    assert _json("audit", "verify")["ok"]
    for v in registry:  # registered blobs untouched, and still verify
        assert blobs.get_bytes(v["weights_digest"])
