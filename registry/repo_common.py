"""Small helpers shared by the repository modules: actor, code version, dialect-aware upserts."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from cxr.errors import InvalidInput
from registry.settings import Settings, get_settings


def settings() -> Settings:
    """`get_settings()`, cached per value of the DECIDE_* variables.

    Reading and checking the variables is cheap but runs on every write; the variables
    still take effect at once when they change.
    """
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("DECIDE_")))
    found = _SETTINGS.get(key)
    if found is None:
        found = _SETTINGS[key] = get_settings()
    return found


_SETTINGS: dict[tuple, Settings] = {}


#: the width of every `created_by` / `actor` column
MAX_ACTOR = 128


def actor_of(actor: str | None) -> str:
    """The acting user: the argument, else DECIDE_ACTOR, else the OS user (recorded with every write).

    Raises `InvalidInput` for a name that is longer than its column or holds control, bidi or other
    invisible characters: it is shown to auditors in terminals and reports.
    """
    who = actor or settings().resolved_actor
    bad = next((c for c in who if unicodedata.category(c)[0] in "CZ" and c != " "), None)
    if not who.strip() or len(who) > MAX_ACTOR or bad is not None:
        why = (f"holds U+{ord(bad):04X}, which is not printable" if bad is not None
               else f"must be 1 to {MAX_ACTOR} characters")
        raise InvalidInput(f"the actor name {why}", field="DECIDE_ACTOR" if actor is None else "actor")
    return who


@functools.cache
def code_version() -> str:
    """`git describe --always --dirty` of this checkout, else the installed package version."""
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                capture_output=True, text=True, timeout=5, check=False,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()[:128]
        except (OSError, subprocess.SubprocessError):
            pass
    from importlib import metadata  # scans the installed packages: only when there is no checkout

    try:
        return metadata.version("cxr-decide")
    except metadata.PackageNotFoundError:
        return "unknown"


def insert_ignore(session: Session, model: type, rows: list[dict[str, Any]] | dict[str, Any],
                  returning: tuple = ()):
    """`INSERT … ON CONFLICT DO NOTHING` on SQLite and PostgreSQL (races end in the existing row).

    With `returning` columns, the result holds only the rows actually inserted.
    """
    from sqlalchemy.dialects import postgresql, sqlite  # per dialect (the PostgreSQL one pulls in asyncio drivers)

    name = session.get_bind().dialect.name
    ins = (postgresql.insert if name == "postgresql" else sqlite.insert)(model.__table__)  # Core: keeps rowcount
    ins = ins.on_conflict_do_nothing()
    if returning:
        ins = ins.returning(*returning)
    return session.execute(ins, rows)


def finite_or_none(value: Any, field: str, *, lo: float | None = None, hi: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"expected a number or null, got {type(value).__name__}", field=field)
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise InvalidInput("must be finite (use null when undefined)", field=field)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidInput(f"{v} outside [{lo}, {hi}]", field=field)
    return v


def count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"expected an integer ≥ 0, got {value!r}", field=field)
    return value

