"""What leaves the registry about notifications: endpoints (never their secrets), events, deliveries
and attempts, as frozen values (`registry/models_notify.py` holds the rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: every event type, dotted; an endpoint added without `--events` gets all of them
EVENT_TYPES = (
    "decision.awaiting_approval",
    "decision.approved",
    "decision.rejected",
    "decision.exhausted",
    "candidate.held",
    "version.promoted",
    "version.rolled_back",
    "report.distribution_shift",
    "report.label_request",
    "pass.failed",
    "pass.abandoned",
    "audit.verification_failed",
    "notify.test",
)


@dataclass(frozen=True)
class EndpointEntity:
    id: int
    url: str
    events: list[str]  # empty: every type
    site: str  # "": every site
    secret_source: str  # "stored", "env:NAME", "file:PATH" or "none" (mailto:) — where the key is, never the key
    rotating: bool  # a previous secret still signs
    enabled: bool
    disabled_reason: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class EventEntity:
    id: int
    uid: str
    type: str
    site: str
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class AttemptEntity:
    id: int
    delivery_id: int
    event_uid: str
    event_type: str
    endpoint_id: int
    at: datetime
    status_code: int | None
    latency_ms: float
    error: str
    outcome: str  # delivered, retry, dead, disabled; collapsed (a repeat within repeat_interval: not sent)


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery, with what the worker needs to send it (the secrets as stored: references)."""

    delivery_id: int
    endpoint_id: int
    url: str
    secrets: tuple[str, ...]  # current first, then the previous one during a rotation
    event_uid: str
    event_type: str
    body: dict[str, Any]
    attempts: int  # before this one
    first_at: datetime  # when the event was written
