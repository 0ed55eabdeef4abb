"""The operational sequence enforced by the database: `production` moves only with a grant (a passing gate
verdict, a rollback or an override with a reason); a hand edit is refused at the source, and one made with
the triggers disabled is found by `audit verify`."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from cxr.errors import InvalidInput
from registry import audit, repo
from registry.entities import RunOutcome
from registry.session import get_engine, session_scope
from tests.registry import factories as f


def _two_versions(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        v2 = f.version(s, parent_id=v1.id, payload=b"w2")
        repo.set_alias(s, "cxr", "production", v1.id, reason="baseline")
    return v1, v2


def _sql(db_url, stmt, **params):
    with get_engine(db_url).begin() as c:
        c.execute(text(stmt), params)


def test_a_hand_edited_production_alias_is_refused_by_the_database(db_url):
    v1, v2 = _two_versions(db_url)
    with pytest.raises(DBAPIError, match="promotion_grants"):
        _sql(db_url, "UPDATE aliases SET version_id = :v WHERE name = 'production'", v=v2.id)
    with pytest.raises(DBAPIError, match="promotion_grants"):
        _sql(db_url, "INSERT INTO aliases (model_id, name, site, version_id, updated_by, updated_at) "
                     "VALUES (:m, 'production', 'site-b', :v, 'mallory', CURRENT_TIMESTAMP)", m=1, v=v2.id)
    with session_scope(read_only=True) as s:
        assert repo.resolve_version(s, "cxr@production", site="site-b").id == v1.id
        assert audit.verify_all(s).ok
    # Other aliases are not production: free to move.
    _sql(db_url, "INSERT INTO aliases (model_id, name, site, version_id, updated_by, updated_at) "
                 "VALUES (1, 'staging', '', :v, 'ci', CURRENT_TIMESTAMP)", v=v2.id)


def test_a_gate_grant_needs_an_accepted_run_that_made_the_version(db_url):
    v1, v2 = _two_versions(db_url)
    with session_scope() as s:
        d = repo.create_decision(s, [], "p" * 64, [{"treatment": "t"}], "t", "why")
        run = repo.start_run(s, d.id, "t", {}, v1.id)
        repo.finish_run(s, run.id, RunOutcome.rejected, v2.id, 1.0)
    insert = ("INSERT INTO promotion_grants (model_id, version_id, site, kind, run_id, reason, actor, at) "
              "VALUES (1, :v, '', 'gate', :r, '', 'mallory', CURRENT_TIMESTAMP)")
    with pytest.raises(DBAPIError, match="accepted treatment run"):
        _sql(db_url, insert, v=v2.id, r=run.id)
    with pytest.raises(DBAPIError):  # a rollback or an override must say why
        _sql(db_url, "INSERT INTO promotion_grants (model_id, version_id, site, kind, run_id, reason, actor, at) "
                     "VALUES (1, :v, '', 'override', NULL, '  ', 'mallory', CURRENT_TIMESTAMP)", v=v2.id)
    with pytest.raises(InvalidInput, match="reason"), session_scope() as s:
        repo.set_alias(s, "cxr", "production", v2.id)
    with pytest.raises(InvalidInput, match="run"), session_scope() as s:
        repo.set_alias(s, "cxr", "production", v2.id, grant="gate", reason="trust me")


def test_grants_are_append_only(db_url):
    _two_versions(db_url)
    with pytest.raises(DBAPIError, match="append-only"):
        _sql(db_url, "UPDATE promotion_grants SET reason = 'nothing to see'")
    with pytest.raises(DBAPIError, match="append-only"):
        _sql(db_url, "DELETE FROM promotion_grants")


def test_the_api_records_why_each_move_was_allowed(db_url):
    v1, v2 = _two_versions(db_url)
    with session_scope() as s:
        d = repo.create_decision(s, [], "p" * 64, [{"treatment": "t"}], "t", "why")
        run = repo.start_run(s, d.id, "t", {}, v1.id)
        repo.finish_run(s, run.id, RunOutcome.accepted, v2.id, 1.0)
        repo.set_alias(s, "cxr", "production", v2.id, reason="gate passed", run_id=run.id)
        repo.rollback(s, v1.id, reason="regression", site="site-b")
    with get_engine(db_url).connect() as c:
        grants = c.execute(text("SELECT version_id, site, kind, run_id FROM promotion_grants ORDER BY id")).all()
    assert [tuple(g) for g in grants] == [(v1.id, "", "override", None), (v2.id, "", "gate", run.id),
                                          (v1.id, "site-b", "rollback", None)]


def test_an_edit_made_with_the_triggers_disabled_is_found_by_audit_verify(db_url):
    _v1, v2 = _two_versions(db_url)
    if db_url.startswith("sqlite"):
        _sql(db_url, "DROP TRIGGER trg_aliases_production_update")
    else:
        _sql(db_url, "ALTER TABLE aliases DISABLE TRIGGER trg_aliases_production")
    _sql(db_url, "UPDATE aliases SET version_id = :v WHERE name = 'production'", v=v2.id)
    with session_scope(read_only=True) as s:
        res = audit.verify_all(s)
        assert audit.verify_chain(s).ok  # the chain itself is intact ...
    assert not res.ok  # ... but the alias is not where it says
    assert "alias cxr@production points at cxr:2 but the audit trail says cxr:1" in res.reason
