"""What leaves the registry about scheduled monitoring: schedules, leases, passes.

Kept apart from `registry/entities.py` (the model-registry side) because the
scheduler is a second kind of thing: when a pass runs, not what it changes.
Frozen values, like every entity, so `decision/` and `cli/` never hold rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class PassStatus(StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    abandoned = "abandoned"  # its process stopped beating (killed): the next pass proceeds


@dataclass(frozen=True)
class ScheduleEntity:
    """A monitoring pass to run on a cron schedule; `next_index` is the feedback window the next pass reads."""

    id: int
    name: str
    cron: str
    model: str
    source: str
    site: str
    per_window: int
    max_cost: float | None
    enabled: bool
    next_index: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    #: judge each window without reading its labels (monitoring without labels)
    unlabelled: bool = False


@dataclass(frozen=True)
class LeaseEntity:
    """Who holds a named lease, and until when (it must be renewed before `expires_at`)."""

    name: str
    holder: str
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class PassEntity:
    """One scheduled pass: at most one per (schedule, fire time), whichever scheduler got there first."""

    id: int
    schedule_id: int | None  # None once its schedule was deleted (the pass stays as history)
    fire_time: datetime
    holder: str
    window_index: int
    status: PassStatus
    started_at: datetime
    finished_at: datetime | None
    heartbeat_at: datetime
    error_text: str
    summary: dict[str, Any] = field(default_factory=dict)
