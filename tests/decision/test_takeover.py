"""A run whose process died is visible (how long since its heartbeat, when it will be taken over) and
`--take-over` reclaims it at once — but never a run that is still beating."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from cli.app import app
from decision.engine import Engine
from policies import load_policy
from registry import repo
from registry.entities import DecisionStatus, ReportStatus, RunOutcome
from registry.session import get_engine, session_scope
from tests.decision.test_engine import _report

pytestmark = pytest.mark.xdist_group("tiny-home")


def _killed_run(url, heartbeat_age_s: float) -> tuple[int, int, int]:
    """What `kill -9` during a treatment leaves: a decided report, a running decision and run, a silent heartbeat."""
    rid = _report(url)
    with session_scope(url) as s:
        [_claimed] = repo.claim_reports(s, "dead-worker", limit=1)
        parent = repo.resolve_version(s, "cxr@production")
        d = repo.create_decision(s, [rid], "p" * 64, [{"treatment": "threshold_calibration"}],
                                 "threshold_calibration", "why", DecisionStatus.running)
        repo.set_report_status(s, rid, ReportStatus.decided, reason=f"decision {d.id}")
        run = repo.start_run(s, d.id, "threshold_calibration", {}, parent.id)
    beat = datetime.now(UTC) - timedelta(seconds=heartbeat_age_s)
    with get_engine(url).begin() as c:
        c.execute(text("UPDATE treatment_runs SET heartbeat_at = :t WHERE id = :i"),
                  {"t": beat.replace(tzinfo=None) if url.startswith("sqlite") else beat, "i": run.id})
    return rid, d.id, run.id


def test_a_silent_run_is_listed_with_when_it_will_be_taken_over(tiny_home):
    _rid, did, run_id = _killed_run(tiny_home.url, 60)
    engine = Engine(tiny_home.url, tiny_home.home, load_policy())
    summary = engine.run_pass()  # the default 90 s have not passed: nothing is taken over ...
    assert summary.abandoned_runs == [] and summary.decisions == []
    [live] = summary.live_runs  # ... but the operator is told what is running and when it will be
    assert (live.run_id, live.decision_id, live.silent) == (run_id, did, True)
    assert 55 <= live.heartbeat_age_s <= 120 and 0 <= live.takeover_in_s <= 35
    out = CliRunner().invoke(app, ["decisions"], env={"DECIDE_HOME": str(tiny_home.home)})
    assert out.exit_code == 0, out.output
    assert f"run {run_id} (threshold_calibration) is running; last heartbeat" in " ".join(out.output.split())


def test_take_over_reclaims_a_dead_run_at_once_and_finishes_its_work(tiny_home):
    rid, did, run_id = _killed_run(tiny_home.url, 60)
    summary = Engine(tiny_home.url, tiny_home.home, load_policy(), worker="rescuer").run_pass(take_over=True)
    assert summary.abandoned_runs == [run_id] and summary.live_runs == []
    assert summary.resumed_decisions == [did]
    with session_scope(tiny_home.url, read_only=True) as s:
        assert repo.get_run(s, run_id).outcome == RunOutcome.abandoned
        assert [d.id for d in repo.list_decisions(s)] == [did]  # no second decision for the report
        runs = repo.list_runs(s, decision_id=did)
        [resume] = [e for e in repo.list_events(s, entity_type="decision") if e.action == "decision.resume"]
    # The same decision was carried on in the same pass, at the rung its dead process was running.
    assert [(d.report_id, d.decision_id) for d in summary.decisions] == [(rid, did)]
    assert [r.treatment for r in runs][:2] == ["threshold_calibration", "threshold_calibration"]
    assert resume.actor == "tester" and "rescuer" in resume.reason and resume.new["chosen"] == "threshold_calibration"


def test_take_over_leaves_a_beating_run_alone(tiny_home):
    _rid, _did, run_id = _killed_run(tiny_home.url, 5)
    summary = Engine(tiny_home.url, tiny_home.home, load_policy()).run_pass(take_over=True)
    assert summary.refused_takeover == [run_id] and summary.abandoned_runs == []
    with session_scope(tiny_home.url, read_only=True) as s:
        assert repo.get_run(s, run_id).outcome == RunOutcome.running
    assert [r.run_id for r in summary.live_runs] == [run_id] and not summary.live_runs[0].silent
