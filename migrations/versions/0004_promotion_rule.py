"""The operational sequence, enforced by the database: `production` only moves with a grant.

Revision ID: 0004_promotion_rule
Revises: 0003_sites
Create Date: 2026-11-28

21 CFR 11.10(f) asks for operational sequence checks. Code already promotes only what the gate
passed; this revision makes the database refuse anything else, so a hand-edited alias is refused at
the source:

* `promotion_grants` (append-only): version V may serve `production` at site S ('' = every site)
  because of a `gate` verdict (a treatment run that output V and was accepted), a `rollback` or an
  `override` (a first baseline, an imported model) with a reason that names why.
* A trigger on `aliases` refuses to point `production` (any site) at a version without a grant for
  that site; a trigger on `promotion_grants` refuses a `gate` grant whose run is not an accepted run
  that made that version, and updates or deletes of grants.

Existing homes: the versions that accepted runs made get their `gate` grants, and every version
`production` points at today an `override` grant naming this migration, so nothing in force breaks.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_promotion_rule"
down_revision: str | None = "0003_sites"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
RULE = "production may only point at a version with a passing gate verdict, or move by a rollback or override " \
       "that names a reason (promotion_grants)"
GATE_RULE = "a gate grant needs an accepted treatment run that output this version"
APPEND_ONLY = "promotion_grants are append-only"

SQLITE = [
    f"""CREATE TRIGGER trg_aliases_production_insert BEFORE INSERT ON aliases
    FOR EACH ROW WHEN NEW.name = 'production' AND NOT EXISTS (
        SELECT 1 FROM promotion_grants g
        WHERE g.version_id = NEW.version_id AND g.model_id = NEW.model_id AND g.site = NEW.site)
    BEGIN SELECT RAISE(ABORT, '{RULE}'); END""",
    f"""CREATE TRIGGER trg_aliases_production_update BEFORE UPDATE ON aliases
    FOR EACH ROW WHEN NEW.name = 'production' AND NOT EXISTS (
        SELECT 1 FROM promotion_grants g
        WHERE g.version_id = NEW.version_id AND g.model_id = NEW.model_id AND g.site = NEW.site)
    BEGIN SELECT RAISE(ABORT, '{RULE}'); END""",
    f"""CREATE TRIGGER trg_promotion_grants_gate BEFORE INSERT ON promotion_grants
    FOR EACH ROW WHEN NEW.kind = 'gate' AND NOT EXISTS (
        SELECT 1 FROM treatment_runs r
        WHERE r.id = NEW.run_id AND r.output_version_id = NEW.version_id AND r.outcome = 'accepted')
    BEGIN SELECT RAISE(ABORT, '{GATE_RULE}'); END""",
    f"""CREATE TRIGGER trg_promotion_grants_no_update BEFORE UPDATE ON promotion_grants
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER trg_promotion_grants_no_delete BEFORE DELETE ON promotion_grants
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END""",
]
SQLITE_DROP = ["trg_aliases_production_insert", "trg_aliases_production_update", "trg_promotion_grants_gate",
               "trg_promotion_grants_no_update", "trg_promotion_grants_no_delete"]

POSTGRES = [
    f"""CREATE FUNCTION decide_production_rule() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.name = 'production' AND NOT EXISTS (
            SELECT 1 FROM promotion_grants g
            WHERE g.version_id = NEW.version_id AND g.model_id = NEW.model_id AND g.site = NEW.site) THEN
            RAISE EXCEPTION '{RULE}' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER trg_aliases_production BEFORE INSERT OR UPDATE ON aliases
    FOR EACH ROW EXECUTE FUNCTION decide_production_rule()""",
    f"""CREATE FUNCTION decide_gate_grant_rule() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            RAISE EXCEPTION '{APPEND_ONLY}' USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.kind = 'gate' AND NOT EXISTS (
            SELECT 1 FROM treatment_runs r
            WHERE r.id = NEW.run_id AND r.output_version_id = NEW.version_id AND r.outcome = 'accepted') THEN
            RAISE EXCEPTION '{GATE_RULE}' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER trg_promotion_grants BEFORE INSERT OR UPDATE OR DELETE ON promotion_grants
    FOR EACH ROW EXECUTE FUNCTION decide_gate_grant_rule()""",
]


def upgrade() -> None:
    op.create_table(
        "promotion_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('gate', 'rollback', 'override') AND (kind <> 'gate' OR run_id IS NOT NULL) "
                           "AND (kind = 'gate' OR length(trim(reason)) > 0)",
                           name=op.f("ck_promotion_grants_kind_reason")),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_promotion_grants_model_id_models")),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"],
                                name=op.f("fk_promotion_grants_version_id_model_versions")),
        sa.ForeignKeyConstraint(["run_id"], ["treatment_runs.id"],
                                name=op.f("fk_promotion_grants_run_id_treatment_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotion_grants")),
    )
    op.create_index(op.f("ix_promotion_grants_version_id"), "promotion_grants", ["version_id"], unique=False)
    now = sa.func.current_timestamp()
    grants = sa.table("promotion_grants", *(sa.column(c) for c in (
        "model_id", "version_id", "site", "kind", "run_id", "reason", "actor", "at")))
    runs = sa.table("treatment_runs", sa.column("id"), sa.column("output_version_id"), sa.column("outcome"))
    versions = sa.table("model_versions", sa.column("id"), sa.column("model_id"))
    aliases = sa.table("aliases", sa.column("model_id"), sa.column("version_id"), sa.column("site"), sa.column("name"))
    op.execute(grants.insert().from_select(
        ["model_id", "version_id", "site", "kind", "run_id", "reason", "actor", "at"],
        sa.select(versions.c.model_id, runs.c.output_version_id, sa.literal(""), sa.literal("gate"), runs.c.id,
                  sa.literal("accepted by the gate (recorded before 0004)"), sa.literal("migration"), now)
        .join(versions, versions.c.id == runs.c.output_version_id)
        .where(runs.c.outcome == "accepted")))
    op.execute(grants.insert().from_select(
        ["model_id", "version_id", "site", "kind", "run_id", "reason", "actor", "at"],
        sa.select(aliases.c.model_id, aliases.c.version_id, aliases.c.site, sa.literal("override"), sa.null(),
                  sa.literal("in production when the promotion rule was introduced (migration 0004)"),
                  sa.literal("migration"), now)
        .where(aliases.c.name == "production")))
    for stmt in SQLITE if op.get_bind().dialect.name == "sqlite" else POSTGRES:
        op.execute(stmt)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_DROP:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS trg_aliases_production ON aliases")
        op.execute("DROP TRIGGER IF EXISTS trg_promotion_grants ON promotion_grants")
        op.execute("DROP FUNCTION IF EXISTS decide_production_rule()")
        op.execute("DROP FUNCTION IF EXISTS decide_gate_grant_rule()")
    op.drop_index(op.f("ix_promotion_grants_version_id"), table_name="promotion_grants")
    op.drop_table("promotion_grants")
