"""A read-only auditor: read-only sessions refuse writes in the database (SQLite and PostgreSQL), and on
PostgreSQL `decide db grant-auditor ROLE` makes a role that can read every registry table and write none —
proven by connecting as that role and trying every kind of write (skipped without DECIDE_TEST_POSTGRES_URL)."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from cli.app import app
from decision import error_reports
from registry import audit, repo
from registry.entities import DecisionStatus
from registry.roles import SECRET_COLUMNS, grant_auditor, registry_tables
from registry.session import ReadOnly, session_scope
from tests.registry import factories as f

runner = CliRunner()


def _seed() -> None:
    with session_scope() as s:
        v = f.version(s)
        rid = error_reports.ingest(s, [error_reports.parse_report(f.report())]).ids[0]
        repo.create_decision(s, [rid], "p" * 64, [{"treatment": "head_retrain"}], "head_retrain", "cheapest",
                             DecisionStatus.planned)
        repo.start_run(s, None, "head_retrain", {}, v.id)


def test_read_only_sessions_refuse_writes_in_the_database(db_url):
    _seed()
    with session_scope(read_only=True) as s:
        before = (len(repo.list_reports(s)), len(audit.list_events(s)))
    for write in ("UPDATE error_reports SET notes = 'edited'", "DELETE FROM audit_events",
                  "INSERT INTO models (name, description, created_by, created_at) VALUES ('x', '', 'x', '2026-01-01')"):
        with pytest.raises(ReadOnly) as err, session_scope(read_only=True) as s:
            s.execute(text(write))
        assert err.value.exit_code == 2 and "refused a write" in str(err.value)
    with pytest.raises(ReadOnly), session_scope(read_only=True) as s:
        repo.set_report_status(s, 1, "rejected", reason="an auditor may not")
    with session_scope(read_only=True) as s:
        assert (len(repo.list_reports(s)), len(audit.list_events(s))) == before
        assert repo.list_reports(s)[0].notes == "" and audit.verify_chain(s).ok
    with session_scope() as s:  # the pooled connection is writable again for a normal session
        repo.set_report_status(s, 1, "rejected", reason="by the operator")


@pytest.fixture
def pg_url(db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL (DECIDE_TEST_POSTGRES_URL)")
    return db_url


@pytest.fixture
def auditor(pg_url):
    """A fresh role name; the role and its grants are dropped afterwards."""
    role = f"auditor_{uuid.uuid4().hex[:10]}"
    yield role
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if c.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
            c.execute(text(f'DROP OWNED BY "{role}"'))
            c.execute(text(f'DROP ROLE "{role}"'))
    admin.dispose()


def _as(url: str, role: str) -> str:
    return make_url(url).set(username=role, password=None).render_as_string(hide_password=False)


def _refused(conn, sql: str) -> str:
    with pytest.raises(DBAPIError) as err:
        conn.execute(text(sql))
    return err.value.orig.sqlstate


def test_grant_auditor_role_reads_everything_and_the_database_refuses_every_write(pg_url, auditor, monkeypatch):
    _seed()
    res = runner.invoke(app, ["db", "grant-auditor", auditor, "--json"])
    assert res.exit_code == 0, res.output
    grant = json.loads(res.stdout)
    assert grant["created"] and set(grant["tables"]) == set(registry_tables())
    assert grant_auditor(auditor).created is False  # running it again is harmless
    engine = create_engine(_as(pg_url, auditor), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            assert c.execute(text("SELECT current_user")).scalar_one() == auditor
            # Read-only by default: a write fails before privileges are even looked at …
            assert _refused(c, "DELETE FROM audit_events") == "25006"
            # … and with that default switched off (the role may do so), the privileges alone refuse.
            c.execute(text("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"))
            seqs = c.execute(text("SELECT sequence_name FROM information_schema.sequences")).scalars().all()
            for t in registry_tables():
                if t in SECRET_COLUMNS:  # every column but the signing keys, which the database refuses
                    cols = [col for col in c.execute(text("SELECT column_name FROM information_schema.columns "
                                                          "WHERE table_name = :t"), {"t": t}).scalars()
                            if col not in SECRET_COLUMNS[t]]
                    c.execute(text(f'SELECT {", ".join(cols)} FROM "{t}" LIMIT 1')).all()
                    for secret in SECRET_COLUMNS[t]:
                        assert _refused(c, f'SELECT "{secret}" FROM "{t}"') == "42501", secret
                    assert _refused(c, f'SELECT * FROM "{t}"') == "42501"
                else:
                    c.execute(text(f'SELECT * FROM "{t}" LIMIT 1')).all()  # reading works
                col = c.execute(text("SELECT column_name FROM information_schema.columns WHERE table_name = :t "
                                     "ORDER BY ordinal_position LIMIT 1"), {"t": t}).scalar_one()
                for write in (f'INSERT INTO "{t}" DEFAULT VALUES', f'UPDATE "{t}" SET "{col}" = "{col}"',
                              f'DELETE FROM "{t}"', f'TRUNCATE "{t}"',
                              f'ALTER TABLE "{t}" ADD COLUMN sneaky integer', f'DROP TABLE "{t}"',
                              f'CREATE INDEX sneaky_idx ON "{t}" ("{col}")'):
                    assert _refused(c, write) == "42501", write  # insufficient privilege
                if t in SECRET_COLUMNS:  # with column grants only, PostgreSQL refuses outright
                    assert _refused(c, f'GRANT INSERT ON "{t}" TO "{auditor}"') == "42501"
                else:
                    c.execute(text(f'GRANT INSERT ON "{t}" TO "{auditor}"'))  # only a warning: nothing granted (below)
            for seq in seqs:
                assert _refused(c, f"SELECT nextval('\"{seq}\"')") == "42501"
            assert _refused(c, "CREATE TABLE sneaky (i integer)") == "42501"
            assert _refused(c, "CREATE FUNCTION sneaky() RETURNS int AS 'SELECT 1' LANGUAGE sql") == "42501"
        with engine.connect().execution_options(isolation_level="READ COMMITTED") as c:
            for t in registry_tables():  # a lock that would stall the writers needs a write privilege too
                c.execute(text("SET TRANSACTION READ WRITE"))
                assert _refused(c, f'LOCK TABLE "{t}" IN EXCLUSIVE MODE') == "42501", t
                c.rollback()
            for t in registry_tables():
                for priv in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
                    assert not c.execute(text("SELECT has_table_privilege(:r, :t, :p)"),
                                         {"r": auditor, "t": t, "p": priv}).scalar_one(), (t, priv)
    finally:
        engine.dispose()
    with session_scope(read_only=True) as s:
        assert audit.verify_chain(s).ok and len(repo.list_reports(s)) == 1


def test_the_auditor_commands_run_as_that_role_and_writes_exit_2(pg_url, auditor, monkeypatch, tmp_path):
    _seed()
    grant_auditor(auditor)
    monkeypatch.setenv("DECIDE_DATABASE_URL", _as(pg_url, auditor))
    for args in (["history", "cxr"], ["reports"], ["decisions"], ["show", "cxr:1"], ["lineage", "cxr:1"],
                 ["audit", "verify"], ["audit", "log"], ["costs"]):
        res = runner.invoke(app, [*args, "--json"])
        assert res.exit_code == 0, (args, res.output)
    export = tmp_path / "export.json"
    assert runner.invoke(app, ["export", "--out", str(export)]).exit_code == 0
    assert json.loads(export.read_text())["audit_verification"]["ok"]
    line = tmp_path / "r.jsonl"
    line.write_text(json.dumps(f.report(day=3)) + "\n")
    for args in (["ingest", str(line)], ["rollback", "cxr:1", "--reason", "an auditor tries"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "refused a write" in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1


def test_grant_auditor_refuses_sqlite_and_odd_names(db_url):
    if db_url.startswith("sqlite"):
        res = runner.invoke(app, ["db", "grant-auditor", "auditor"])
        assert res.exit_code == 2 and "SQLite has no roles" in res.output
    res = runner.invoke(app, ["db", "grant-auditor", 'x"; DROP TABLE models; --'])
    assert res.exit_code == 2 and ("role" in res.output or "SQLite" in res.output)
