"""Scheduled monitoring: schedules, scheduler leases, job passes.

Revision ID: 0002_scheduling
Revises: 0001_initial
Create Date: 2026-11-29

Tables are declared here, not imported from `registry.models_jobs`, so that
this revision still runs after the models move on. `job_passes` is keyed
UNIQUE(schedule_id, fire_time): that constraint is what makes a scheduled pass
run once when several scheduler processes fire it. Deleting a schedule keeps
its passes (ON DELETE SET NULL).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_scheduling"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
ENUM = sa.String(length=24)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("cron", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("per_window", sa.Integer(), nullable=False),
        sa.Column("max_cost", sa.Float(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("next_index", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("name", name=op.f("uq_schedules_name")),
    )
    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("acquired_at", TS, nullable=False),
        sa.Column("renewed_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_leases")),
    )
    op.create_table(
        "job_passes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("schedule_id", sa.Integer(), nullable=True),
        sa.Column("fire_time", TS, nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("window_index", sa.Integer(), nullable=False),
        sa.Column("status", ENUM, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.Column("error_text", sa.Text(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["schedule_id"], ["schedules.id"], name=op.f("fk_job_passes_schedule_id_schedules"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_passes")),
        sa.UniqueConstraint("schedule_id", "fire_time", name=op.f("uq_job_passes_schedule_id_fire_time")),
    )
    with op.batch_alter_table("job_passes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_passes_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_passes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_passes_status"))
    op.drop_table("job_passes")
    op.drop_table("scheduler_leases")
    op.drop_table("schedules")
