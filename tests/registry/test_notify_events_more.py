"""The rest of the events a person must hear about, each written in the transaction of its change (no commit,
no event): a candidate held for a person, a label request, a scheduled pass that failed or was abandoned;
and a failed audit verification, which changes nothing and so writes its event in a transaction of its own."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from cli.app import app
from cxr import clock
from decision import error_reports
from registry import repo, repo_notify
from registry.entities import DecisionStatus, RunOutcome
from registry.entities_jobs import PassStatus
from registry.models import AuditEventRow
from registry.session import session_scope
from tests.registry import factories as f

runner = CliRunner()


def _events(type: str | None = None) -> list:
    with session_scope(read_only=True) as s:
        events = list(reversed(repo_notify.list_events(s)))
    return [e for e in events if type is None or e.type == type]


def _decision(*, site="site-b", evidence=None, kind="false_positives") -> tuple[int, int]:
    """A planned decision on a report at `site`; returns (decision id, the report's version id)."""
    with session_scope() as s:
        v = f.version(s)
        extra = {"kind": kind, "metric": "shift_p", "value": 0.001, "target": 0.05} if kind != "false_positives" else {}
        rid = error_reports.ingest(s, [error_reports.parse_report(f.report(site=site, **extra))]).ids[0]
        d = repo.create_decision(s, [rid], "p" * 64, [{"treatment": "head_retrain"}, {"treatment": "request_labels"}],
                                 "head_retrain", "planned", DecisionStatus.planned, evidence=evidence, actor="alice")
    return d.id, v.id


def _held_run(decision_id: int, parent_id: int) -> int:
    with session_scope() as s:
        run = repo.start_run(s, decision_id, "head_retrain", {}, parent_id)
        cand = repo.derive_version(s, parent_id, thresholds={"Effusion": 0.6}, reason="candidate")
        repo.finish_run(s, run.id, RunOutcome.held, cand.id, 1.0, 10, "", {"gate": {
            "passed": True, "needs_approval": True, "summary": "passed; Effusion non-inferiority underpowered"}})
    return run.id


def test_a_held_candidate_is_an_event_with_its_run_and_candidate(db_url):
    did, parent = _decision()
    run_id = _held_run(did, parent)
    [ev] = _events("candidate.held")
    assert ev.site == "site-b" and ev.payload["decision_id"] == did and ev.payload["run_id"] == run_id
    assert ev.payload["candidate"] == "cxr:2" and ev.payload["version"] == "cxr:1"
    assert ev.payload["pathology"] == "Effusion" and ev.payload["treatment"] == "head_retrain"
    assert "held for a person" in ev.payload["summary"] and "underpowered" in ev.payload["summary"]
    assert "\n" not in ev.payload["summary"] and ev.payload["command"].startswith("decide decisions")


def test_a_held_run_that_does_not_commit_leaves_no_event(db_url):
    did, parent = _decision()
    with pytest.raises(RuntimeError), session_scope() as s:
        run = repo.start_run(s, did, "head_retrain", {}, parent)
        repo.finish_run(s, run.id, RunOutcome.held, None, 1.0)
        assert repo_notify.list_events(s)[0].type == "candidate.held"  # written, uncommitted
        raise RuntimeError("the process dies before the commit")
    assert _events("candidate.held") == []
    with session_scope() as s:  # a run that finishes otherwise is no event
        run = repo.start_run(s, did, "head_retrain", {}, parent)
        repo.finish_run(s, run.id, RunOutcome.rejected, None, 1.0)
    assert _events("candidate.held") == []


def test_a_label_request_awaiting_a_person_is_an_event_with_the_number_of_studies(db_url):
    request = {"label_request": {"site": "site-b", "studies": ["a", "b", "c"], "order": "most shifted first"}}
    did, _ = _decision(evidence=request, kind="distribution_shift")
    with session_scope() as s:
        repo.set_decision_status(s, did, DecisionStatus.awaiting_approval, chosen="request_labels")
    [ev] = _events("report.label_request")
    assert ev.site == "site-b" and ev.payload["decision_id"] == did and ev.payload["studies"] == 3
    assert ev.payload["command"] == f"decide labels {did}" and "3 studies" in ev.payload["summary"]
    assert [e.type for e in _events() if e.type.startswith(("decision.", "report.label"))] == [
        "decision.awaiting_approval", "report.label_request"]


def test_awaiting_approval_without_a_label_request_or_for_a_held_candidate_is_no_label_request(db_url):
    plain, _ = _decision()
    with session_scope() as s:
        repo.set_decision_status(s, plain, DecisionStatus.awaiting_approval)
    request = {"label_request": {"site": "site-b", "studies": ["a"]}}
    held, parent = _decision(evidence=request)
    _held_run(held, parent)
    with session_scope() as s:
        repo.set_decision_status(s, held, DecisionStatus.awaiting_approval)
    assert _events("report.label_request") == []
    assert len(_events("decision.awaiting_approval")) == 2


def _pass(name="weekly-b") -> int:
    with session_scope() as s:
        sc = repo.upsert_schedule(s, name, cron="0 6 * * 1", model="cxr", source="phantom:site-b", site="site-b")
        return repo.start_pass(s, sc.id, clock.now().replace(microsecond=0), "host:1", 2).id


def test_a_failed_pass_is_an_event_and_a_successful_one_is_not(db_url):
    failed, ok = _pass(), _pass("weekly-c")
    with session_scope() as s:
        repo.finish_pass(s, failed, PassStatus.failed, error_text="ValueError: the feedback source is empty\n  at …")
        repo.finish_pass(s, ok, PassStatus.succeeded)
    [ev] = _events()
    assert ev.type == "pass.failed" and ev.site == "site-b" and ev.payload["pass_id"] == failed
    assert ev.payload["schedule"] == "weekly-b" and ev.payload["model"] == "cxr"
    assert "failed: ValueError: the feedback source is empty" in ev.payload["summary"]
    assert "\n" not in ev.payload["summary"] and "week 3" in ev.payload["summary"]
    assert ev.payload["command"] == "decide monitor passes --schedule weekly-b"


def test_a_pass_marked_abandoned_is_an_event_in_that_transaction(db_url):
    pid = _pass()
    with pytest.raises(RuntimeError), session_scope() as s:
        assert repo.mark_stale_passes(s, older_than=timedelta(minutes=10), now=clock.now() + timedelta(hours=1))
        raise RuntimeError("rolled back")
    assert _events() == []
    with session_scope() as s:
        assert repo.mark_stale_passes(s, older_than=timedelta(minutes=10),
                                      now=clock.now() + timedelta(hours=1)) == [pid]
    [ev] = _events()
    assert ev.type == "pass.abandoned" and ev.payload["pass_id"] == pid and "abandoned" in ev.payload["summary"]
    assert "no heartbeat" in ev.payload["summary"]


def test_a_failed_audit_verification_writes_its_event_and_an_intact_one_does_not(db_url):
    with session_scope() as s:
        v = f.version(s)
        repo.set_alias(s, "cxr", "production", v.id, reason="first")
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
    assert _events("audit.verification_failed") == []
    with session_scope(check=False) as s:
        s.execute(update(AuditEventRow.__table__).where(AuditEventRow.seq == 2).values(reason="forged"))
    out = runner.invoke(app, ["audit", "verify"])
    assert out.exit_code == 1 and "seq 2" in out.output
    [ev] = _events("audit.verification_failed")
    assert ev.payload["first_bad_seq"] == 2 and ev.payload["command"] == "decide audit verify"
    assert "seq 2" in ev.payload["summary"] and ev.site == ""
