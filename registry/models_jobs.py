"""ORM rows of the scheduled monitoring jobs: schedules, scheduler leases, passes.

On the same `Base` (`registry/models_base.py`: the same naming convention and
metadata) as `registry/models.py`, which imports this module so that the
metadata — and the ORM-vs-migrations test — sees these tables too. Their
migration is `migrations/versions/0002_scheduling.py`.

Why these rows make a pass run once across scheduler processes: a pass is a
row keyed UNIQUE(schedule_id, fire_time), so whichever scheduler inserts it
first owns that fire; `scheduler_leases` keeps two schedulers from running the
same schedule's passes at the same time (one row per lease name, taken with a
single conditional upsert).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry.entities_jobs import LeaseEntity, PassEntity, PassStatus, ScheduleEntity
from registry.models_base import Base, entity_from_row, enum_column, utcnow


class ScheduleRow(Base):
    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    cron: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(512))
    site: Mapped[str] = mapped_column(String(64))
    per_window: Mapped[int] = mapped_column(Integer)
    max_cost: Mapped[float | None] = mapped_column(Float)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_index: Mapped[int] = mapped_column(Integer, default=0)
    #: judge each window without reading its labels (`decision.unlabelled`) (0005_label_free)
    unlabelled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_entity(self) -> ScheduleEntity:
        return entity_from_row(self, ScheduleEntity)


class LeaseRow(Base):
    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime] = mapped_column()
    renewed_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()

    def to_entity(self) -> LeaseEntity:
        return entity_from_row(self, LeaseEntity)


class PassRow(Base):
    __tablename__ = "job_passes"
    __table_args__ = (
        # The once-only key: a second scheduler inserting the same fire gets IntegrityError.
        UniqueConstraint("schedule_id", "fire_time"),
        Index(None, "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # SET NULL: deleting a schedule keeps its passes as history.
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("schedules.id", ondelete="SET NULL"))
    fire_time: Mapped[datetime] = mapped_column()
    holder: Mapped[str] = mapped_column(String(128))
    window_index: Mapped[int] = mapped_column(Integer)
    status: Mapped[PassStatus] = mapped_column(enum_column(PassStatus, "pass_status"))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    error_text: Mapped[str] = mapped_column(Text, default="")
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)

    def to_entity(self) -> PassEntity:
        return entity_from_row(self, PassEntity, status=PassStatus(self.status))
