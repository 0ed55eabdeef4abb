"""Notifications in the registry: the outbox (`enqueue`), webhook endpoints, deliveries and attempts.

`enqueue` is called by the repository function that makes a change a person must hear about, in the
caller's transaction, and only adds one row: the event exists if and only if its change committed, and
writing it never waits on a network (`registry/repo_notify_events.py` builds the events of held candidates,
label requests, passes and audit failures). The delivery worker (`decision/notify.py`) then calls `fan_out`
(one delivery per endpoint that wants the event, grouped or collapsed by `registry/repo_notify_group.py`),
`claim_due` (deliveries whose time has come, each pushed a lease ahead so that a second worker skips it)
and `record_attempt`. An endpoint is a webhook URL or `mailto:` addresses (e-mail: no secret).

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
from registry.repo_notify_group import COLLAPSED, DELIVERED, PENDING, Grouping, Placement, place, priors

DEAD = "dead"
_ENV = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]{0,127}")
_MAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


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
    uid = enqueue(session, type, summary=f"decision {decision_id}{where} {what}", site=site, command=command,
                  decision_id=decision_id, **subj)
    if type == "decision.awaiting_approval":  # the awaiting of a label request is also its request
        from registry.repo_notify_events import enqueue_label_request  # it builds on this module

        enqueue_label_request(session, decision_id)
    return uid


def list_events(session: Session, *, limit: int | None = 100) -> list[EventEntity]:
    """The newest `limit` events (None: all), newest first."""
    rows = session.scalars(select(EventRow).order_by(EventRow.id.desc()).limit(limit))
    return [EventEntity(r.id, r.uid, r.type, r.site, dict(r.payload), r.created_at) for r in rows]


# -- endpoints -----------------------------------------------------------------------
def mail_recipients(url: str) -> list[str]:
    """The addresses of a `mailto:a@x.org[,b@y.org]` endpoint; `InvalidInput` when one is not an address."""
    rcpts = [a.strip() for a in url.removeprefix("mailto:").split(",")]
    if not rcpts or not all(_MAIL.fullmatch(a) for a in rcpts):
        raise InvalidInput(f"a mailto: endpoint lists addresses (mailto:ops@example.org), got {url!r}", field="url")
    return rcpts


def check_url(url: str) -> str:
    """An endpoint URL: https, or http to a loopback host only (a receiver on this machine), or mailto:."""
    if (url or "").startswith("mailto:"):
        mail_recipients(url)
        if len(url) > 2048:
            raise InvalidInput("an endpoint URL has at most 2048 characters", field="url")
        return url
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
    return secret if secret.startswith(("env:", "file:")) else "stored" if secret else "none"


def _check_endpoint_secret(url: str, secret: str) -> str:
    """A webhook needs a key (or a reference to one); a mailto: endpoint has none."""
    if url.startswith("mailto:"):
        if secret:
            raise InvalidInput("a mailto: endpoint takes no secret", field="secret")
        return ""
    return check_secret(secret)


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
    row = EndpointRow(url=check_url(url), events=sorted(set(events)), site=site or "",
                      secret=_check_endpoint_secret(url, secret),
                      previous_secret=None, enabled=True, disabled_reason="", created_by=who, created_at=utcnow())
    session.add(row)
    session.flush()
    audit.record(session, "notify.endpoint_add", "notify_endpoint", row.id, new={
        "url": row.url, "events": row.events, "site": row.site, "secret": secret_source(secret)}, actor=who)
    return _entity(row)


def upsert_endpoint(session: Session, url: str, secret: str, *, events: Sequence[str] = (), site: str = "",
                    actor: str | None = None) -> tuple[EndpointEntity, str]:
    """An endpoint declared in the policy (`decide notify sync`): the one with this url and site is made to
    match (events, secret reference; enabled again) or added. Returns it and `added`, `updated` or
    `unchanged`; a change is audited (the secret only as its source)."""
    row = session.scalars(select(EndpointRow).where(EndpointRow.url == url, EndpointRow.site == (site or ""))
                          .order_by(EndpointRow.id).limit(1)).one_or_none()
    if row is None:
        return add_endpoint(session, url, secret, events=events, site=site, actor=actor), "added"
    if bad := [e for e in events if e not in EVENT_TYPES]:
        raise InvalidInput(f"unknown event type {bad[0]!r}; known: {', '.join(EVENT_TYPES)}", field="events")
    new = {"events": sorted(set(events)), "secret": _check_endpoint_secret(url, secret), "enabled": True}
    old = {"events": list(row.events or []), "secret": row.secret, "enabled": row.enabled}
    if new == old:
        return _entity(row), "unchanged"
    row.events, row.secret, row.enabled, row.disabled_reason = new["events"], new["secret"], True, ""
    if old["secret"] != new["secret"]:
        row.previous_secret = None
    audit.record(session, "notify.endpoint_update", "notify_endpoint", row.id,
                 old={**old, "secret": secret_source(old["secret"])},
                 new={**new, "secret": secret_source(new["secret"])}, reason="declared in the policy", actor=actor)
    session.flush()
    return _entity(row), "updated"


def list_endpoints(session: Session) -> list[EndpointEntity]:
    return [_entity(r) for r in session.scalars(select(EndpointRow).order_by(EndpointRow.id))]


def export_endpoints(session: Session) -> list[dict[str, Any]]:
    """The endpoints for `decide export`, read without the key columns (which the PostgreSQL auditor role may
    not read): where each key is comes from the audit trail (`secret` of its last add/rotate/update)."""
    source: dict[str, str] = {}
    for e in audit.list_events(session, entity_type="notify_endpoint"):
        if "secret" in (e.new or {}):
            source[e.entity_id] = e.new["secret"]
    cols = [c for c in EndpointRow.__table__.c if c.name not in ("secret", "previous_secret")]
    return [{**r, "secret_source": source.get(str(r["id"]), "")}
            for r in session.execute(select(*cols).order_by(EndpointRow.id)).mappings()]


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
    if row.url.startswith("mailto:"):
        raise InvalidInput(f"endpoint {endpoint_id} is e-mail: it has no key to rotate", field="endpoint")
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


def fan_out(session: Session, now: datetime, grouping: Grouping | None = None) -> int:
    """One delivery per (new event, enabled endpoint that wants it); return how many were made to be sent.

    With `grouping` (`registry/repo_notify_group.py`) a delivery is scheduled with its group's batch, or
    `collapsed` — recorded with a log line naming the event it repeats, and not sent. `notify.test` events
    are never grouped."""
    events = list(session.scalars(select(EventRow).where(EventRow.fanned_out.is_(False)).order_by(EventRow.id)
                                  .with_for_update(skip_locked=True)))
    if not events:
        return 0
    endpoints = list(session.scalars(select(EndpointRow).where(EndpointRow.enabled.is_(True))))
    g = grouping or Grouping()
    made = 0
    for ev in events:
        for ep in endpoints:
            if not _wants(ep, ev):
                continue
            placed = Placement(now) if g.off or ev.type == "notify.test" else \
                place(ev.created_at, str(ev.payload.get("summary", "")), priors(session, ev, ep.id, g), g)
            if placed.at is None:
                _collapse(session, ev, ep.id, placed.collapsed_into or "", g, now)
                continue
            session.add(DeliveryRow(event_id=ev.id, endpoint_id=ep.id, state=PENDING, attempts=0,
                                    next_attempt_at=placed.at, updated_at=now))
            session.flush()  # the next event of the group sees this delivery
            made += 1
        ev.fanned_out = True
    session.flush()
    return made


def _collapse(session: Session, ev: EventRow, endpoint_id: int, into: str, g: Grouping, now: datetime) -> None:
    d = DeliveryRow(event_id=ev.id, endpoint_id=endpoint_id, state=COLLAPSED, attempts=0, next_attempt_at=now,
                    updated_at=now)
    session.add(d)
    session.flush()
    hours = g.repeat_interval.total_seconds() / 3600
    session.add(AttemptRow(delivery_id=d.id, at=now, status_code=None, latency_ms=0.0, outcome=COLLAPSED,
                           error=f"collapsed into {into}: the same event within the repeat interval ({hours:g} h)"))


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


def list_attempts(session: Session, *, event_uid: str | None = None, limit: int | None = 100
                  ) -> list[AttemptEntity]:
    """The newest `limit` attempts (None: all; collapsed repeats included), oldest first."""
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
