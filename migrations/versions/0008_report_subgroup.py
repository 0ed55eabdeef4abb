"""Subgroup reports: an error report may be about a subgroup of its site's patients.

Revision ID: 0008_report_subgroup
Revises: 0007_notifications
Create Date: 2027-02-07

* `error_reports.subgroup`: VARCHAR(128) NOT NULL, server default '' — "" for the whole site (every row
  stored before this revision), else the canonical subgroup ("view=AP", "sex=F&age_band=65+";
  `cxr/subgroup_key.py`).
* The idempotency key `uq_error_reports_idempotency` gains it: (version, site, subgroup, pathology, kind,
  window), so a window may hold a whole-site report and a report on one of its subgroups.

SQLite cannot change a constraint in place: `batch_alter_table` rebuilds the table (copy and move; the
rows that point at it are unlinked meanwhile and restored, `_unlinked`); on PostgreSQL the same block runs
as ALTER TABLE statements. Downgrading refuses while a subgroup report exists (the older key cannot tell
it from its site's report: it would be lost or collide); otherwise it restores the old key and drops the
column.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0008_report_subgroup"
down_revision: str | None = "0007_notifications"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_KEY = ["version_id", "site", "pathology", "kind", "window_start", "window_end"]
_NEW_KEY = ["version_id", "site", "subgroup", "pathology", "kind", "window_start", "window_end"]


@contextmanager
def _unlinked() -> Iterator[None]:
    """On SQLite, around the table's rebuild: the rows that point at error_reports, unlinked, then restored.

    SQLite rebuilds the table (create a copy, copy the rows, drop the old one, rename the copy). With foreign
    keys on, dropping a table deletes its rows first, and the rows that point at them (decision_reports,
    unlabelled_windows.report_id) would fail the check at the commit — foreign keys cannot be turned off
    inside the migration's transaction. So those links are read, removed, and put back once the copy (same
    ids) is in place. PostgreSQL alters the table in place: nothing to do.
    """
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    links = [dict(r._mapping) for r in bind.execute(sa.text("SELECT decision_id, report_id FROM decision_reports"))]
    windows = [dict(r._mapping) for r in bind.execute(
        sa.text("SELECT id, report_id FROM unlabelled_windows WHERE report_id IS NOT NULL"))]
    bind.execute(sa.text("DELETE FROM decision_reports"))
    bind.execute(sa.text("UPDATE unlabelled_windows SET report_id = NULL WHERE report_id IS NOT NULL"))
    yield
    if links:
        bind.execute(sa.text("INSERT INTO decision_reports (decision_id, report_id) VALUES (:decision_id, :report_id)"),
                     links)
    if windows:
        bind.execute(sa.text("UPDATE unlabelled_windows SET report_id = :report_id WHERE id = :id"), windows)


def upgrade() -> None:
    with _unlinked(), op.batch_alter_table("error_reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subgroup", sa.String(length=128), server_default="", nullable=False))
        batch_op.drop_constraint(op.f("uq_error_reports_idempotency"), type_="unique")
        batch_op.create_unique_constraint(op.f("uq_error_reports_idempotency"), _NEW_KEY)


def downgrade() -> None:
    # The older key has no subgroup: refuse to lose subgroup reports (or to collide them with their site's).
    n = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM error_reports WHERE subgroup <> ''")).scalar()
    if n:
        raise RuntimeError(f"{n} subgroup error report(s) exist; they cannot be kept below 0008_report_subgroup "
                           "(export, then delete them before downgrading)")
    with _unlinked(), op.batch_alter_table("error_reports", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_error_reports_idempotency"), type_="unique")
        batch_op.create_unique_constraint(op.f("uq_error_reports_idempotency"), _OLD_KEY)
        batch_op.drop_column("subgroup")
