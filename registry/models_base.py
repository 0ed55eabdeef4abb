"""What every ORM row of the registry stands on: the declarative `Base` with its naming convention,
timezone-aware UTC timestamps, enum columns stored as text, and rows → frozen entities.

`registry/models.py` and `registry/models_jobs.py` both build on it, so neither imports the other's
privates (they once imported each other).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from enum import Enum
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, MetaData
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from cxr import clock

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DIGEST = 64  # hex sha256


def utcnow() -> datetime:
    return clock.now()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite as on PostgreSQL.

    SQLite keeps no offset, so values are normalised to UTC before they are
    stored and UTC is re-attached when they are read. Naive datetimes are
    refused: an ambiguous time in an audit trail is a bug.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: registry timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def entity_from_row(row: Any, entity: type, **overrides: Any) -> Any:
    """Build a frozen entity from the row's attributes of the same names (JSON values copied)."""
    values = {}
    for f in dataclasses.fields(entity):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        else:
            v = getattr(row, f.name)
            values[f.name] = dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v
    return entity(**values)


def enum_column(e: type[Enum], name: str) -> SAEnum:
    # Stored as the value text (VARCHAR), validated in Python; no native type to migrate.
    return SAEnum(
        e, name=name, native_enum=False, create_constraint=False, length=24,
        values_callable=lambda cls: [m.value for m in cls], validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}
