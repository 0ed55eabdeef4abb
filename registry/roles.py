"""Database roles: a read-only auditor on PostgreSQL.

An auditor must be able to read everything and change nothing, and that must
hold in the database, not only in this program (21 CFR 11.10(g), authority
checks): `grant_auditor` creates (or updates) a role with CONNECT on the
database, USAGE on the registry's schema and SELECT on the registry's tables
(webhook signing keys excepted: `SECRET_COLUMNS`, every other column of their table) —
no INSERT, UPDATE, DELETE, TRUNCATE, no sequence use, no CREATE — makes its
transactions read-only by default, and grants SELECT on tables that later
migrations create (default privileges of the role that runs the migrations).
Running it again is harmless (after `decide db upgrade`, for instance).

SQLite has no roles: an auditor there gets a copy of the file, or file
permissions; `grant_auditor` refuses with that advice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import make_url

from cxr.errors import InvalidInput
from registry.models import Base
from registry.session import database_url, get_engine

#: a plain, unquoted PostgreSQL identifier (no quoting games with role names)
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: the registry's tables besides the ORM's (check_schema reads it)
EXTRA_TABLES = ("alembic_version",)
#: columns an auditor may not read: webhook signing keys (an auditor reads every other column of their table)
SECRET_COLUMNS = {"notify_endpoints": ("secret", "previous_secret")}


@dataclass(frozen=True)
class AuditorGrant:
    role: str
    database: str
    schema: str
    created: bool
    login: bool
    tables: list[str] = field(default_factory=list)


def registry_tables() -> list[str]:
    """Every table of the registry (ORM metadata plus Alembic's version table), sorted."""
    return sorted({t.name for t in Base.metadata.sorted_tables} | set(EXTRA_TABLES))


def grant_auditor(role: str, *, url: str | None = None, login: bool = True) -> AuditorGrant:
    """Create or update `role` with SELECT only on the registry tables (PostgreSQL); see the module doc.

    Raises `InvalidInput` on SQLite, for a role name that is not a plain lower-case identifier, or for
    a role that is a superuser or owns registry tables (it could write whatever it is granted).
    """
    url = database_url(url)
    if make_url(url).get_backend_name() != "postgresql":
        raise InvalidInput("SQLite has no roles: give an auditor a copy of the registry file, or read-only file "
                           "permissions (or move the registry to PostgreSQL)", field="database")
    if not _ROLE.match(role):
        raise InvalidInput("a role name is lower-case letters, digits and _, not starting with a digit "
                           "(at most 63 characters)", field="role")
    engine = get_engine(url)
    q = engine.dialect.identifier_preparer.quote
    tables = registry_tables()
    with engine.begin() as c:
        db = c.execute(text("SELECT current_database()")).scalar_one()
        schema = c.execute(text("SELECT current_schema()")).scalar_one()
        found = c.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": role}).one_or_none()
        if found is not None and found.rolsuper:
            raise InvalidInput(f"{role} is a superuser: no grant can make it read-only", field="role")
        owned = c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = :s AND tableowner = :r"),
                          {"s": schema, "r": role}).scalars().all()
        if owned:
            raise InvalidInput(f"{role} owns registry tables ({', '.join(sorted(owned)[:3])}…): an owner can "
                               "always write them", field="role")
        r, s = q(role), q(schema)
        if found is None:
            c.execute(text(f"CREATE ROLE {r} {'LOGIN' if login else 'NOLOGIN'}"))
        else:
            c.execute(text(f"ALTER ROLE {r} {'LOGIN' if login else 'NOLOGIN'}"))
        c.execute(text(f"ALTER ROLE {r} SET default_transaction_read_only = on"))
        c.execute(text(f"GRANT CONNECT ON DATABASE {q(db)} TO {r}"))
        c.execute(text(f"GRANT USAGE ON SCHEMA {s} TO {r}"))
        c.execute(text(f"REVOKE CREATE ON SCHEMA {s} FROM {r}"))
        present = set(c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema})
                      .scalars())
        tables = [t for t in tables if t in present]
        for t in tables:
            c.execute(text(f"REVOKE ALL ON TABLE {s}.{q(t)} FROM {r}"))
            if t in SECRET_COLUMNS:  # every column but the secrets (a column grant, not a view)
                cols = ", ".join(q(col.name) for col in Base.metadata.tables[t].columns
                                 if col.name not in SECRET_COLUMNS[t])
                c.execute(text(f"GRANT SELECT ({cols}) ON TABLE {s}.{q(t)} TO {r}"))
            else:
                c.execute(text(f"GRANT SELECT ON TABLE {s}.{q(t)} TO {r}"))
        c.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {r}"))
        c.execute(text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {r}"))
    return AuditorGrant(role, db, schema, found is None, login, tables)
