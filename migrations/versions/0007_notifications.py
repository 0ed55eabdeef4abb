"""Notifications: webhook endpoints, the outbox of events, deliveries and every attempt.

Revision ID: 0007_notifications
Revises: 0006_evaluation_subgroups
Create Date: 2027-01-24

* `notify_endpoints`: where events go (a URL; the event types and the site it wants; its signing secret
  or a reference to one, `env:NAME` / `file:PATH`; a previous secret while a rotation lasts; whether it
  is enabled — a 410 Gone disables it).
* `notify_events`: the outbox. One row per event, written in the transaction of the change it reports.
* `notify_deliveries`: one event to one endpoint — pending, delivered or dead — with its next attempt.
* `notify_attempts`: every attempt: when, HTTP status, latency, error, what it led to.

Tables are declared here, not imported from the models, so that this revision still runs after they
move on. Downgrading drops the four tables (and so the delivery log).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_notifications"
down_revision: str | None = "0006_evaluation_subgroups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "notify_endpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.String(length=512), nullable=False),
        sa.Column("previous_secret", sa.String(length=512), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.String(length=256), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_endpoints")),
    )
    op.create_table(
        "notify_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("fanned_out", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_events")),
        sa.UniqueConstraint("uid", name=op.f("uq_notify_events_uid")),
    )
    with op.batch_alter_table("notify_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notify_events_type"), ["type"], unique=False)
        batch_op.create_index(batch_op.f("ix_notify_events_fanned_out"), ["fanned_out"], unique=False)
    op.create_table(
        "notify_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["endpoint_id"], ["notify_endpoints.id"],
                                name=op.f("fk_notify_deliveries_endpoint_id_notify_endpoints")),
        sa.ForeignKeyConstraint(["event_id"], ["notify_events.id"],
                                name=op.f("fk_notify_deliveries_event_id_notify_events")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_deliveries")),
        sa.UniqueConstraint("event_id", "endpoint_id", name=op.f("uq_notify_deliveries_event_id_endpoint_id")),
    )
    with op.batch_alter_table("notify_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notify_deliveries_endpoint_id"), ["endpoint_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_notify_deliveries_state_next_attempt_at"),
                              ["state", "next_attempt_at"], unique=False)
    op.create_table(
        "notify_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("error", sa.String(length=512), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["notify_deliveries.id"],
                                name=op.f("fk_notify_attempts_delivery_id_notify_deliveries")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_attempts")),
    )
    with op.batch_alter_table("notify_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notify_attempts_delivery_id"), ["delivery_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("notify_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_attempts_delivery_id"))
    op.drop_table("notify_attempts")
    with op.batch_alter_table("notify_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_deliveries_state_next_attempt_at"))
        batch_op.drop_index(batch_op.f("ix_notify_deliveries_endpoint_id"))
    op.drop_table("notify_deliveries")
    with op.batch_alter_table("notify_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_events_fanned_out"))
        batch_op.drop_index(batch_op.f("ix_notify_events_type"))
    op.drop_table("notify_events")
    op.drop_table("notify_endpoints")
