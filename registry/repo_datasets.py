"""Finders for registered data sets (the rows that say where a version's data came from)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr.errors import NotFound
from registry.entities import DatasetEntity, DatasetRole
from registry.models import DatasetRow


def get_dataset(session: Session, dataset_id: int) -> DatasetEntity:
    row = session.get(DatasetRow, dataset_id)
    if row is None:
        raise NotFound(f"no dataset with id {dataset_id}", field="dataset")
    return row.to_entity()


def list_datasets(
    session: Session, *, role: DatasetRole | str | None = None, ids: Sequence[int] | None = None,
    site: str | None = None,
) -> list[DatasetEntity]:
    """Data sets by role and/or id, oldest first; `site` filters on `source["site"]`."""
    q = select(DatasetRow).order_by(DatasetRow.id)
    if role is not None:
        q = q.where(DatasetRow.role == DatasetRole(role))
    if ids is not None:
        q = q.where(DatasetRow.id.in_(list(ids)))
    out = [r.to_entity() for r in session.scalars(q)]
    return [d for d in out if d.source.get("site") == site] if site is not None else out
