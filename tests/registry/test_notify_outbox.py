"""The notification outbox: each change a person must hear about writes its event in the change's own
transaction (no commit, no event), with a thin payload; endpoints refuse bad URLs and secrets, and never
show a secret."""

from __future__ import annotations

import pytest

from cxr.errors import InvalidInput
from decision import error_reports
from registry import audit, repo, repo_notify
from registry.entities import DecisionStatus
from registry.session import session_scope
from tests.registry import factories as f

KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _types() -> list[str]:
    with session_scope(read_only=True) as s:
        return [e.type for e in reversed(repo_notify.list_events(s))]


def _decision(status=DecisionStatus.awaiting_approval, site="site-a") -> int:
    with session_scope() as s:
        if not repo.list_models(s):
            f.version(s)
        rid = error_reports.ingest(s, [error_reports.parse_report(f.report(site=site))]).ids[0]
        d = repo.create_decision(s, [rid], "p" * 64, [{"treatment": "full_retrain", "needs_approval": True}],
                                 "full_retrain", "needs a person", status, actor="alice")
    return d.id


def test_awaiting_approval_then_approval_each_write_one_thin_event(db_url):
    did = _decision()
    with session_scope() as s:
        repo.approve_decision(s, did, actor="bob")
    with session_scope(read_only=True) as s:
        events = list(reversed(repo_notify.list_events(s)))
    assert [e.type for e in events] == ["decision.awaiting_approval", "decision.approved"]
    first = events[0]
    assert first.uid.startswith("msg_") and first.site == "site-a"
    assert first.payload["decision_id"] == did and first.payload["pathology"] == "Effusion"
    assert first.payload["version"] == "cxr:1" and first.payload["command"].startswith("decide decisions")
    assert "awaits approval" in first.payload["summary"] and "\n" not in first.payload["summary"]
    assert "bob" in events[1].payload["summary"]


def test_rejection_and_exhaustion_are_events(db_url):
    did = _decision()
    with session_scope() as s:
        repo.reject_decision(s, did, actor="bob", reason="too costly")
    other = _decision(DecisionStatus.planned, site="site-b")
    with session_scope() as s:
        repo.set_decision_status(s, other, DecisionStatus.exhausted, reason="nothing passed the gate")
    assert _types() == ["decision.awaiting_approval", "decision.rejected", "decision.exhausted"]


def test_a_rolled_back_transaction_leaves_no_event(db_url):
    did = _decision()
    before = _types()
    with pytest.raises(RuntimeError), session_scope() as s:
        repo.approve_decision(s, did, actor="bob")
        assert len(repo_notify.list_events(s)) == len(before) + 1  # written, in this transaction
        raise RuntimeError("the change fails after its event was written")
    assert _types() == before
    with session_scope(read_only=True) as s:
        assert repo.get_decision(s, did).status is DecisionStatus.awaiting_approval


def test_a_refused_self_approval_is_no_approval_event(db_url):
    did = _decision()
    with pytest.raises(InvalidInput), session_scope() as s:
        repo.approve_decision(s, did, actor="alice")
    assert _types() == ["decision.awaiting_approval"]


def test_promotion_and_rollback_per_site(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        v2 = f.version(s, parent_id=v1.id, payload=b"weights-2")
        repo.set_alias(s, "cxr", "production", v1.id, reason="baseline")
        repo.set_alias(s, "cxr", "production", v2.id, reason="site-b fix", site="site-b")
        repo.rollback(s, v1.id, reason="site-b regressed", site="site-b")
        repo.set_alias(s, "cxr", "staging", v2.id, reason="not production: no event")
    with session_scope(read_only=True) as s:
        events = list(reversed(repo_notify.list_events(s)))
    assert [(e.type, e.site) for e in events] == [
        ("version.promoted", ""), ("version.promoted", "site-b"), ("version.rolled_back", "site-b")]
    assert events[1].payload["version"] == "cxr:2" and "previous" not in events[1].payload
    assert events[2].payload["version"] == "cxr:1" and events[2].payload["previous"] == "cxr:2"
    assert events[2].payload["command"] == "decide history cxr --site site-b"


def test_a_distribution_shift_report_is_an_event_and_a_labelled_one_is_not(db_url):
    with session_scope() as s:
        f.version(s)
        error_reports.ingest(s, [error_reports.parse_report(f.report())])
        shift = f.report(kind="distribution_shift", metric="shift_p", value=0.001, target=0.05, day=1, cases=[])
        rid = error_reports.ingest(s, [error_reports.parse_report(shift)]).ids[0]
        error_reports.ingest(s, [error_reports.parse_report(shift)])  # the same report again: no new event
    with session_scope(read_only=True) as s:
        events = repo_notify.list_events(s)
    assert [(e.type, e.payload["report_id"], e.site) for e in events] == [
        ("report.distribution_shift", rid, "site-a")]
    assert "distribution shift" in events[0].payload["summary"]


def test_endpoints_refuse_plain_http_off_loopback_and_bad_secrets(db_url):
    with session_scope() as s:
        with pytest.raises(InvalidInput, match="https"):
            repo_notify.add_endpoint(s, "http://hooks.example.org/x", KEY)
        with pytest.raises(InvalidInput, match="whsec_") as err:
            repo_notify.add_endpoint(s, "https://hooks.example.org/x", "whsec_tooshort")
        assert "tooshort" not in str(err.value)
        with pytest.raises(InvalidInput, match="unknown event type"):
            repo_notify.add_endpoint(s, "https://hooks.example.org/x", KEY, events=["decision.maybe"])
        for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]/x", "https://hooks.example.org/x"):
            repo_notify.add_endpoint(s, url, KEY)
        ref = repo_notify.add_endpoint(s, "https://h.example.org/", "env:HOOK_KEY", events=["version.promoted"])
    assert ref.secret_source == "env:HOOK_KEY" and ref.events == ["version.promoted"]
    with session_scope(read_only=True) as s:
        shown = repr(repo_notify.list_endpoints(s)) + repr(audit.list_events(s))
    assert KEY not in shown and KEY[6:] not in shown and "stored" in shown
