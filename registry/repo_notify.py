"""Notifications in the registry: the outbox (`enqueue`), webhook endpoints, deliveries and attempts.

`enqueue` is called by the repository function that makes a change a person must hear about, in the
caller's transaction, and only adds one row: the event exists if and only if its change committed, and
writing it never waits on a network. The delivery worker (`decision/notify.py`) then calls `fan_out`
(one delivery per endpoint that wants the event), `claim_due` (deliveries whose time has come, each
pushed a lease ahead so that a second worker skips it) and `record_attempt`.

Secrets: an endpoint's key is stored as given — `whsec_…`, or a reference `env:NAME` / `file:PATH` that
the worker resolves when it signs. No entity, audit event, log line or export carries a key: entities
and audit events say only where it is (`secret_source`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound
from registry import audit
from registry.entities_notify import EVENT_TYPES, AttemptEntity, DueDelivery, EndpointEntity, EventEntity
from registry.models import DecisionReportRow, ModelRow, ReportRow, VersionRow, utcnow
from registry.models_notify import AttemptRow, DeliveryRow, EndpointRow, EventRow
from registry.repo_common import actor_of

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
_ENV = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]{0,127}")


# -- the outbox ----------------------------------------------------------------------
def enqueue(session: Session, type: str, *, summary: str, command: str, site: str = "", **subject: Any) -> str:
    """Add one event to the outbox in the caller's transaction; return its id (the `webhook-id`).

    The payload is thin: the event's subject ids (`decision_id=`, `version=`, `report_id=`, …), the site,
    a one-line summary and the `decide` command that shows the rest.
    """
    if type not in EVENT_TYPES:
        raise InvalidInput(f"unknown event type {type!r}", field="type")
    uid = f"msg_{uuid.uuid4().hex}"
    data = audit.jsonable({**{k: v for k, v in subject.items() if v is not None}, "site": site,
                           "summary": summary, "command": command})
    session.add(EventRow(uid=uid, type=type, site=site or "", payload=data, fanned_out=False, created_at=utcnow()))
    return uid


def decision_subject(session: Session, decision_id: int) -> dict[str, Any]:
    """Site, pathology, kind and version (`model:N`) of a decision's first report, for its events."""
    row = session.execute(
        select(ReportRow.site, ReportRow.pathology, ReportRow.kind, ModelRow.name, VersionRow.version)
        .join(DecisionReportRow, DecisionReportRow.report_id == ReportRow.id)
        .join(VersionRow, VersionRow.id == ReportRow.version_id).join(ModelRow, ModelRow.id == VersionRow.model_id)
        .where(DecisionReportRow.decision_id == decision_id).order_by(ReportRow.id).limit(1)).one_or_none()
    if row is None:
        return {"site": ""}
    return {"site": row.site or "", "pathology": row.pathology, "kind": getattr(row.kind, "value", row.kind),
            "version": f"{row.name}:{row.version}"}


def enqueue_decision(session: Session, type: str, decision_id: int, what: str) -> str:
    """`enqueue` an event about a decision: `what` completes "decision N …" in the summary."""
    subj = decision_subject(session, decision_id)
    site = subj.pop("site")
    where = f" ({subj.get('version')}, {subj.get('pathology')}{', ' + site if site else ''})" if subj else ""
    command = "decide decisions --status awaiting_approval" if type == "decision.awaiting_approval" \
        else "decide decisions"
    return enqueue(session, type, summary=f"decision {decision_id}{where} {what}", site=site, command=command,
                   decision_id=decision_id, **subj)


def list_events(session: Session, *, limit: int = 100) -> list[EventEntity]:
    rows = session.scalars(select(EventRow).order_by(EventRow.id.desc()).limit(limit))
    return [EventEntity(r.id, r.uid, r.type, r.site, dict(r.payload), r.created_at) for r in rows]


# -- endpoints -----------------------------------------------------------------------
def check_url(url: str) -> str:
    """An endpoint URL: https, or http to a loopback host only (a receiver on this machine)."""
    parts = urlsplit(url or "")
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidInput(f"an endpoint is an https:// URL, got {url!r}", field="url")
    if parts.scheme == "http":
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise InvalidInput("an endpoint needs https (plain http only to a loopback host)", field="url")
    if len(url) > 2048:
        raise InvalidInput("an endpoint URL has at most 2048 characters", field="url")
    return url


def check_secret(secret: str, field: str = "secret") -> str:
    """`whsec_` + base64 of 24 to 64 random bytes, or a reference: `env:NAME`, `file:/absolute/path`."""
    if _ENV.fullmatch(secret) or (secret.startswith("file:/") and len(secret) <= 512):
        return secret
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret[6:], validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if 24 <= len(key) <= 64:
            return secret
    raise InvalidInput("a secret is whsec_ + base64 of 24 to 64 bytes, env:NAME or file:/PATH (the value is "
                       "not repeated here)", field=field)


def secret_source(secret: str) -> str:
    return secret if secret.startswith(("env:", "file:")) else "stored"


def _entity(r: EndpointRow) -> EndpointEntity:
    return EndpointEntity(r.id, r.url, list(r.events or []), r.site, secret_source(r.secret),
                          r.previous_secret is not None, r.enabled, r.disabled_reason, r.created_by, r.created_at)


def _endpoint_row(session: Session, endpoint_id: int) -> EndpointRow:
    row = session.get(EndpointRow, endpoint_id)
    if row is None:
        raise NotFound(f"no notification endpoint with id {endpoint_id}", field="endpoint")
    return row


def add_endpoint(session: Session, url: str, secret: str, *, events: Sequence[str] = (), site: str = "",
                 actor: str | None = None) -> EndpointEntity:
    """Register a webhook endpoint for `events` (empty: every type) at `site` ("": every site)."""
    if bad := [e for e in events if e not in EVENT_TYPES]:
        raise InvalidInput(f"unknown event type {bad[0]!r}; known: {', '.join(EVENT_TYPES)}", field="events")
    who = actor_of(actor)
    row = EndpointRow(url=check_url(url), events=sorted(set(events)), site=site or "", secret=check_secret(secret),
                      previous_secret=None, enabled=True, disabled_reason="", created_by=who, created_at=utcnow())
    session.add(row)
    session.flush()
    audit.record(session, "notify.endpoint_add", "notify_endpoint", row.id, new={
        "url": row.url, "events": row.events, "site": row.site, "secret": secret_source(secret)}, actor=who)
    return _entity(row)


def list_endpoints(session: Session) -> list[EndpointEntity]:
    return [_entity(r) for r in session.scalars(select(EndpointRow).order_by(EndpointRow.id))]


def get_endpoint(session: Session, endpoint_id: int) -> EndpointEntity:
    return _entity(_endpoint_row(session, endpoint_id))


def set_endpoint_enabled(session: Session, endpoint_id: int, enabled: bool, *, reason: str,
                         actor: str | None = None) -> EndpointEntity:
    """Enable or disable an endpoint (`decide notify remove` disables: its delivery log stays)."""
    row = _endpoint_row(session, endpoint_id)
    old = {"enabled": row.enabled, "reason": row.disabled_reason}
    row.enabled, row.disabled_reason = enabled, "" if enabled else reason[:256]
    audit.record(session, "notify.endpoint_enable" if enabled else "notify.endpoint_disable", "notify_endpoint",
                 endpoint_id, old=old, new={"enabled": enabled}, reason=reason, actor=actor)
    session.flush()
    return _entity(row)


def rotate_secret(session: Session, endpoint_id: int, secret: str | None, *, actor: str | None = None
                  ) -> EndpointEntity:
    """Start a rotation (`secret`: the new key; the current one keeps signing too) or end it (None)."""
    row = _endpoint_row(session, endpoint_id)
    if secret is None:
        row.previous_secret = None
    else:
        row.previous_secret, row.secret = row.secret, check_secret(secret)
    audit.record(session, "notify.secret_rotate", "notify_endpoint", endpoint_id,
                 new={"rotating": row.previous_secret is not None, "secret": secret_source(row.secret)}, actor=actor)
    session.flush()
    return _entity(row)


# -- deliveries ------------------------------------------------------------------------
def _wants(ep: EndpointRow, ev: EventRow) -> bool:
    if ev.type == "notify.test":
        return ev.payload.get("endpoint_id") == ep.id
    return (not ep.events or ev.type in ep.events) and (not ep.site or not ev.site or ep.site == ev.site)


def fan_out(session: Session, now: datetime) -> int:
    """One pending delivery per (new event, enabled endpoint that wants it); return how many were made."""
    events = list(session.scalars(select(EventRow).where(EventRow.fanned_out.is_(False)).order_by(EventRow.id)
                                  .with_for_update(skip_locked=True)))
    if not events:
        return 0
    endpoints = list(session.scalars(select(EndpointRow).where(EndpointRow.enabled.is_(True))))
    made = 0
    for ev in events:
        for ep in endpoints:
            if _wants(ep, ev):
                session.add(DeliveryRow(event_id=ev.id, endpoint_id=ep.id, state=PENDING, attempts=0,
                                        next_attempt_at=now, updated_at=now))
                made += 1
        ev.fanned_out = True
    session.flush()
    return made


def body_of(ev: EventRow) -> dict[str, Any]:
    """The Standard Webhooks payload: type, timestamp (when the event was written), data."""
    return {"type": ev.type, "timestamp": ev.created_at.isoformat(), "data": {"event_id": ev.uid, **ev.payload}}


def claim_due(session: Session, now: datetime, *, limit: int = 50, lease: timedelta = timedelta(minutes=5)
              ) -> list[DueDelivery]:
    """Pending deliveries due at `now` to enabled endpoints, oldest first; each is pushed `lease` ahead, so
    that another worker leaves it alone while this one sends (a crash mid-send: it is retried then)."""
    q = (select(DeliveryRow, EventRow, EndpointRow).join(EventRow, EventRow.id == DeliveryRow.event_id)
         .join(EndpointRow, EndpointRow.id == DeliveryRow.endpoint_id)
         .where(DeliveryRow.state == PENDING, DeliveryRow.next_attempt_at <= now, EndpointRow.enabled.is_(True))
         .order_by(DeliveryRow.next_attempt_at, DeliveryRow.id).limit(limit).with_for_update(of=DeliveryRow,
                                                                                            skip_locked=True))
    out = []
    for d, ev, ep in session.execute(q).all():
        d.next_attempt_at, d.updated_at = now + lease, now
        secrets = (ep.secret,) + ((ep.previous_secret,) if ep.previous_secret else ())
        out.append(DueDelivery(d.id, ep.id, ep.url, secrets, ev.uid, ev.type, body_of(ev), d.attempts, ev.created_at))
    session.flush()
    return out


def record_attempt(session: Session, delivery_id: int, *, at: datetime, status_code: int | None,
                   latency_ms: float, error: str, outcome: str, next_attempt_at: datetime | None = None) -> None:
    """Record one attempt and move its delivery: `delivered`, `retry` (at `next_attempt_at`), `dead`, or
    `disabled` (a 410: the endpoint is disabled — an audited change — and the delivery dead)."""
    d = session.get(DeliveryRow, delivery_id)
    if d is None:
        raise NotFound(f"no delivery with id {delivery_id}", field="delivery")
    session.add(AttemptRow(delivery_id=delivery_id, at=at, status_code=status_code, latency_ms=float(latency_ms),
                           error=error[:512], outcome=outcome))
    d.attempts += 1
    d.updated_at = at
    if outcome == "retry":
        if next_attempt_at is None:
            raise InvalidInput("a retry needs its time", field="next_attempt_at")
        d.next_attempt_at = next_attempt_at
    else:
        d.state = DELIVERED if outcome == "delivered" else DEAD
    if outcome == "disabled":
        set_endpoint_enabled(session, d.endpoint_id, False, reason=f"410 Gone on delivery {delivery_id}",
                             actor="notify-worker")
    session.flush()


def list_attempts(session: Session, *, event_uid: str | None = None, limit: int = 100) -> list[AttemptEntity]:
    q = (select(AttemptRow, DeliveryRow.endpoint_id, EventRow.uid, EventRow.type)
         .join(DeliveryRow, DeliveryRow.id == AttemptRow.delivery_id)
         .join(EventRow, EventRow.id == DeliveryRow.event_id))
    if event_uid is not None:
        q = q.where(EventRow.uid == event_uid)
    rows = session.execute(q.order_by(AttemptRow.id.desc()).limit(limit)).all()
    return [AttemptEntity(a.id, a.delivery_id, uid, typ, ep, a.at, a.status_code, a.latency_ms, a.error, a.outcome)
            for a, ep, uid, typ in reversed(rows)]


def delivery_states(session: Session, event_uid: str) -> dict[int, str]:
    """Endpoint id → state of the event's deliveries."""
    rows = session.execute(select(DeliveryRow.endpoint_id, DeliveryRow.state).join(EventRow)
                           .where(EventRow.uid == event_uid)).all()
    return {ep: state for ep, state in rows}


def redeliver(session: Session, event_uid: str, *, actor: str | None = None) -> int:
    """Send an event again to every enabled endpoint that has a delivery of it, from now, with a fresh
    retry schedule (the receiver dedupes on `webhook-id`); return how many deliveries were reset."""
    ev = session.scalars(select(EventRow).where(EventRow.uid == event_uid)).one_or_none()
    if ev is None:
        raise NotFound(f"no event {event_uid!r}", field="event")
    now = utcnow()
    enabled = select(EndpointRow.id).where(EndpointRow.enabled.is_(True))
    n = session.execute(update(DeliveryRow).where(DeliveryRow.event_id == ev.id,
                                                  DeliveryRow.endpoint_id.in_(enabled))
                        .values(state=PENDING, attempts=0, next_attempt_at=now, updated_at=now)).rowcount
    audit.record(session, "notify.redeliver", "notify_event", ev.uid, new={"deliveries": n, "type": ev.type},
                 actor=actor)
    return n
