"""`decide monitor run | schedule --no-run | schedules | passes | unschedule` on the tiny registry."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.app import app
from registry import repo
from registry.session import session_scope
from tests.monitoring import assert_versions_complete

runner = CliRunner()
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny-home")]
SRC = ["--source", "phantom:site-b", "--site", "site-b"]


def _run(*args, code=0):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res


def test_monitor_run_twice_on_one_week_stores_nothing_twice(tiny_home):
    res = runner.invoke(app, ["monitor", "run", *SRC, "--per-window", "200", "--max-cost", "2", "--json"])
    assert res.exit_code in (0, 1), res.output
    first = json.loads(res.stdout)
    assert first["week"] == 1 and first["version"] == "cxr:1" and first["dataset"] == "feedback-site-b-week1"
    assert first["breaches"] and first["reports_created"] == len(first["report_ids"]) >= 1
    for d in first["decisions"]:  # bounded by --max-cost 2: calibration (1), surgery / head retrain (2)
        assert {r["treatment"] for r in d["runs"]} <= {"threshold_calibration", "surgical_correction",
                                                       "head_retrain"}
    assert res.exit_code == (1 if any(d["status"] == "exhausted" and d["runs"] for d in first["decisions"]) else 0)

    again = json.loads(runner.invoke(app, ["monitor", "run", *SRC, "--per-window", "200", "--week", "1",
                                           "--no-treat", "--json"]).stdout)
    assert again["week"] == 1 and again["reports_created"] == 0 and again["decisions"] == []
    with session_scope(read_only=True) as s:
        assert [d.name for d in repo.list_datasets(s, site="site-b") if "week" in d.name] == ["feedback-site-b-week1"]
        n_reports = len(repo.list_reports(s))
    nxt = json.loads(runner.invoke(app, ["monitor", "run", *SRC, "--per-window", "200", "--no-treat",
                                         "--json"]).stdout)
    assert nxt["week"] == 2  # the default window is the one after the latest monitored
    with session_scope(read_only=True) as s:
        assert len(repo.list_reports(s)) == n_reports + nxt["reports_created"]
    assert_versions_complete()


def test_schedule_store_list_passes_unschedule(tiny_home):
    out = _run("monitor", "schedule", "--cron", "0 6 * * 1", *SRC, "--name", "weekly", "--max-cost", "2",
               "--no-run").output
    assert "schedule weekly stored" in out and "next fire" in out
    _run("monitor", "schedule", "--cron", "30 6 * * 1", *SRC, "--name", "weekly", "--no-run")  # same name: update
    [sc] = json.loads(_run("monitor", "schedules", "--json").stdout)
    assert (sc["name"], sc["cron"], sc["max_cost"], sc["next_index"], sc["last_pass"]) == (
        "weekly", "30 6 * * 1", None, 0, None)
    assert sc["next_fire"].endswith("06:30:00+00:00")
    assert json.loads(_run("monitor", "passes", "--json").stdout) == []
    assert "no passes yet" in _run("monitor", "passes").output
    assert json.loads(_run("monitor", "unschedule", "weekly", "--json").stdout)["deleted"] == "weekly"
    assert json.loads(_run("monitor", "schedules", "--json").stdout) == []
    assert "no schedule 'weekly'" in _run("monitor", "unschedule", "weekly", code=2).output


@pytest.mark.parametrize(("args", "says"), [
    (["--cron", "0 6 * *"], "cron"),
    (["--cron", "0 6 * * 9"], "cron"),
    (["--cron", "0 6 * * 1", "--per-window", "0"], "per-window"),
])
def test_bad_schedule_input_exits_2_naming_it(tiny_home, args, says):
    res = _run("monitor", "schedule", *args, *SRC, "--no-run", code=2)
    assert says in res.output
    with session_scope(read_only=True) as s:
        assert repo.list_schedules(s) == []


def test_help_teaches_the_crontab_and_the_sources():
    out = _run("monitor", "schedule", "--help").output
    assert "crontab" in out and "SIGTERM" in out and "phantom:SITE" in out
    assert "--week" in _run("monitor", "run", "--help").output


def test_monitor_run_watches_only_the_audited_pathology_and_refuses_an_unknown_one(tiny_home):
    bad = _run("monitor", "run", *SRC, "--per-window", "200", "--pathology", "Heart", "--no-treat", code=2)
    assert "unknown pathology Heart" in bad.output and "Cardiomegaly" in bad.output
    res = _run("monitor", "run", *SRC, "--per-window", "200", "--pathology", "Effusion", "--kind", "false_positives",
               "--no-treat", "--json")
    out = json.loads(res.stdout)
    assert out["watched"] == "Effusion (false_positives)"
    assert {(b["pathology"], tuple(b["breaches"])) for b in out["breaches"]} <= {("Effusion", ("false_positives",))}
    with session_scope(read_only=True) as s:
        reports = repo.list_reports(s)
    assert {(r.pathology, r.kind.value) for r in reports} <= {("Effusion", "false_positives")}
    assert len(reports) == out["reports_created"]
    text = _run("monitor", "run", *SRC, "--per-window", "200", "--week", "2", "--pathology", "Effusion",
                "--no-treat").output
    assert "watching: Effusion" in text
