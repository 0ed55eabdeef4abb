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

Read-only sessions (what the auditor commands use) are read-only in the
database, not only by convention: `SET TRANSACTION READ ONLY` on PostgreSQL,
`PRAGMA query_only` on SQLite; a write inside one fails with `ReadOnly`
(exit 2), as does a write that the database refuses for lack of privileges
(an auditor's role, `registry.roles.grant_auditor`).

Starting fast: checking the schema revision reads `alembic_version` with one
SELECT, and the code's head revision is read from the revision files'
`revision` / `down_revision` assignments (`ast`, no import), so commands that
only read the registry never import Alembic; migrating does.
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from cxr.errors import AlreadyExists, DecideError, InvalidInput, TransientError
from registry.repo_common import settings

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

_READ_ONLY = "decide_read_only"
_ENGINES: dict[str, Engine] = {}
_CHECKED: set[str] = set()
_LOCK = threading.Lock()


class NoRegistry(InvalidInput):
    """No database at the configured place."""


class SchemaBehind(InvalidInput):
    """The database's schema revision is not the code's head."""


class ReadOnly(InvalidInput):
    """The database refused a write: a read-only session, or a role without the privilege (an auditor's)."""


#: SQLSTATE 25006 read_only_sql_transaction, 42501 insufficient_privilege
_REFUSED_WRITE = {"25006", "42501"}


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
        # would have to be upgraded later (SQLITE_BUSY without waiting). query_only is a
        # property of the pooled connection: every transaction sets it.
        read_only = bool(conn.get_execution_options().get(_READ_ONLY))
        conn.exec_driver_sql(f"PRAGMA query_only = {int(read_only)}")
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _install_server_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # The first statement of the transaction (psycopg begins it implicitly right here).
        if conn.get_execution_options().get(_READ_ONLY):
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")


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
                _install_server_hooks(engine)
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
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(importlib.resources.files("migrations")))
    return cfg


def _assigned(tree: ast.Module, name: str) -> object:
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(
            node, "target", None)
        if isinstance(target, ast.Name) and target.id == name and getattr(node, "value", None) is not None:
            return ast.literal_eval(node.value)
    raise ValueError(f"no literal {name}")


@functools.cache
def revisions() -> dict[str, tuple[str, ...]]:
    """Each migration revision id → the revisions it follows, read from the files without importing them."""
    out: dict[str, tuple[str, ...]] = {}
    for f in sorted(Path(str(importlib.resources.files("migrations"))).joinpath("versions").glob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        down = _assigned(tree, "down_revision")
        out[str(_assigned(tree, "revision"))] = tuple(down) if isinstance(down, list | tuple) else (
            (str(down),) if down else ())
    return out


@functools.cache
def head_revision() -> str:
    """The code's newest schema revision (exactly one: two heads is a bug in the migrations)."""
    try:
        graph = revisions()
        heads = sorted(set(graph) - {d for downs in graph.values() for d in downs})
    except (OSError, SyntaxError, ValueError):  # a revision file not written the usual way: ask Alembic
        from alembic.script import ScriptDirectory

        heads = list(ScriptDirectory.from_config(_alembic_config()).get_heads())
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
        if not inspect(conn).has_table("alembic_version"):
            return None
        found = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    if len(found) > 1:
        raise SchemaBehind(f"database has {len(found)} schema revisions ({', '.join(sorted(found))})",
                           field="database")
    return found[0] if found else None


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
    from alembic import command

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
    from alembic import command

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
        if current not in revisions():
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
    for a unique-constraint race, `TransientError` for a busy database. An
    error with `commit_before_raise` (a refusal that wrote its own audit event)
    commits before it propagates; every other error rolls back.
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
    except DBAPIError as exc:
        session.rollback()
        if _refused_write(exc):
            raise ReadOnly(f"the database refused a write ({'read-only session' if read_only else 'no privilege'}):"
                           f" {_short(exc)}", field="database") from exc
        if isinstance(exc, OperationalError) and (
                "locked" in str(exc.orig) or "could not connect" in str(exc.orig) or exc.connection_invalidated):
            raise TransientError(f"database busy or unreachable: {_short(exc)}") from exc
        raise
    except DecideError as exc:
        # A refusal that is itself recorded (e.g. a four-eyes violation's audit event) must survive it.
        if getattr(exc, "commit_before_raise", False) and not read_only:
            session.commit()
        else:
            session.rollback()
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _refused_write(exc: DBAPIError) -> bool:
    """PostgreSQL's read-only transaction / missing privilege, SQLite's query_only."""
    if getattr(exc.orig, "sqlstate", None) in _REFUSED_WRITE:
        return True
    return "attempt to write a readonly database" in str(exc.orig)


def _short(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
