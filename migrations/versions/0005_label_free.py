"""Monitoring without labels: version references and unlabelled windows.

Revision ID: 0005_label_free
Revises: 0004_promotion_rule
Create Date: 2026-12-06

* `version_references`: one row per version whose reference statistics were computed (from its
  calibration split): the content-addressed blob that holds them and a JSON summary.
* `unlabelled_windows`: what the label-free monitor found for one site's window of studies — the
  drift tests, the estimated performance, the out-of-distribution share, the studies that moved most,
  the `distribution_shift` report it filed (if any) and, once labels for the same window arrive, the
  estimate against what was realised.
* `schedules.unlabelled`: a schedule whose passes judge each window without reading its labels.
* The issue kind `distribution_shift` and the data set role `unlabelled` need no DDL: kinds and roles are
  stored as text and validated in Python (`cxr/kinds.py`, `registry/entities.py`).

Tables are declared here, not imported from the models, so that this revision still runs after they
move on. Downgrading drops both tables (and so the recorded windows): refused while windows exist.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_label_free"
down_revision: str | None = "0004_promotion_rule"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # a plain ADD COLUMN on both backends: a batch rebuild of `schedules` would run under its passes' rows
    op.add_column("schedules", sa.Column("unlabelled", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "version_references",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["digest"], ["blobs.digest"], name=op.f("fk_version_references_digest_blobs")),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"],
                                name=op.f("fk_version_references_version_id_model_versions")),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_version_references")),
    )
    op.create_table(
        "unlabelled_windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("window_end", TS, nullable=False),
        sa.Column("n_studies", sa.Integer(), nullable=False),
        sa.Column("shifted", sa.Boolean(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("tests", sa.JSON(), nullable=False),
        sa.Column("estimates", sa.JSON(), nullable=False),
        sa.Column("ood", sa.JSON(), nullable=False),
        sa.Column("moved", sa.JSON(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=True),
        sa.Column("report_id", sa.Integer(), nullable=True),
        sa.Column("realised", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"],
                                name=op.f("fk_unlabelled_windows_dataset_id_datasets")),
        sa.ForeignKeyConstraint(["report_id"], ["error_reports.id"],
                                name=op.f("fk_unlabelled_windows_report_id_error_reports")),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"],
                                name=op.f("fk_unlabelled_windows_version_id_model_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unlabelled_windows")),
    )
    with op.batch_alter_table("unlabelled_windows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_unlabelled_windows_version_id"), ["version_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_unlabelled_windows_site_window_start"), ["site", "window_start"],
                              unique=False)


def downgrade() -> None:
    n = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM unlabelled_windows")).scalar()
    if n:
        raise RuntimeError(f"{n} unlabelled window(s) are recorded; export them before downgrading below 0005")
    with op.batch_alter_table("unlabelled_windows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_unlabelled_windows_site_window_start"))
        batch_op.drop_index(batch_op.f("ix_unlabelled_windows_version_id"))
    op.drop_table("unlabelled_windows")
    op.drop_table("version_references")
    if op.get_bind().dialect.name == "sqlite":  # in place (SQLite ≥ 3.35): no rebuild under the passes' rows
        op.execute('ALTER TABLE "schedules" DROP COLUMN "unlabelled"')
    else:
        with op.batch_alter_table("schedules", schema=None) as batch_op:
            batch_op.drop_column("unlabelled")
