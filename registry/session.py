"""Engines, the one session helper, and schema upgrades run from code.

`session_scope()` is the only way into the database (Optuna's shape): it
commits on success, rolls back on any error, always closes, and turns driver
errors into ours (`IntegrityError` → `AlreadyExists`, a busy SQLite file →
`TransientError`). Before the first session on a URL it checks that the
database exists and is at the migrations' head, so a stale database fails
with "back up, then run `decide db upgrade`" instead of a confusing SQL error.

SQLite: WAL, foreign keys on, `synchronous=NORMAL`, a busy timeout, and
writers start with `BEGIN IMMEDIATE` (SQLAlchemy's documented pysqlite
recipe) so that concurrent writers queue on the write lock instead of failing
when a read transaction tries to upgrade itself. Read-only sessions use a
plain deferred `BEGIN` and never block writers.
"""

from __future__ import annotations

import importlib.resources
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from cxr.errors import AlreadyExists, InvalidInput, TransientError
from registry.repo_common import settings

log = logging.getLogger(__name__)

_READ_ONLY = "decide_read_only"
_ENGINES: dict[str, Engine] = {}
_CHECKED: set[str] = set()
_LOCK = threading.Lock()


class NoRegistry(InvalidInput):
    """No database at the configured place."""


class SchemaBehind(InvalidInput):
    """The database's schema revision is not the code's head."""


def database_url(url: str | None = None) -> str:
    return url or settings().db_url


def _sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # pragma: no cover - exercised by every test
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # IMMEDIATE takes the write lock now: a writer never holds a read snapshot that
        # would have to be upgraded later (SQLITE_BUSY without waiting).
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process (pools are per engine)."""
    url = database_url(url)
    with _LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"timeout": 30})
                _install_sqlite_hooks(engine)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            _ENGINES[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (tests, forks)."""
    with _LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()
        _CHECKED.clear()


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(importlib.resources.files("migrations")))
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    if len(heads) != 1:  # MLflow's rule: two heads is a bug in the migrations
        raise RuntimeError(f"migrations have {len(heads)} heads: {heads}")
    return heads[0]


def current_revision(url: str | None = None) -> str | None:
    """The database's schema revision, or None for an empty (or missing) database."""
    url = database_url(url)
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        return None
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _run_alembic(url: str, fn, revision: str) -> None:
    engine = get_engine(url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        fn(cfg, revision)
    with _LOCK:
        _CHECKED.discard(url)


def upgrade(url: str | None = None, revision: str = "head") -> str | None:
    """Migrate to `revision` (default head); create the SQLite file and its folder if needed."""
    url = database_url(url)
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    before = current_revision(url)
    _run_alembic(url, command.upgrade, revision)
    after = current_revision(url)
    log.info("database %s: %s → %s", make_url(url).render_as_string(hide_password=True), before, after)
    return after


def downgrade(url: str | None = None, revision: str = "-1") -> str | None:
    """Migrate down to `revision` (`base` drops every table)."""
    url = database_url(url)
    if current_revision(url) is None:
        raise NoRegistry("no registry here: run `decide init`", field="database")
    _run_alembic(url, command.downgrade, revision)
    return current_revision(url)


def check_schema(url: str | None = None) -> None:
    """Raise `NoRegistry` / `SchemaBehind` unless the database is at head (cached per URL)."""
    url = database_url(url)
    if url in _CHECKED:
        return
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        raise NoRegistry(f"no registry here ({path}): run `decide init`", field="database")
    current = current_revision(url)
    head = head_revision()
    if current is None:
        tables = set(inspect(get_engine(url)).get_table_names()) - {"alembic_version"}
        raise NoRegistry(
            "no registry here: run `decide init`" if not tables else "database has tables but no schema revision",
            field="database",
        )
    if current != head:
        script = ScriptDirectory.from_config(_alembic_config())
        known = {r.revision for r in script.walk_revisions()}
        if current not in known:
            raise SchemaBehind(f"database is at {current}, which this code does not know (newer?)", field="database")
        raise SchemaBehind(
            f"database is behind (at {current}, code expects {head}): back up, then run `decide db upgrade`",
            field="database",
        )
    with _LOCK:
        _CHECKED.add(url)


def init_registry(url: str | None = None) -> str | None:
    """Create DECIDE_HOME (and its blob store) and upgrade the database to head."""
    home = settings().home_dir
    (home / "blobs").mkdir(parents=True, exist_ok=True)
    return upgrade(url)


@contextmanager
def session_scope(url: str | None = None, *, read_only: bool = False, check: bool = True) -> Iterator[Session]:
    """A session in one transaction: commit on success, roll back on error, always close.

    `read_only` sessions take no write lock on SQLite. Raises `NoRegistry` /
    `SchemaBehind` (exit 2) for a missing or stale database, `AlreadyExists`
    for a unique-constraint race, `TransientError` for a busy database.
    """
    url = database_url(url)
    if check:
        check_schema(url)
    engine = get_engine(url)
    bind = engine.execution_options(**{_READ_ONLY: True}) if read_only else engine
    session = Session(bind=bind, expire_on_commit=False, autoflush=True)
    try:
        yield session
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        # Another worker committed the same unique thing first, or a reference is dangling.
        raise AlreadyExists(f"conflicts with an existing row: {_short(exc)}") from exc
    except OperationalError as exc:
        session.rollback()
        if "locked" in str(exc.orig) or "could not connect" in str(exc.orig) or exc.connection_invalidated:
            raise TransientError(f"database busy or unreachable: {_short(exc)}") from exc
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _short(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
