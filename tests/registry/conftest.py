"""Registry test fixtures: every test gets a fresh registry on SQLite, and on PostgreSQL when
`DECIDE_TEST_POSTGRES_URL` is set (`.ci/run` sets it).

SQLite: the schema is migrated once per worker into a template file, copied per test.
PostgreSQL: one database per xdist worker (random name, dropped at the end), migrated
once, and emptied (TRUNCATE … RESTART IDENTITY) before each test, so workers never share rows.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from registry.audit import GENESIS
from registry.models import Base
from registry.session import dispose_engines, upgrade

PG_ENV = "DECIDE_TEST_POSTGRES_URL"
BACKENDS = ["sqlite"] + (["postgres"] if os.environ.get(PG_ENV) else [])


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "registry.db"
    upgrade(f"sqlite:///{path}")
    dispose_engines()  # closes the last connection: the WAL is checkpointed into the file
    return path


@pytest.fixture(scope="session")
def _pg_database(worker_id):
    admin_url = make_url(os.environ[PG_ENV])
    name = f"decide_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    dispose_engines()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _empty_pg(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as c:
        c.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        c.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :h)"), {"h": GENESIS})
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path, monkeypatch, _sqlite_template):
    """A URL of an empty registry at head; also exported as DECIDE_DATABASE_URL (for the CLI, subprocesses)."""
    if request.param == "sqlite":
        home = tmp_path / "home"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(_sqlite_template, home / "registry.db")
        url = f"sqlite:///{home / 'registry.db'}"
    else:
        url = request.getfixturevalue("_pg_database")
        _empty_pg(url)
    monkeypatch.setenv("DECIDE_DATABASE_URL", url)
    yield url
    dispose_engines()
