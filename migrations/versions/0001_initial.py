"""Initial schema: models, versions, aliases (+history), blobs, datasets, evaluations,
error reports, decisions (+candidates, approvals), treatment runs, audit chain.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22

Tables are declared here, not imported from `registry.models`, so that this
revision still runs after the models move on. Enum columns are plain
VARCHAR(24) (validated in Python), so adding an enum value needs no migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
ENUM = sa.String(length=24)
GENESIS = "0" * 64  # prev_hash of the first audit event
RUN_FK = "fk_model_versions_treatment_run_id_treatment_runs"

audit_head = sa.table(
    "audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.Integer), sa.column("hash", sa.String)
)


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("entity_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=128), nullable=False),
        sa.Column("old", sa.JSON(), nullable=True),
        sa.Column("new", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("seq", name=op.f("uq_audit_events_seq")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_events_entity_type_entity_id"), ["entity_type", "entity_id"], unique=False
        )

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_blobs")),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("role", ENUM, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", "role", "digest", name=op.f("uq_datasets_name_role_digest")),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("policy_digest", sa.String(length=64), nullable=False),
        sa.Column("chosen", sa.String(length=128), nullable=True),
        sa.Column("rationale", sa.Text(), nullable=False),
        sa.Column("status", ENUM, nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decisions")),
    )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_decisions_status"), ["status"], unique=False)

    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=False),
        sa.Column("verdict", ENUM, nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.ForeignKeyConstraint(["decision_id"], ["decisions.id"], name=op.f("fk_approvals_decision_id_decisions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
    )
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_approvals_decision_id"), ["decision_id"], unique=False)

    op.create_table(
        "decision_candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("treatment", sa.String(length=128), nullable=False),
        sa.Column("applicable", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("prior_cost", sa.Float(), nullable=True),
        sa.Column("empirical_cost", sa.Float(), nullable=True),
        sa.Column("expected_cost", sa.Float(), nullable=True),
        sa.Column("p_success", sa.Float(), nullable=True),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("beta", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("needs_approval", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["decision_id"], ["decisions.id"], name=op.f("fk_decision_candidates_decision_id_decisions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decision_candidates")),
        sa.UniqueConstraint("decision_id", "rank", name=op.f("uq_decision_candidates_decision_id_rank")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("status", ENUM, nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("spec_digest", sa.String(length=64), nullable=False),
        sa.Column("weights_digest", sa.String(length=64), nullable=False),
        sa.Column("backbone_digest", sa.String(length=64), nullable=False),
        sa.Column("tensors_digest", sa.String(length=64), nullable=False),
        sa.Column("tensor_digests", sa.JSON(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("pathologies", sa.JSON(), nullable=False),
        sa.Column("parameter_count", sa.Integer(), nullable=False),
        sa.Column("trainable_parameters", sa.Integer(), nullable=True),
        sa.Column("code_version", sa.String(length=128), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=True),
        sa.Column("treatment_run_id", sa.Integer(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["decision_id"], ["decisions.id"], name=op.f("fk_model_versions_decision_id_decisions")
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_model_versions_model_id_models")),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["model_versions.id"], name=op.f("fk_model_versions_parent_id_model_versions")
        ),
        sa.ForeignKeyConstraint(
            ["weights_digest"], ["blobs.digest"], name=op.f("fk_model_versions_weights_digest_blobs")
        ),
        # SQLite cannot add a constraint later, and does not check that the referenced table exists yet.
        *(
            [sa.ForeignKeyConstraint(["treatment_run_id"], ["treatment_runs.id"], name=op.f(RUN_FK))]
            if _sqlite()
            else []
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_id", "version", name=op.f("uq_model_versions_model_id_version")),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_versions_parent_id"), ["parent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_versions_weights_digest"), ["weights_digest"], unique=False)

    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_version_id"], ["model_versions.id"], name=op.f("fk_alias_history_from_version_id_model_versions")
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_alias_history_model_id_models")),
        sa.ForeignKeyConstraint(
            ["to_version_id"], ["model_versions.id"], name=op.f("fk_alias_history_to_version_id_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_history")),
    )
    with op.batch_alter_table("alias_history", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alias_history_model_id"), ["model_id"], unique=False)

    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_aliases_model_id_models")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_versions.id"], name=op.f("fk_aliases_version_id_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("model_id", "name", name=op.f("uq_aliases_model_id_name")),
    )
    op.create_table(
        "error_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("pathology", sa.String(length=64), nullable=False),
        sa.Column("kind", ENUM, nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("target", sa.Float(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("window_end", TS, nullable=False),
        sa.Column("tp", sa.Integer(), nullable=False),
        sa.Column("fp", sa.Integer(), nullable=False),
        sa.Column("tn", sa.Integer(), nullable=False),
        sa.Column("fn", sa.Integer(), nullable=False),
        sa.Column("cases", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("status", ENUM, nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_at", TS, nullable=True),
        sa.Column("claim_expires_at", TS, nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_versions.id"], name=op.f("fk_error_reports_version_id_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_error_reports")),
        sa.UniqueConstraint(
            "version_id",
            "site",
            "pathology",
            "kind",
            "window_start",
            "window_end",
            name=op.f("uq_error_reports_idempotency"),
        ),
    )
    with op.batch_alter_table("error_reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_error_reports_status_id"), ["status", "id"], unique=False)

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("pathology", sa.String(length=64), nullable=False),
        sa.Column("auroc", sa.Float(), nullable=True),
        sa.Column("auroc_lo", sa.Float(), nullable=True),
        sa.Column("auroc_hi", sa.Float(), nullable=True),
        sa.Column("sensitivity", sa.Float(), nullable=True),
        sa.Column("specificity", sa.Float(), nullable=True),
        sa.Column("ppv", sa.Float(), nullable=True),
        sa.Column("f1", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("n_pos", sa.Integer(), nullable=False),
        sa.Column("n_neg", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_evaluations_dataset_id_datasets")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_versions.id"], name=op.f("fk_evaluations_version_id_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint(
            "version_id", "dataset_id", "pathology", name=op.f("uq_evaluations_version_id_dataset_id_pathology")
        ),
    )
    op.create_table(
        "treatment_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=True),
        sa.Column("treatment", sa.String(length=128), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("input_version_id", sa.Integer(), nullable=False),
        sa.Column("output_version_id", sa.Integer(), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.Column("wall_seconds", sa.Float(), nullable=True),
        sa.Column("trainable_parameters", sa.Integer(), nullable=True),
        sa.Column("outcome", ENUM, nullable=False),
        sa.Column("error_text", sa.Text(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["decision_id"], ["decisions.id"], name=op.f("fk_treatment_runs_decision_id_decisions")
        ),
        sa.ForeignKeyConstraint(
            ["input_version_id"], ["model_versions.id"], name=op.f("fk_treatment_runs_input_version_id_model_versions")
        ),
        sa.ForeignKeyConstraint(
            ["output_version_id"],
            ["model_versions.id"],
            name=op.f("fk_treatment_runs_output_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_treatment_runs")),
    )
    with op.batch_alter_table("treatment_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_treatment_runs_decision_id"), ["decision_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_treatment_runs_outcome"), ["outcome"], unique=False)
        batch_op.create_index(batch_op.f("ix_treatment_runs_treatment"), ["treatment"], unique=False)

    op.create_table(
        "version_datasets",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_version_datasets_dataset_id_datasets")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_versions.id"], name=op.f("fk_version_datasets_version_id_model_versions")
        ),
        sa.PrimaryKeyConstraint("version_id", "dataset_id", name=op.f("pk_version_datasets")),
    )
    op.create_table(
        "decision_reports",
        sa.Column("decision_id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["decision_id"], ["decisions.id"], name=op.f("fk_decision_reports_decision_id_decisions")
        ),
        sa.ForeignKeyConstraint(
            ["report_id"], ["error_reports.id"], name=op.f("fk_decision_reports_report_id_error_reports")
        ),
        sa.PrimaryKeyConstraint("decision_id", "report_id", name=op.f("pk_decision_reports")),
    )
    with op.batch_alter_table("decision_reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_decision_reports_report_id"), ["report_id"], unique=False)

    # Close the version ↔ run cycle now that both tables exist (SQLite got it inline above).
    if not _sqlite():
        op.create_foreign_key(RUN_FK, "model_versions", "treatment_runs", ["treatment_run_id"], ["id"])

    op.bulk_insert(audit_head, [{"id": 1, "seq": 0, "hash": GENESIS}])


def downgrade() -> None:
    if _sqlite():
        # Dropping a table deletes its rows first; versions and runs point at each other,
        # so check foreign keys only at commit, when every table is gone.
        op.execute("PRAGMA defer_foreign_keys = ON")
    else:
        op.drop_constraint(RUN_FK, "model_versions", type_="foreignkey")
    with op.batch_alter_table("decision_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_decision_reports_report_id"))

    op.drop_table("decision_reports")
    op.drop_table("version_datasets")
    with op.batch_alter_table("treatment_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_treatment_runs_treatment"))
        batch_op.drop_index(batch_op.f("ix_treatment_runs_outcome"))
        batch_op.drop_index(batch_op.f("ix_treatment_runs_decision_id"))

    op.drop_table("treatment_runs")
    op.drop_table("evaluations")
    with op.batch_alter_table("error_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_error_reports_status_id"))

    op.drop_table("error_reports")
    op.drop_table("aliases")
    with op.batch_alter_table("alias_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alias_history_model_id"))

    op.drop_table("alias_history")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_versions_weights_digest"))
        batch_op.drop_index(batch_op.f("ix_model_versions_parent_id"))

    op.drop_table("model_versions")
    op.drop_table("decision_candidates")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approvals_decision_id"))

    op.drop_table("approvals")
    op.drop_table("models")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_decisions_status"))

    op.drop_table("decisions")
    op.drop_table("datasets")
    op.drop_table("blobs")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_entity_type_entity_id"))

    op.drop_table("audit_events")
