"""Repository functions of monitoring without labels: version references and unlabelled windows.

Every write records its audit event in the same transaction. A version has at most one reference: two
workers computing it at once both get the one that was committed first (`INSERT … ON CONFLICT DO
NOTHING`), and the blob of the other stays an orphan for `decide gc`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound
from registry import audit
from registry.entities_label_free import ReferenceEntity, WindowEntity
from registry.models import VersionRow
from registry.models_base import utcnow
from registry.models_label_free import ReferenceRow, WindowRow
from registry.repo_common import actor_of, insert_ignore


def add_reference(session: Session, version_id: int, digest: str, summary: Mapping[str, Any], *,
                  actor: str | None = None) -> ReferenceEntity:
    """Record `version_id`'s reference statistics (the blob `digest`, already recorded); the one committed
    first stands. Raises `NotFound` for an unknown version."""
    if session.get(VersionRow, version_id) is None:
        raise NotFound(f"no model version with id {version_id}", field="version")
    who = actor_of(actor)
    row = {"version_id": version_id, "digest": digest, "summary": audit.jsonable(dict(summary)),
           "created_by": who, "created_at": utcnow()}
    inserted = insert_ignore(session, ReferenceRow, row, returning=(ReferenceRow.version_id,)).first()
    if inserted is not None:
        audit.record(session, "reference.create", "model_version", version_id,
                     new={"digest": digest, "summary": row["summary"]},
                     reason="reference statistics from the version's calibration split", actor=who)
    session.flush()
    found = get_reference(session, version_id)
    assert found is not None  # inserted now, or by another transaction first
    return found


def get_reference(session: Session, version_id: int) -> ReferenceEntity | None:
    """The version's reference statistics, or None when they were never computed."""
    row = session.get(ReferenceRow, version_id)
    return None if row is None else row.to_entity()


def record_window(session: Session, *, version_id: int, site: str, window_start: datetime, window_end: datetime,
                  n_studies: int, shifted: bool, alpha: float, tests: Mapping[str, Any],
                  estimates: Mapping[str, Any], ood: Mapping[str, Any], moved: Sequence[Any] = (),
                  dataset_id: int | None = None, report_id: int | None = None,
                  actor: str | None = None) -> WindowEntity:
    """Record what the label-free monitor found for one unlabelled window; audited."""
    if window_end <= window_start:
        raise InvalidInput("the window must end after it starts", field="window_end")
    if n_studies < 0:
        raise InvalidInput("must be ≥ 0", field="n_studies")
    who = actor_of(actor)
    row = WindowRow(version_id=version_id, site=site, window_start=window_start, window_end=window_end,
                    n_studies=n_studies, shifted=bool(shifted), alpha=float(alpha), tests=audit.jsonable(dict(tests)),
                    estimates=audit.jsonable(dict(estimates)), ood=audit.jsonable(dict(ood)),
                    moved=audit.jsonable(list(moved)), dataset_id=dataset_id, report_id=report_id, realised={},
                    created_by=who, created_at=utcnow())
    session.add(row)
    session.flush()
    audit.record(session, "window.record", "unlabelled_window", row.id, new={
        "version_id": version_id, "site": site, "window": [window_start, window_end], "n_studies": n_studies,
        "shifted": bool(shifted), "report_id": report_id}, reason=str(tests.get("summary", "")), actor=who)
    return row.to_entity()


def link_window_report(session: Session, window_id: int, report_id: int, *, actor: str | None = None) -> WindowEntity:
    """Name the `distribution_shift` report the window caused."""
    row = _window_row(session, window_id)
    old, row.report_id = row.report_id, report_id
    audit.record(session, "window.report", "unlabelled_window", window_id, old={"report_id": old},
                 new={"report_id": report_id}, actor=actor)
    session.flush()
    return row.to_entity()


def set_window_realised(session: Session, window_id: int, realised: Mapping[str, Any], *,
                        actor: str | None = None) -> WindowEntity:
    """Store, once labels for the window arrived, each estimate against what was realised; audited."""
    row = _window_row(session, window_id)
    old, row.realised = dict(row.realised or {}), audit.jsonable(dict(realised))
    audit.record(session, "window.realised", "unlabelled_window", window_id, old=old or None, new=row.realised,
                 reason="labels for the window arrived", actor=actor)
    session.flush()
    return row.to_entity()


def list_windows(session: Session, *, site: str | None = None, version_ids: Sequence[int] | None = None
                 ) -> list[WindowEntity]:
    """Unlabelled windows, oldest first (by window start, then id)."""
    q = select(WindowRow).order_by(WindowRow.window_start, WindowRow.id)
    if site is not None:
        q = q.where(WindowRow.site == site)
    if version_ids is not None:
        q = q.where(WindowRow.version_id.in_(list(version_ids)))
    return [r.to_entity() for r in session.scalars(q)]


def find_window(session: Session, site: str, window_start: datetime, window_end: datetime) -> WindowEntity | None:
    """The newest unlabelled window of `site` over exactly this time window, or None."""
    q = (select(WindowRow).where(WindowRow.site == site, WindowRow.window_start == window_start,
                                 WindowRow.window_end == window_end).order_by(WindowRow.id.desc()).limit(1))
    row = session.scalars(q).first()
    return None if row is None else row.to_entity()


def _window_row(session: Session, window_id: int) -> WindowRow:
    row = session.get(WindowRow, window_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no unlabelled window with id {window_id}", field="window")
    return row
