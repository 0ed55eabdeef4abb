"""Fault homes: one template per backend (the tiny registry, warm feature caches, one open report),
copied per test. SQLite always; PostgreSQL when `DECIDE_TEST_POSTGRES_URL` is set (`.ci/run` sets
it): the template is a database, and each test gets `CREATE DATABASE … TEMPLATE` of it (a file copy
on the server, well under a second), dropped at the end."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import build_tiny_home
from tests.faults.fault_env import POLICY, ROOT, TOY, TOY_NAME, FaultHome, ForkServer, ingest_report
from tests.toy_plugins import install_plugin

PG_ENV = "DECIDE_TEST_POSTGRES_URL"
BACKENDS = ["sqlite"] + (["postgres"] if os.environ.get(PG_ENV) else [])


def _warm(home: Path, url: str) -> None:
    """Compute the production version's features of every registered data set once, into the template."""
    from decision.catalog import Catalog
    from registry import repo
    from registry.session import session_scope

    cat = Catalog(home)
    with session_scope(url, read_only=True) as s:
        prod = repo.resolve_version(s, "cxr@production")
        datasets = repo.list_datasets(s)
    weights = cat.weights(prod)
    for d in datasets:
        cat.features(weights, d)


def _build(home: Path, url: str) -> None:
    from registry.session import dispose_engines

    before = os.environ.get("DECIDE_HOME")
    os.environ["DECIDE_HOME"] = str(home)  # init_registry reads it
    try:
        build_tiny_home(home, url)
        _warm(home, url)
        ingest_report(url)
    finally:
        if before is None:
            os.environ.pop("DECIDE_HOME", None)
        else:
            os.environ["DECIDE_HOME"] = before
        dispose_engines()


@pytest.fixture(scope="session")
def fault_toy_dir(tmp_path_factory) -> Path:
    return install_plugin(tmp_path_factory.mktemp("fault-toy"), TOY, "fault_toy_plugin", TOY_NAME)


@pytest.fixture(scope="session")
def fault_server(fault_toy_dir):
    """One fork server per session (its imports overlap with building the templates)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(fault_toy_dir), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("DECIDE_FAILPOINTS", None)
    server = ForkServer(env)
    yield server
    server.close()


@pytest.fixture(scope="session")
def fault_policy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fault-policy") / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="session")
def _sqlite_fault_template(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("fault-sqlite") / "home"
    home.mkdir()
    _build(home, f"sqlite:///{home / 'registry.db'}")
    return home


@pytest.fixture(scope="session")
def _pg_fault_template(tmp_path_factory, worker_id):
    admin_url = make_url(os.environ[PG_ENV])
    name = f"decide_faults_tmpl_{worker_id}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    home = tmp_path_factory.mktemp("fault-pg") / "home"
    home.mkdir()
    try:
        _build(home, admin_url.set(database=name).render_as_string(hide_password=False))
        yield home, name, admin
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def fault_home(request, tmp_path, monkeypatch, fault_server, fault_toy_dir, fault_policy) -> FaultHome:
    """A private fault home on each backend; this process's environment points at it too."""
    from registry.session import dispose_engines

    home = tmp_path / "home"
    db = None
    if request.param == "sqlite":
        shutil.copytree(request.getfixturevalue("_sqlite_fault_template"), home)
        url = f"sqlite:///{home / 'registry.db'}"
    else:
        template, name, admin = request.getfixturevalue("_pg_fault_template")
        shutil.copytree(template, home)
        db = f"decide_faults_{uuid.uuid4().hex[:12]}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{db}" TEMPLATE "{name}"'))
        url = make_url(os.environ[PG_ENV]).set(database=db).render_as_string(hide_password=False)
        monkeypatch.setenv("DECIDE_DATABASE_URL", url)
    monkeypatch.setenv("DECIDE_HOME", str(home))
    monkeypatch.setenv("DECIDE_POLICY", str(fault_policy))
    monkeypatch.delenv("DECIDE_FAILPOINTS", raising=False)
    monkeypatch.syspath_prepend(str(fault_toy_dir))  # the toy's entry point, for in-process passes
    yield FaultHome(home, url, request.param, fault_toy_dir, fault_policy, fault_server)
    dispose_engines()
    if db is not None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
