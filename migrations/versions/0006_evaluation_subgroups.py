"""Per-subgroup evaluation: the subgroup results of each evaluation row.

Revision ID: 0006_evaluation_subgroups
Revises: 0005_label_free
Create Date: 2027-01-10

* `evaluations.subgroups`: JSON, nullable — for one pathology of one version on one data set, the list
  of its per-subgroup results (sex, age band, view, site, declared intersections; `decision/subgroups.py`).
  NULL for rows stored before this revision or evaluated without subgroups.

A plain ADD COLUMN on both backends (nullable, no default). Downgrading drops the column and so the
stored subgroup results.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_evaluation_subgroups"
down_revision: str | None = "0005_label_free"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("subgroups", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("subgroups")
