"""A registry holding one version (cxr:1) for report-ingest tests, on SQLite and on PostgreSQL
(when DECIDE_TEST_POSTGRES_URL is set), built once per test module and pointed at per test.

`tests/decision/conftest.py` makes the fixtures available to the decision tests.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

PG_ENV = "DECIDE_TEST_POSTGRES_URL"
BACKENDS = ["sqlite"] + (["postgres"] if os.environ.get(PG_ENV) else [])
PATHOLOGIES = ["Atelectasis", "Effusion", "Cardiomegaly"]


@dataclass
class IngestRegistry:
    url: str
    home: Path
    backend: str

    def counts(self) -> tuple[int, int]:
        """(error reports, audit events) stored now."""
        from registry.models import AuditEventRow, ReportRow
        from registry.session import session_scope

        with session_scope(self.url, read_only=True) as s:
            return (s.scalar(select(func.count()).select_from(ReportRow)),
                    s.scalar(select(func.count()).select_from(AuditEventRow)))


@pytest.fixture(scope="module", params=BACKENDS)
def ingest_registry(request, tmp_path_factory):
    from registry.session import dispose_engines, init_registry, session_scope
    from tests.registry import factories as f

    home = tmp_path_factory.mktemp("ingest-home")
    admin, name = None, None
    if request.param == "sqlite":
        url = f"sqlite:///{home / 'registry.db'}"
    else:
        admin_url = make_url(os.environ[PG_ENV])
        name = f"decide_ingest_{uuid.uuid4().hex[:10]}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = admin_url.set(database=name).render_as_string(hide_password=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECIDE_HOME", str(home))
        mp.setenv("DECIDE_ACTOR", "tester")
        init_registry(url)
        with session_scope(url) as s:
            f.version(s, pathologies=PATHOLOGIES)
    yield IngestRegistry(url, home, request.param)
    dispose_engines()
    if admin is not None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def on_registry(ingest_registry, monkeypatch):
    """Point DECIDE_HOME / DECIDE_DATABASE_URL (the CLI's registry) at the module's registry."""
    monkeypatch.setenv("DECIDE_HOME", str(ingest_registry.home))
    monkeypatch.setenv("DECIDE_DATABASE_URL", ingest_registry.url)
    return ingest_registry
