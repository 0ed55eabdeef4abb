"""ORM rows of notifications: webhook endpoints, the outbox of events, deliveries and their attempts.

On the same `Base` as `registry/models.py` (which imports this module so that the metadata, the
migrations test and the auditor role see these tables). Their migration is
`migrations/versions/0007_notifications.py`.

An event row is written by the repository function that makes the change it reports, in the same
transaction (`registry/repo_notify.py::enqueue`): it exists if and only if its change committed. The
delivery worker (`decision/notify.py`) fans each event out to the endpoints that want it (one delivery
row per endpoint) and records every attempt. Endpoint secrets are stored as given — a `whsec_` key or a
reference (`env:NAME`, `file:PATH`) — and never leave `registry/repo_notify.py` but to be signed with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry.models_base import Base, utcnow


class EndpointRow(Base):
    __tablename__ = "notify_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[Any]] = mapped_column(default=list)  # event types; empty: every type
    site: Mapped[str] = mapped_column(String(64), default="")  # "": every site
    secret: Mapped[str] = mapped_column(String(512))  # whsec_…, env:NAME or file:PATH
    previous_secret: Mapped[str | None] = mapped_column(String(512))  # still signs during a rotation
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str] = mapped_column(String(256), default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventRow(Base):
    __tablename__ = "notify_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(40), unique=True)  # the `webhook-id` header: the idempotency key
    type: Mapped[str] = mapped_column(String(64), index=True)
    site: Mapped[str] = mapped_column(String(64), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryRow(Base):
    __tablename__ = "notify_deliveries"
    __table_args__ = (UniqueConstraint("event_id", "endpoint_id"), Index(None, "state", "next_attempt_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("notify_events.id"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("notify_endpoints.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))  # pending, delivered, dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AttemptRow(Base):
    __tablename__ = "notify_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("notify_deliveries.id"), index=True)
    at: Mapped[datetime]
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str] = mapped_column(String(512), default="")
    outcome: Mapped[str] = mapped_column(String(16))  # delivered, retry, dead, disabled
