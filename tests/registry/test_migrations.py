"""The migrations and the ORM agree, migrate both ways, and a stale database is refused clearly."""

from __future__ import annotations

import re

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from registry.models import Base
from registry.session import (
    NoRegistry,
    SchemaBehind,
    check_schema,
    current_revision,
    dispose_engines,
    downgrade,
    get_engine,
    head_revision,
    session_scope,
    upgrade,
)


def _diff(url):
    with get_engine(url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "render_as_batch": url.startswith("sqlite")})
        return compare_metadata(ctx, Base.metadata)


def test_one_head_with_a_readable_id():
    from pathlib import Path

    import migrations

    files = sorted(p.stem for p in (Path(migrations.__file__).parent / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert head_revision() == files[-1]
    assert re.fullmatch(r"\d{4}_[a-z0-9_]+", head_revision())


def test_step_down_to_the_first_revision_and_back(db_url):
    downgrade(db_url, "0001_initial")
    assert current_revision(db_url) == "0001_initial"
    tables = set(inspect(get_engine(db_url)).get_table_names())
    assert "model_versions" in tables and not tables & {"schedules", "scheduler_leases", "job_passes"}
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    assert _diff(db_url) == []


def test_migrated_schema_matches_the_orm(db_url):
    assert current_revision(db_url) == head_revision()
    assert _diff(db_url) == []


def test_upgrade_downgrade_to_base_upgrade(db_url):
    downgrade(db_url, "base")
    assert current_revision(db_url) is None
    assert set(inspect(get_engine(db_url)).get_table_names()) <= {"alembic_version"}
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    assert _diff(db_url) == []


def test_downgraded_to_base_is_no_registry(db_url):
    downgrade(db_url, "base")
    dispose_engines()
    with pytest.raises(NoRegistry, match="decide init"), session_scope(db_url):
        pass
    upgrade(db_url)
    check_schema(db_url)  # at head again: accepted


def test_behind_database_is_refused_with_the_upgrade_hint(db_url, monkeypatch):
    dispose_engines()
    monkeypatch.setattr("registry.session.head_revision", lambda: "0099_next")  # as if the code moved on
    hint = rf"behind \(at {head_revision()}.*back up, then run `decide db upgrade`"
    with pytest.raises(SchemaBehind, match=hint) as err:
        check_schema(db_url)
    assert err.value.exit_code == 2


def test_unknown_revision_is_called_newer(db_url):
    with get_engine(db_url).begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_future'")
    dispose_engines()
    with pytest.raises(SchemaBehind, match="does not know"):
        check_schema(db_url)
    with get_engine(db_url).begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()})


def test_missing_sqlite_file_says_run_init(tmp_path):
    url = f"sqlite:///{tmp_path / 'nope' / 'registry.db'}"
    with pytest.raises(NoRegistry, match="run `decide init`") as err:
        check_schema(url)
    assert err.value.exit_code == 2
    assert not (tmp_path / "nope").exists()  # nothing created on the way


def test_sqlite_pragmas(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    with get_engine(url).connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
