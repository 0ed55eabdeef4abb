"""Who did what, and who may: the acting user on every write, four-eyes approvals (the refusal itself is
audited), the policy's `approvals.four_eyes = false` for a one-person lab; SQLite and PostgreSQL."""

from __future__ import annotations

import getpass
import json

import pytest
from typer.testing import CliRunner

from cli.app import app
from cxr.errors import InvalidInput
from decision import error_reports
from registry import audit, repo
from registry.entities import DecisionStatus
from registry.repo_decisions import ApprovalRefused
from registry.session import session_scope
from tests.registry import factories as f

runner = CliRunner()


def _waiting(created_by: str | None = None) -> int:
    """A decision awaiting approval, created by `created_by` (None: DECIDE_ACTOR)."""
    with session_scope() as s:
        f.version(s)
        rid = error_reports.ingest(s, [error_reports.parse_report(f.report())]).ids[0]
        d = repo.create_decision(s, [rid], "p" * 64, [{"treatment": "full_retrain", "needs_approval": True}],
                                 "full_retrain", "needs a person", DecisionStatus.awaiting_approval, actor=created_by)
    return d.id


def _events(decision_id: int) -> list:
    with session_scope(read_only=True) as s:
        assert audit.verify_chain(s).ok
        return audit.list_events(s, entity_type="decision", entity_id=decision_id)


def test_the_creator_may_not_approve_and_the_refusal_is_audited(db_url):
    did = _waiting("alice")
    with pytest.raises(ApprovalRefused) as err, session_scope() as s:
        repo.approve_decision(s, did, actor="alice", reason="looks fine to me")
    assert isinstance(err.value, InvalidInput) and err.value.exit_code == 2
    assert "four-eyes" in str(err.value) and "'alice'" in str(err.value)
    with session_scope(read_only=True) as s:
        d = repo.get_decision(s, did)
    assert d.status is DecisionStatus.awaiting_approval and d.approvals == []
    refused = _events(did)[-1]
    assert (refused.action, refused.actor, refused.reason) == ("decision.approval_refused", "alice", "looks fine to me")
    assert refused.new["rule"] == "four_eyes" and refused.new["created_by"] == "alice"
    with session_scope() as s:
        d = repo.approve_decision(s, did, actor="bob", reason="second pair of eyes")
    assert d.status is DecisionStatus.planned and [a.actor for a in d.approvals] == ["bob"]
    approved = _events(did)[-1]
    assert (approved.action, approved.actor) == ("decision.approved", "bob") and "four_eyes" not in approved.new


def test_the_creator_may_reject_and_a_waived_rule_is_recorded(db_url):
    did = _waiting("alice")
    with session_scope() as s:
        assert repo.reject_decision(s, did, actor="alice", reason="withdrawn").status is DecisionStatus.rejected
    did = _waiting("carol")
    with session_scope() as s:
        d = repo.approve_decision(s, did, actor="carol", reason="one-person lab", four_eyes=False)
    assert d.status is DecisionStatus.planned
    assert _events(did)[-1].new["four_eyes"] == "waived by policy"


def test_every_write_carries_the_actor_from_the_environment(db_url, monkeypatch):
    monkeypatch.setenv("DECIDE_ACTOR", "dr.lee")
    did = _waiting()
    with session_scope(read_only=True) as s:
        assert repo.get_decision(s, did).created_by == "dr.lee"
        assert {e.actor for e in audit.list_events(s)} == {"dr.lee"}
    monkeypatch.delenv("DECIDE_ACTOR")
    with session_scope() as s:
        repo.reject_decision(s, did, reason="not needed")
    assert _events(did)[-1].actor == getpass.getuser()
    for bad in ("dr.lee\x1b[2J", "dr.\u202elee", "x" * 129, " "):
        monkeypatch.setenv("DECIDE_ACTOR", bad)
        res = runner.invoke(app, ["approve", str(did), "--reason", "spoofed"])
        assert res.exit_code == 2 and "DECIDE_ACTOR" in res.output, res.output


def _cli(*args, actor: str, monkeypatch, code: int):
    monkeypatch.setenv("DECIDE_ACTOR", actor)
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res


def test_decide_approve_follows_the_policy_in_force(db_url, monkeypatch, tmp_path):
    did = _waiting("alice")
    res = _cli("approve", did, "--reason", "mine", actor="alice", monkeypatch=monkeypatch, code=2)
    assert len(res.output.strip().splitlines()) == 1 and "four-eyes" in res.output
    assert _events(did)[-1].action == "decision.approval_refused"
    out = _cli("approve", did, "--reason", "reviewed", "--json", actor="bob", monkeypatch=monkeypatch, code=0)
    assert json.loads(out.stdout)["status"] == "planned"
    lab = tmp_path / "lab.toml"
    from importlib import resources

    lab.write_text(resources.files("policies").joinpath("default.toml").read_text()
                   .replace("four_eyes = true", "four_eyes = false"))
    monkeypatch.setenv("DECIDE_POLICY", str(lab))
    did = _waiting("alice")
    _cli("approve", did, "--reason", "one-person lab", actor="alice", monkeypatch=monkeypatch, code=0)
    assert _events(did)[-1].new["four_eyes"] == "waived by policy"
