"""Schedules, scheduler leases and scheduled passes: the registry side of `decide monitor schedule`.

Several scheduler processes may point at one database. APScheduler 3 forbids
sharing a job store between schedulers, so each keeps its own in memory and
they coordinate here instead:

* a **lease** per schedule (`schedule:<id>`): taken by one conditional upsert
  (INSERT, or UPDATE … WHERE the lease expired or is already ours — decided by
  the database, never read-then-write), renewed while a pass runs, released
  after it. A holder that dies stops renewing; its lease expires.
* a **pass** row per (schedule, fire time), UNIQUE: the scheduler whose INSERT
  commits first owns that fire; the other gets IntegrityError (inside a
  SAVEPOINT) and skips it. This holds even when the first has already
  released the lease by the time the second fires.
* **stale passes** (running, no heartbeat for a while: their process was
  killed) become `abandoned`, so they are on record and the next pass
  proceeds.

Schedule changes and pass starts/finishes append audit events in the same
transaction. Lease traffic is not audited: it changes no state a person acts on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound
from registry import audit, repo_notify_events
from registry.entities_jobs import LeaseEntity, PassEntity, PassStatus, ScheduleEntity
from registry.models import utcnow
from registry.models_jobs import LeaseRow, PassRow, ScheduleRow
from registry.repo_common import actor_of
from registry.stale import abandon_silent

_EDITABLE = ("cron", "model", "source", "site", "per_window", "max_cost", "enabled", "next_index", "unlabelled")
_FINAL = (PassStatus.succeeded, PassStatus.failed, PassStatus.abandoned)


# -- schedules ------------------------------------------------------------------
def _check_schedule(values: Mapping[str, Any]) -> None:
    for f in ("cron", "model", "source", "site"):
        if not isinstance(values[f], str) or not values[f].strip():
            raise InvalidInput("must be a non-empty string", field=f)
    if isinstance(values["per_window"], bool) or not isinstance(values["per_window"], int) or values["per_window"] < 1:
        raise InvalidInput(f"expected an integer ≥ 1, got {values['per_window']!r}", field="per_window")
    if values["next_index"] is not None and (not isinstance(values["next_index"], int) or values["next_index"] < 0):
        raise InvalidInput(f"expected an integer ≥ 0, got {values['next_index']!r}", field="next_index")
    mc = values["max_cost"]
    if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int | float) or not math.isfinite(mc)):
        raise InvalidInput(f"expected a finite number or null, got {mc!r}", field="max_cost")


def upsert_schedule(session: Session, name: str, *, cron: str, model: str, source: str, site: str,
                    per_window: int = 1000, max_cost: float | None = None, enabled: bool = True,
                    next_index: int | None = None, unlabelled: bool = False,
                    actor: str | None = None) -> ScheduleEntity:
    """Create the schedule `name`, or update its fields (`next_index` is kept unless given); audited.

    Validates the plain fields (the cron expression is checked by the scheduler,
    which owns its syntax). Two creators racing on one name (two schedulers
    started at once): the second's INSERT fails inside a SAVEPOINT and it updates
    the first's row instead.
    """
    if not isinstance(name, str) or not name.strip() or len(name) > 128:
        raise InvalidInput("a schedule needs a name of 1 to 128 characters", field="name")
    values = {"cron": cron, "model": model, "source": source, "site": site, "per_window": per_window,
              "max_cost": None if max_cost is None else float(max_cost), "enabled": bool(enabled),
              "next_index": next_index, "unlabelled": bool(unlabelled)}
    _check_schedule(values)
    who = actor_of(actor)
    now = utcnow()
    find = select(ScheduleRow).where(ScheduleRow.name == name).with_for_update()
    row = session.scalars(find).one_or_none()
    if row is None:
        row = ScheduleRow(name=name, created_by=who, created_at=now, updated_at=now,
                          **{**values, "next_index": next_index or 0})
        try:
            with session.begin_nested():  # two schedulers started at once: one INSERT wins
                session.add(row)
        except IntegrityError:
            row = session.scalars(find).one()  # the winner's row (committed): update it below
        else:
            audit.record(session, "schedule.create", "schedule", row.id,
                         new={"name": name, **{k: getattr(row, k) for k in _EDITABLE}}, actor=who)
            return row.to_entity()
    old = {k: getattr(row, k) for k in _EDITABLE}
    for k, v in values.items():
        if v is not None or k == "max_cost":
            setattr(row, k, v)
    new = {k: getattr(row, k) for k in _EDITABLE}
    if new != old:
        row.updated_at = now
        audit.record(session, "schedule.update", "schedule", row.id,
                     old={k: v for k, v in old.items() if new[k] != v},
                     new={k: v for k, v in new.items() if old[k] != v}, actor=who)
    session.flush()
    return row.to_entity()


def _schedule_row(session: Session, ref: int | str, *, lock: bool = False) -> ScheduleRow:
    col = ScheduleRow.id if isinstance(ref, int) else ScheduleRow.name
    q = select(ScheduleRow).where(col == ref)
    row = session.scalars(q.with_for_update() if lock else q).one_or_none()
    if row is None:
        raise NotFound(f"no schedule {ref!r}", field="schedule")
    return row


def get_schedule(session: Session, ref: int | str) -> ScheduleEntity:
    """A schedule by id (int) or name (str); `NotFound` otherwise."""
    return _schedule_row(session, ref).to_entity()


def list_schedules(session: Session, *, enabled: bool | None = None) -> list[ScheduleEntity]:
    q = select(ScheduleRow).order_by(ScheduleRow.id)
    if enabled is not None:
        q = q.where(ScheduleRow.enabled == enabled)
    return [r.to_entity() for r in session.scalars(q)]


def delete_schedule(session: Session, ref: int | str, *, actor: str | None = None) -> ScheduleEntity:
    """Delete a schedule (its passes stay, unlinked); audited. Running schedulers drop it at their next sync."""
    row = _schedule_row(session, ref, lock=True)
    gone = row.to_entity()
    session.delete(row)
    session.flush()
    audit.record(session, "schedule.delete", "schedule", gone.id,
                 old={"name": gone.name, **{k: getattr(gone, k) for k in _EDITABLE}}, actor=actor)
    return gone


# -- leases ---------------------------------------------------------------------
def acquire_lease(session: Session, name: str, holder: str, ttl_seconds: float, *,
                  now: datetime | None = None) -> bool:
    """Take (or keep) lease `name` for `ttl_seconds`; False if another holder's lease has not expired.

    One statement: INSERT … ON CONFLICT (name) DO UPDATE … WHERE the stored
    lease expired or is ours. The database decides under its row lock, so of
    two schedulers racing for a free lease exactly one gets a row back.
    """
    if ttl_seconds <= 0:
        raise InvalidInput("a lease needs a positive time to live", field="ttl_seconds")
    now = now or utcnow()
    t = LeaseRow.__table__
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    ins = insert(t).values(name=name, holder=holder, acquired_at=now, renewed_at=now,
                           expires_at=now + timedelta(seconds=ttl_seconds))
    ins = ins.on_conflict_do_update(
        index_elements=[t.c.name],
        set_={"holder": ins.excluded.holder,
              "acquired_at": case((t.c.holder == holder, t.c.acquired_at), else_=ins.excluded.acquired_at),
              "renewed_at": ins.excluded.renewed_at, "expires_at": ins.excluded.expires_at},
        where=or_(t.c.expires_at < now, t.c.holder == holder),
    ).returning(t.c.holder)
    return session.execute(ins).first() is not None


def renew_lease(session: Session, name: str, holder: str, ttl_seconds: float, *,
                now: datetime | None = None) -> bool:
    """Push our lease's expiry out by `ttl_seconds`; False if it is no longer ours (it expired and was taken)."""
    now = now or utcnow()
    res = session.execute(
        update(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder)
        .values(renewed_at=now, expires_at=now + timedelta(seconds=ttl_seconds))
        .returning(LeaseRow.name).execution_options(synchronize_session=False)
    )
    return res.first() is not None


def release_lease(session: Session, name: str, holder: str) -> bool:
    """Give lease `name` up if we hold it (another scheduler may take it at once); False if it was not ours."""
    res = session.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder)
                          .returning(LeaseRow.name).execution_options(synchronize_session=False))
    return res.first() is not None


def get_lease(session: Session, name: str) -> LeaseEntity | None:
    row = session.get(LeaseRow, name)
    return row.to_entity() if row is not None else None


# -- passes ---------------------------------------------------------------------
def start_pass(session: Session, schedule_id: int, fire_time: datetime, holder: str, window_index: int, *,
               actor: str | None = None) -> PassEntity | None:
    """Record that `holder` runs the pass of `schedule_id` fired at `fire_time`; audited.

    Returns None when that fire already has a pass: the INSERT hit
    UNIQUE(schedule_id, fire_time) — another scheduler got it first — and only
    the SAVEPOINT is rolled back, so the caller's transaction goes on.
    """
    if fire_time.tzinfo is None:
        raise InvalidInput("must be timezone-aware", field="fire_time")
    _schedule_row(session, schedule_id)
    now = utcnow()
    row = PassRow(schedule_id=schedule_id, fire_time=fire_time, holder=holder, window_index=window_index,
                  status=PassStatus.running, started_at=now, heartbeat_at=now, error_text="", summary={})
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return None  # IntegrityError here means another scheduler committed this fire first
    audit.record(session, "pass.start", "job_pass", row.id, new={
        "schedule_id": schedule_id, "fire_time": fire_time, "holder": holder, "window_index": window_index,
    }, actor=actor)
    return row.to_entity()


def _pass_row(session: Session, pass_id: int) -> PassRow:
    row = session.scalars(select(PassRow).where(PassRow.id == pass_id).with_for_update()).one_or_none()
    if row is None:
        raise NotFound(f"no scheduled pass with id {pass_id}", field="pass")
    return row


def heartbeat_pass(session: Session, pass_id: int) -> None:
    """A running pass says it is alive (not audited: no state change)."""
    session.execute(update(PassRow).where(PassRow.id == pass_id, PassRow.status == PassStatus.running)
                    .values(heartbeat_at=utcnow()).execution_options(synchronize_session=False))


def finish_pass(session: Session, pass_id: int, status: PassStatus | str, *, summary: Mapping[str, Any] | None = None,
                error_text: str = "", actor: str | None = None) -> PassEntity:
    """Close a pass; on success its schedule moves on to the next feedback window (same transaction); audited.

    A pass already marked `abandoned` (its heartbeat was late, the process was
    alive after all) is closed with what really happened; the audit event says so.
    """
    status = PassStatus(status)
    if status is PassStatus.running:
        raise InvalidInput("a finished pass needs a final outcome", field="status")
    row = _pass_row(session, pass_id)
    old = PassStatus(row.status)
    if old not in (PassStatus.running, PassStatus.abandoned):
        raise InvalidInput(f"pass {pass_id} already finished ({old.value})", field="pass")
    now = utcnow()
    row.status, row.finished_at, row.heartbeat_at = status, now, now
    row.error_text = (error_text or "")[:4000]
    row.summary = audit.jsonable(dict(summary or {}))
    if status is PassStatus.succeeded and row.schedule_id is not None:
        session.execute(update(ScheduleRow).where(ScheduleRow.id == row.schedule_id,
                                                  ScheduleRow.next_index <= row.window_index)
                        .values(next_index=row.window_index + 1, updated_at=now)
                        .execution_options(synchronize_session=False))
    audit.record(session, "pass.finish", "job_pass", pass_id, old={"status": old}, new={
        "status": status, "error_text": row.error_text[:500], "window_index": row.window_index,
    }, reason="finished after it was marked abandoned" if old is PassStatus.abandoned else "", actor=actor)
    if status is PassStatus.failed:  # an event, in this transaction
        repo_notify_events.enqueue_pass(session, "pass.failed", row)
    session.flush()
    return row.to_entity()


def mark_stale_passes(session: Session, *, older_than: timedelta, now: datetime | None = None,
                      actor: str | None = None) -> list[int]:
    """Running passes whose heartbeat is older than `older_than` become `abandoned`; audited. Returns their ids."""
    ids = abandon_silent(session, PassRow, "status", PassStatus.running, PassStatus.abandoned,
                         cutoff=(now or utcnow()) - older_than, action="pass.abandon", entity_type="job_pass",
                         why=lambda r: f"no heartbeat since {r.heartbeat_at.isoformat()} (holder {r.holder})",
                         actor=actor)
    for pass_id in ids:  # an event each, in this transaction
        repo_notify_events.enqueue_pass(session, "pass.abandoned", session.get(PassRow, pass_id))
    return ids


def get_pass(session: Session, pass_id: int) -> PassEntity:
    row = session.get(PassRow, pass_id)
    if row is None:
        raise NotFound(f"no scheduled pass with id {pass_id}", field="pass")
    return row.to_entity()


def list_passes(session: Session, *, schedule_id: int | None = None, status: PassStatus | str | None = None,
                limit: int | None = None) -> list[PassEntity]:
    """Passes oldest first (with `limit`: the newest `limit`, still oldest first)."""
    q = select(PassRow)
    if schedule_id is not None:
        q = q.where(PassRow.schedule_id == schedule_id)
    if status is not None:
        q = q.where(PassRow.status == PassStatus(status))
    if limit is not None:
        rows = list(session.scalars(q.order_by(PassRow.id.desc()).limit(limit)))
        return [r.to_entity() for r in reversed(rows)]
    return [r.to_entity() for r in session.scalars(q.order_by(PassRow.id))]
