"""The audit chain: intact chains verify; any edited column or deleted event is named."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

from cli.app import app
from registry import audit, repo
from registry.models import AuditEventRow
from registry.session import session_scope
from tests.registry import factories as f

runner = CliRunner()


@pytest.fixture
def chain(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        v2 = f.version(s, parent_id=v1.id)
        repo.set_alias(s, "cxr", "production", v1.id, reason="first")
        repo.set_alias(s, "cxr", "production", v2.id, reason="second")
    with session_scope(read_only=True) as s:
        return len(audit.list_events(s))


def _tamper(at_seq: int, /, **values):
    with session_scope(check=False) as s:
        s.execute(update(AuditEventRow.__table__).where(AuditEventRow.seq == at_seq).values(**values))


def _verify():
    with session_scope(read_only=True) as s:
        return audit.verify_chain(s)


def test_untouched_chain_verifies_and_cli_exits_0(chain):
    res = _verify()
    assert res.ok and res.checked == chain >= 7
    out = runner.invoke(app, ["audit", "verify"])
    assert out.exit_code == 0 and f"{chain} event(s)" in out.stdout


def test_events_are_hash_linked(chain):
    with session_scope(read_only=True) as s:
        events = audit.list_events(s)
    assert events[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert [e.seq for e in events] == list(range(1, chain + 1))


@pytest.mark.parametrize("column", ["id", "seq", "at", "actor", "action", "entity_type", "entity_id", "old", "new",
                                    "reason", "prev_hash", "hash"])
def test_editing_any_column_is_detected_and_named(chain, column):
    with session_scope(check=False) as s:
        row = s.execute(select(AuditEventRow.__table__).where(AuditEventRow.seq == 3)).one()
    value = {
        "id": row.id + 1000, "seq": 1000, "at": row.at + timedelta(seconds=1), "old": {"status": "forged"},
        "new": {"status": "forged"}, "prev_hash": "f" * 64, "hash": "e" * 64,
    }.get(column, f"{getattr(row, column)}x")
    _tamper(3, **{column: value})
    res = _verify()
    assert not res.ok and res.first_bad_seq == 3, res
    out = runner.invoke(app, ["audit", "verify"])
    assert out.exit_code == 1 and "seq 3" in out.output


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_deleting_an_event_is_detected(chain, which):
    seq = {"first": 1, "middle": 4, "last": chain}[which]
    with session_scope(check=False) as s:
        s.execute(delete(AuditEventRow.__table__).where(AuditEventRow.seq == seq))
    res = _verify()
    assert not res.ok and res.first_bad_seq == seq, res
    assert "missing" in res.reason
    out = runner.invoke(app, ["audit", "verify", "--json"])
    assert out.exit_code == 1 and f"seq {seq}" in out.output


def test_appends_after_verification_keep_the_chain(chain):
    with session_scope() as s:
        audit.record(s, "note", "model", 1, new={"x": 1.5, "when": None}, reason="ünïcode ok")
    assert _verify().ok


def test_failed_transaction_leaves_no_event(chain):
    with pytest.raises(RuntimeError), session_scope() as s:
        audit.record(s, "note", "model", 1)
        raise RuntimeError("boom")
    res = _verify()
    assert res.ok and res.checked == chain
