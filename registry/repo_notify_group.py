"""Grouping and repeat limits of notifications, Alertmanager-style, decided when the worker fans an event
out to an endpoint (`repo_notify.fan_out`): the outbox keeps one row per event, and enqueueing stays one
insert.

A group is (event type, site, pathology) per endpoint. For each new event and endpoint, `place` reads the
deliveries of the group's earlier events to that endpoint (derived from `notify_events`,
`notify_deliveries` and `notify_attempts`: no state of its own) and decides:

1. **Repeat** — an event identical to an earlier one (same type, site, pathology and summary) written
   less than `repeat_interval` after it, whose delivery is pending or delivered, is *collapsed* into that
   first one: it gets a delivery in state `collapsed` and a log line naming the event it repeats, and
   nothing is sent. A flapping monitor thus sends one message per repeat interval; nothing is silently
   lost (`decide notify log` shows every collapsed event, `decide notify redeliver` sends one anyway).
   A first event that went dead is no target: its repeats are sent.
2. **Batch** — a group's first event (nothing of the group sent within `group_interval` before it) is
   sent `group_wait` after it was written; any event of the group that arrives while a batch is waiting
   joins that batch (same send time: one worker round sends them together, in event order); an event
   after the batch went out waits for the next one, `group_interval` after the last. Every event keeps
   its own message and `webhook-id`, so receivers deduplicate as before.

`Grouping()` (all zero) is no grouping: every event is sent at once and nothing collapses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.models_notify import AttemptRow, DeliveryRow, EventRow

PENDING, DELIVERED, COLLAPSED = "pending", "delivered", "collapsed"


@dataclass(frozen=True)
class Grouping:
    """The policy's `[notify]` timing; all zero: no grouping."""

    group_wait: timedelta = timedelta(0)
    group_interval: timedelta = timedelta(0)
    repeat_interval: timedelta = timedelta(0)

    @property
    def off(self) -> bool:
        return not (self.group_wait or self.group_interval or self.repeat_interval)

    @property
    def window(self) -> timedelta:
        """How far back an event's group is read."""
        return max(self.repeat_interval, self.group_interval) + self.group_wait


@dataclass(frozen=True)
class Prior:
    """A delivery, to the same endpoint, of an earlier event of the same group."""

    event_uid: str
    summary: str
    created_at: datetime  # when its event was written
    state: str  # pending, delivered, dead
    attempts: int
    scheduled: datetime  # its send time while untried; its first attempt's time once tried


@dataclass(frozen=True)
class Placement:
    at: datetime | None  # when to send it; None: collapsed
    collapsed_into: str | None = None  # the event it repeats


def group_key(type: str, site: str, payload: dict[str, Any]) -> tuple[str, str, str]:
    return type, site or "", str(payload.get("pathology") or "")


def place(created_at: datetime, summary: str, priors: Sequence[Prior], g: Grouping) -> Placement:
    """Where a new event of a group goes, given the group's earlier deliveries (pure; see the module doc)."""
    if g.repeat_interval > timedelta(0):
        same = [p for p in priors if p.summary == summary and p.state in (PENDING, DELIVERED)
                and created_at - p.created_at < g.repeat_interval]
        if same:
            return Placement(None, min(same, key=lambda p: (p.created_at, p.event_uid)).event_uid)
    waiting = [p.scheduled for p in priors if p.state == PENDING and p.attempts == 0]
    if waiting:
        return Placement(max(max(waiting), created_at))
    sent = [p.scheduled for p in priors if p.attempts > 0]
    last = max(sent, default=None)
    if last is not None and last >= created_at - g.group_interval:
        return Placement(max(created_at, last + g.group_interval))
    return Placement(created_at + g.group_wait)


def priors(session: Session, ev: EventRow, endpoint_id: int, g: Grouping) -> list[Prior]:
    """The deliveries to `endpoint_id` of `ev`'s group's events written within `g.window` before it (collapsed
    ones aside: they were never messages). Deliveries added earlier in this session are included."""
    first = (select(AttemptRow.delivery_id, func.min(AttemptRow.at).label("at"))
             .group_by(AttemptRow.delivery_id).subquery())
    rows = session.execute(
        select(DeliveryRow.state, DeliveryRow.attempts, DeliveryRow.next_attempt_at, EventRow.uid, EventRow.payload,
               EventRow.created_at, first.c.at)
        .join(EventRow, EventRow.id == DeliveryRow.event_id)
        .outerjoin(first, first.c.delivery_id == DeliveryRow.id)
        .where(DeliveryRow.endpoint_id == endpoint_id, DeliveryRow.state != COLLAPSED, EventRow.id != ev.id,
               EventRow.type == ev.type, EventRow.site == ev.site, EventRow.created_at <= ev.created_at,
               EventRow.created_at >= ev.created_at - g.window)).all()
    key = group_key(ev.type, ev.site, ev.payload)
    return [Prior(uid, str(payload.get("summary", "")), created, state, attempts,
                  tried if tried is not None and attempts > 0 else next_at)
            for state, attempts, next_at, uid, payload, created, tried in rows
            if group_key(ev.type, ev.site, payload) == key]
