"""Decisions with their candidates and approvals; treatment runs and their history."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cxr.errors import InvalidInput, NotFound
from decision import error_reports
from registry import audit, repo
from registry.entities import DecisionStatus, RunOutcome
from registry.models import utcnow
from registry.session import session_scope
from tests.registry import factories as f

CANDIDATES = [
    {"treatment": "threshold_calibration", "applicable": True, "reason": "fp kind", "prior_cost": 1.0,
     "empirical_cost": None, "expected_cost": 1.2, "p_success": 0.6, "alpha": 3.0, "beta": 2.0, "score": 2.0},
    {"treatment": "head_retrain", "applicable": True, "reason": "", "prior_cost": 10.0, "expected_cost": 11.0,
     "p_success": 0.8, "score": 13.75, "needs_approval": True},
    {"treatment": "full_finetune", "applicable": False, "reason": "no GPU"},
]


@pytest.fixture
def setup(db_url):
    with session_scope() as s:
        v = f.version(s)
        rid = error_reports.ingest(s, [error_reports.parse_report(f.report())]).ids[0]
    return v, rid


def test_decision_keeps_every_candidate_and_its_reports(setup):
    _v, rid = setup
    with session_scope() as s:
        d = repo.create_decision(s, [rid], "p" * 64, CANDIDATES, "threshold_calibration", "cheapest first")
    assert d.report_ids == [rid] and d.status is DecisionStatus.planned and d.chosen == "threshold_calibration"
    assert [c.treatment for c in d.candidates] == ["threshold_calibration", "head_retrain", "full_finetune"]
    assert d.candidates[0].p_success == 0.6 and d.candidates[1].needs_approval and not d.candidates[2].applicable
    with session_scope(read_only=True) as s:
        ev = audit.list_events(s, entity_type="decision")[0]
    assert ev.action == "decision.create" and len(ev.new["candidates"]) == 3 and ev.reason == "cheapest first"


def test_decision_input_errors(setup):
    _, rid = setup
    with pytest.raises(NotFound, match="report_ids"), session_scope() as s:
        repo.create_decision(s, [rid, 999], "p" * 64, CANDIDATES, None, "")
    with pytest.raises(InvalidInput, match="chosen"), session_scope() as s:
        repo.create_decision(s, [rid], "p" * 64, CANDIDATES, "magic", "")
    with pytest.raises(InvalidInput, match=r"candidates\[0\].p_success"), session_scope() as s:
        repo.create_decision(s, [rid], "p" * 64, [{"treatment": "t", "p_success": float("nan")}], None, "")


def test_approval_and_rejection(setup):
    _, rid = setup
    with session_scope() as s:
        d1 = repo.create_decision(s, [rid], "p" * 64, CANDIDATES, "head_retrain", "", "awaiting_approval")
        d2 = repo.create_decision(s, [rid], "p" * 64, CANDIDATES, "head_retrain", "", "awaiting_approval")
        ok = repo.approve_decision(s, d1.id, "carol", "fine")
        no = repo.reject_decision(s, d2.id, "dave", "too costly")
    assert ok.status is DecisionStatus.planned and ok.approvals[0].actor == "carol"
    assert no.status is DecisionStatus.rejected and no.approvals[0].reason == "too costly"
    with pytest.raises(InvalidInput, match="not awaiting approval"), session_scope() as s:
        repo.approve_decision(s, d1.id, "carol")
    with pytest.raises(InvalidInput, match="final"), session_scope() as s:
        repo.set_decision_status(s, d2.id, "running")


def test_runs_record_outcomes_and_feed_history(setup):
    v, rid = setup
    with session_scope() as s:
        d = repo.create_decision(s, [rid], "p" * 64, CANDIDATES, "threshold_calibration", "")
        repo.set_decision_status(s, d.id, "running")
        run = repo.start_run(s, d.id, "threshold_calibration", {"target": "Effusion"}, v.id)
        out = repo.derive_version(s, v.id, thresholds={"Effusion": 0.6}, treatment_run_id=run.id, decision_id=d.id)
        done = repo.finish_run(s, run.id, "accepted", out.id, wall_seconds=1.5, trainable_parameters=0,
                               metrics={"fpr": 0.08}, artifacts={"thresholds": {"Effusion": 0.6}})
        repo.set_decision_status(s, d.id, "succeeded", reason="gate passed")
    assert done.outcome is RunOutcome.accepted and done.output_version_id == out.id and done.wall_seconds == 1.5
    with session_scope(read_only=True) as s:
        hist = repo.list_runs(s, treatment="threshold_calibration")
        lin = repo.lineage(s, out.id)
    assert [r.id for r in hist] == [run.id] and hist[0].metrics == {"fpr": 0.08}
    assert lin.version.treatment_run_id == run.id and lin.version.decision_id == d.id
    with pytest.raises(InvalidInput, match="already finished"), session_scope() as s:
        repo.finish_run(s, run.id, "failed")


def test_stale_runs_are_abandoned(setup):
    v, _ = setup
    with session_scope() as s:
        stale = repo.start_run(s, None, "head_retrain", {}, v.id)
        fresh = repo.start_run(s, None, "head_retrain", {}, v.id)
    with session_scope() as s:
        repo.heartbeat_run(s, fresh.id)
        gone = repo.mark_abandoned_runs(s, older_than=timedelta(minutes=10), now=utcnow() + timedelta(minutes=30))
    assert set(gone) == {stale.id, fresh.id}
    with session_scope() as s:
        assert repo.get_run(s, stale.id).outcome is RunOutcome.abandoned
        assert repo.mark_abandoned_runs(s) == []
        assert [e.action for e in audit.list_events(s, entity_type="treatment_run", entity_id=stale.id)] == [
            "run.start", "run.abandon"]


def test_latest_evidence_is_found_by_the_database_newest_first_and_only_on_every_field(setup):
    """The finder behind planning's shift-diagnosis lookup: a JSON-path query on SQLite and PostgreSQL,
    checked against a brute-force scan of the same decisions."""
    _v, rid = setup
    diagnoses = [{"level": "input", "version_id": 1, "site": "site-b", "strength": 0.9},
                 {"level": "feature", "version_id": 2, "site": "site-b"},
                 {"level": "input", "version_id": 1, "site": "site-e"},
                 {"level": "head", "version_id": 1, "site": "site-b", "strength": 0.4},
                 None]
    with session_scope() as s:
        ids = []
        for diag in diagnoses:
            d = repo.create_decision(s, [rid], "p" * 64, CANDIDATES, "threshold_calibration", "x")
            if diag is not None:
                repo.add_decision_evidence(s, d.id, "shift_diagnosis", diag)
            ids.append(d.id)
        repo.add_decision_evidence(s, ids[4], "channel_evidence", {"version_id": 1, "site": "site-b"})
    with session_scope(read_only=True) as s:
        for version_id in (1, 2, 3):
            for site in ("site-b", "site-e", "site-z"):
                want = next(((d.id, d.evidence["shift_diagnosis"]) for d in reversed(repo.list_decisions(s))
                             if (d.evidence or {}).get("shift_diagnosis", {}).get("version_id") == version_id
                             and d.evidence["shift_diagnosis"].get("site") == site), None)
                got = repo.latest_evidence(s, "shift_diagnosis", version_id=version_id, site=site)
                assert got == want, (version_id, site)
        assert repo.latest_evidence(s, "shift_diagnosis", version_id=1, site="site-b") == (ids[3], diagnoses[3])
