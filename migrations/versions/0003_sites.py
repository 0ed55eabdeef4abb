"""Per-site operating points and aliases; version footprints; decision evidence.

Revision ID: 0003_sites
Revises: 0002_scheduling
Create Date: 2026-11-28

* `model_versions.site_thresholds`: {site: {pathology: threshold}} overrides of the version's default
  `thresholds` (a site-scoped calibration changes one site's operating point and nothing else).
* `model_versions.footprint`: what the version costs to run (parameters, bytes, dtype, runtime, latency
  with the CPU flags it was measured on).
* `aliases.site` / `alias_history.site`: '' is the alias for every site (`production`); a site name makes
  a site's own alias (`production@site-b`), which wins over the '' one for that site. The unique key
  becomes (model, name, site).
* `decisions.evidence`: what the planner read besides the report (shift diagnosis, power notes, …).

Existing homes migrate without loss: every existing alias and alias move is an all-sites one (''),
every version has no overrides, and every old decision an empty evidence object.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_sites"
down_revision: str | None = "0002_scheduling"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMPTY_JSON = sa.text("'{}'")


def _drop_columns(table: str, *columns: str) -> None:
    # SQLite (≥ 3.35) drops a plain column in place; a batch rebuild would DROP the table under the
    # rows of every other table that points at it.
    if op.get_bind().dialect.name == "sqlite":
        for c in columns:
            op.execute(f'ALTER TABLE "{table}" DROP COLUMN "{c}"')
        return
    with op.batch_alter_table(table, schema=None) as batch_op:
        for c in columns:
            batch_op.drop_column(c)


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("site_thresholds", sa.JSON(), nullable=False, server_default=EMPTY_JSON))
    op.add_column("model_versions", sa.Column("footprint", sa.JSON(), nullable=False, server_default=EMPTY_JSON))
    op.add_column("alias_history", sa.Column("site", sa.String(length=64), nullable=False, server_default=""))
    op.add_column("decisions", sa.Column("evidence", sa.JSON(), nullable=False, server_default=EMPTY_JSON))
    # The unique key changes: SQLite rebuilds `aliases` (no table points at it, so that is safe).
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("site", sa.String(length=64), nullable=False, server_default=""))
        batch_op.drop_constraint("uq_aliases_model_id_name", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_aliases_model_id_name_site"), ["model_id", "name", "site"])


def downgrade() -> None:
    # Site aliases cannot be expressed before this revision: refuse to lose them silently.
    bind = op.get_bind()
    n = bind.execute(sa.text("SELECT COUNT(*) FROM aliases WHERE site <> ''")).scalar()
    if n:
        raise RuntimeError(f"{n} site-scoped alias(es) exist; move or delete them before downgrading below 0003")
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.drop_constraint("uq_aliases_model_id_name_site", type_="unique")
        batch_op.create_unique_constraint("uq_aliases_model_id_name", ["model_id", "name"])
        batch_op.drop_column("site")
    _drop_columns("decisions", "evidence")
    _drop_columns("alias_history", "site")
    _drop_columns("model_versions", "footprint", "site_thresholds")
