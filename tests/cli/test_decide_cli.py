"""`decide policy`, `plan`, `run`, `decisions`, `approve`, `reject`, `costs`, and `train` registering."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli.app import app
from decision.error_reports import ingest, parse_report
from registry import repo
from registry.session import session_scope
from tests import dates

runner = CliRunner()
pytestmark = pytest.mark.xdist_group("tiny-home")


def _run(*args, code=0):
    res = runner.invoke(app, list(args))
    assert res.exit_code == code, res.output
    return res


def _report(url):
    rep = {"model": "cxr", "version": 1, "pathology": "Cardiomegaly", "kind": "false_positives", "metric": "fpr",
           "value": 0.6, "target": 0.2, "site": "site-b", "window_start": dates.day(0),
           "window_end": dates.day(7), "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1}}
    with session_scope(url) as s:
        ingest(s, [parse_report(rep)])


def test_policy_show_and_validate(tmp_path):
    shown = json.loads(_run("policy", "show", "--json").stdout)
    assert shown["treatments"]["threshold_calibration"]["prior_cost"] == 1 and len(shown["digest"]) == 64
    bad = tmp_path / "p.toml"
    bad.write_text("[treatments.head_retrain]\nprior_cots = 2\n")
    res = _run("policy", "validate", str(bad), code=2)
    assert "treatments.head_retrain" in res.output


def test_plan_run_decisions_costs(tiny_home):
    _report(tiny_home.url)
    plans = json.loads(_run("plan", "--json").stdout)
    assert plans[0]["chosen"] == "threshold_calibration" and plans[0]["candidates"][0]["rank"] == 1
    res = runner.invoke(app, ["run", "--yes", "--json"])
    body = json.loads(res.stdout)
    assert res.exit_code in (0, 1) and body["decisions"][0]["runs"]
    assert res.exit_code == (1 if body["decisions"][0]["status"] == "exhausted" else 0)
    listed = json.loads(_run("decisions", "--json").stdout)
    assert listed[0]["id"] == body["decisions"][0]["decision_id"]
    costs = {r["treatment"]: r for r in json.loads(_run("costs", "--json").stdout)}
    assert costs["threshold_calibration"]["n_runs"] >= 1


@pytest.mark.slow  # a real `decide run` process on the tiny registry
@pytest.mark.parametrize("quiet", [False, True], ids=["default", "quiet"])
def test_run_logs_a_line_as_each_treatment_starts_and_ends_unless_quiet(tiny_home, tmp_path, quiet):
    _report(tiny_home.url)
    log = tmp_path / "run.log"
    with log.open("w") as out:  # `decide run --yes > log 2>&1`: no terminal anywhere
        code = subprocess.run([sys.executable, "-m", "cli", *(["-q"] if quiet else []), "run", "--yes"],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600).returncode
    text = log.read_text()
    assert code in (0, 1), text
    with session_scope(tiny_home.url, read_only=True) as s:
        runs = repo.list_runs(s)
    assert runs and "decision " in text  # the summary is there either way
    what = r"\s*\d+\.\ds treat report \d+ \(Cardiomegaly false_positives at site-b\): "
    started = re.findall(rf"^{what}(\w+) started on cxr:1$", text, flags=re.M)
    ended = re.findall(rf"^{what}(\w+) (\w+)(?: → cxr:\d+)? after \d+\.\d s \(treatment \d+\.\d s\)(?: — (.+))?$",
                       text, flags=re.M)
    if quiet:
        assert started == ended == [] and " treat " not in text, text
        return
    assert started == [r.treatment for r in runs], text
    assert [(t, outcome) for t, outcome, _ in ended] == [(r.treatment, r.outcome.value) for r in runs], text
    assert all(gate.startswith(outcome) for _, outcome, gate in ended if outcome in ("accepted", "rejected")), text


def test_run_without_a_terminal_needs_yes(tiny_home):
    _report(tiny_home.url)
    res = _run("run", code=2)
    assert "--yes" in res.output


def test_approve_and_reject_need_a_reason_and_a_waiting_decision(tiny_home, monkeypatch):
    _report(tiny_home.url)
    with session_scope(tiny_home.url) as s:
        rid = repo.list_reports(s)[0].id
        cand = [{"treatment": "augmentation_retrain", "applicable": True, "reason": "", "needs_approval": True}]
        d = repo.create_decision(s, [rid], "0" * 64, cand, "augmentation_retrain", "waits", "awaiting_approval")
    _run("approve", str(d.id), "--reason", " ", code=2)
    monkeypatch.setenv("DECIDE_ACTOR", "radiology-lead")  # four-eyes: not who created the decision
    ok = json.loads(_run("approve", str(d.id), "--reason", "looked at it", "--json").stdout)
    assert ok["status"] == "planned"
    with session_scope(tiny_home.url) as s:
        d2 = repo.create_decision(s, [rid], "0" * 64, cand, "augmentation_retrain", "waits", "awaiting_approval")
    assert json.loads(_run("reject", str(d2.id), "--reason", "too dear", "--json").stdout)["status"] == "rejected"
    _run("approve", "999", "--reason", "x", code=2)


def test_train_registers_when_a_home_exists(tiny_home, tmp_path):
    out = tmp_path / "t.safetensors"
    body = json.loads(_run("train", "--out", str(out), "--data", "phantom:site-a", "--spec", "tiny", "--n", "120",
                           "--epochs", "1", "--n-eval", "120", "--model", "trained", "--promote", "--json").stdout)
    assert body["registered"] == "trained:1"
    with session_scope(tiny_home.url, read_only=True) as s:
        v = repo.resolve_version(s, "trained@production")
        assert v.thresholds and repo.list_evaluations(s, v.id)
