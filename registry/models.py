"""The registry's tables as SQLAlchemy 2 typed ORM rows.

One file for the whole schema (Optuna's shape) so that a reader sees every
table, key and constraint at once — but the scheduled jobs' tables, in
`registry/models_jobs.py`; both stand on `registry/models_base.py`. Rows stay inside `registry/`: what leaves
is `row.to_entity()` (see `registry/entities.py`). Every constraint is named
through `NAMING`, so migrations can address them on SQLite and PostgreSQL
alike. The migrations in `migrations/versions/` declare their own copies of
these tables; `tests/registry/test_migrations.py` proves the two agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cxr.kinds import IssueKind
from registry import models_jobs, models_label_free, models_notify  # noqa: F401  (their tables: on the same metadata)
from registry.entities import (
    ApprovalEntity,
    AuditEventEntity,
    CandidateEntity,
    DatasetEntity,
    DatasetRole,
    DecisionEntity,
    DecisionStatus,
    ModelEntity,
    ReportEntity,
    ReportStatus,
    RunEntity,
    RunOutcome,
    Verdict,
    VersionEntity,
    VersionStatus,
)
from registry.models_base import DIGEST, Base, entity_from_row, enum_column, utcnow


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_entity(self) -> ModelEntity:
        return entity_from_row(self, ModelEntity)


class BlobRow(Base):
    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(String(DIGEST), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))  # relative to DECIDE_HOME
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetRow(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "role", "digest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    role: Mapped[DatasetRole] = mapped_column(enum_column(DatasetRole, "dataset_role"))
    digest: Mapped[str] = mapped_column(String(DIGEST))
    size: Mapped[int] = mapped_column(Integer)
    source: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_entity(self) -> DatasetEntity:
        return entity_from_row(self, DatasetEntity)


class DecisionRow(Base):
    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy_digest: Mapped[str] = mapped_column(String(DIGEST))
    chosen: Mapped[str | None] = mapped_column(String(128))
    rationale: Mapped[str] = mapped_column(Text, default="")
    #: what the planner read besides the report: shift diagnosis, power notes, channel hints (0003_sites)
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[DecisionStatus] = mapped_column(enum_column(DecisionStatus, "decision_status"), index=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    candidates: Mapped[list[CandidateRow]] = relationship(order_by="CandidateRow.rank", lazy="selectin")
    approvals: Mapped[list[ApprovalRow]] = relationship(order_by="ApprovalRow.id", lazy="selectin")
    report_links: Mapped[list[DecisionReportRow]] = relationship(lazy="selectin")

    def to_entity(self) -> DecisionEntity:
        return entity_from_row(
            self, DecisionEntity, report_ids=sorted(link.report_id for link in self.report_links),
            candidates=[c.to_entity() for c in self.candidates], approvals=[a.to_entity() for a in self.approvals],
        )


class VersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), index=True)
    status: Mapped[VersionStatus] = mapped_column(enum_column(VersionStatus, "version_status"))
    spec_json: Mapped[str] = mapped_column(Text)
    spec_digest: Mapped[str] = mapped_column(String(DIGEST))
    weights_digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), index=True)
    backbone_digest: Mapped[str] = mapped_column(String(DIGEST))
    tensors_digest: Mapped[str] = mapped_column(String(DIGEST))
    tensor_digests: Mapped[dict[str, Any]] = mapped_column(default=dict)
    thresholds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: {site: {pathology: threshold}}: a site's overrides of `thresholds` (0003_sites)
    site_thresholds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: parameters, bytes, dtype, runtime, latency (+ the CPU flags it was measured on) (0003_sites)
    footprint: Mapped[dict[str, Any]] = mapped_column(default=dict)
    pathologies: Mapped[list[Any]] = mapped_column(default=list)
    parameter_count: Mapped[int] = mapped_column(Integer)
    trainable_parameters: Mapped[int | None] = mapped_column(Integer)
    code_version: Mapped[str] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"))
    # A run points at its output version and a version at the run that made it:
    # the cycle is closed by ALTER after both tables exist (use_alter).
    treatment_run_id: Mapped[int | None] = mapped_column(ForeignKey("treatment_runs.id", use_alter=True))
    notes: Mapped[str] = mapped_column(Text, default="")

    model: Mapped[ModelRow] = relationship(lazy="joined", innerjoin=True)

    def to_entity(
        self, *, parent_ref: str | None = None, aliases: list[str] | None = None, dataset_ids: list[int] | None = None
    ) -> VersionEntity:
        return entity_from_row(self, VersionEntity, model=self.model.name, parent_ref=parent_ref,
                               aliases=list(aliases or []), dataset_ids=list(dataset_ids or []))


class VersionDatasetRow(Base):
    __tablename__ = "version_datasets"

    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True)


class AliasRow(Base):
    """`site` '' is the alias for every site; a site name makes that site's own alias, which wins there."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name", "site"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    name: Mapped[str] = mapped_column(String(64))
    site: Mapped[str] = mapped_column(String(64), default="")
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AliasHistoryRow(Base):
    __tablename__ = "alias_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    site: Mapped[str] = mapped_column(String(64), default="")
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    to_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")


class PromotionGrantRow(Base):
    """Why a version may serve `production` at a site ('' = every site): a `gate` verdict (an accepted run that
    made it), a `rollback` or an `override` with a reason. Append-only; database triggers refuse a
    `production` alias without one (migration 0004_promotion_rule)."""

    __tablename__ = "promotion_grants"
    __table_args__ = (
        CheckConstraint("kind IN ('gate', 'rollback', 'override') AND (kind <> 'gate' OR run_id IS NOT NULL) "
                        "AND (kind = 'gate' OR length(trim(reason)) > 0)", name="kind_reason"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    site: Mapped[str] = mapped_column(String(64), default="")
    kind: Mapped[str] = mapped_column(String(24))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("treatment_runs.id"))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class EvaluationRow(Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("version_id", "dataset_id", "pathology"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    pathology: Mapped[str] = mapped_column(String(64))
    auroc: Mapped[float | None] = mapped_column(Float)
    auroc_lo: Mapped[float | None] = mapped_column(Float)
    auroc_hi: Mapped[float | None] = mapped_column(Float)
    sensitivity: Mapped[float | None] = mapped_column(Float)
    specificity: Mapped[float | None] = mapped_column(Float)
    ppv: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    n_pos: Mapped[int] = mapped_column(Integer)
    n_neg: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: per-subgroup results of this pathology (`decision/subgroups.py`); None: not evaluated per subgroup
    subgroups: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class ReportRow(Base):
    __tablename__ = "error_reports"
    __table_args__ = (
        # The idempotency key: the monitor re-sends a window's report and gets the same id back.
        UniqueConstraint("version_id", "site", "subgroup", "pathology", "kind", "window_start", "window_end",
                         name="uq_error_reports_idempotency"),
        Index(None, "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    pathology: Mapped[str] = mapped_column(String(64))
    kind: Mapped[IssueKind] = mapped_column(enum_column(IssueKind, "report_kind"))
    metric: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    target: Mapped[float] = mapped_column(Float)
    site: Mapped[str] = mapped_column(String(64))
    #: "" = the whole site, else its patients the report is about ("view=AP"; `cxr.subgroup_key`)
    subgroup: Mapped[str] = mapped_column(String(128), default="", server_default="")
    window_start: Mapped[datetime] = mapped_column()
    window_end: Mapped[datetime] = mapped_column()
    tp: Mapped[int] = mapped_column(Integer)
    fp: Mapped[int] = mapped_column(Integer)
    tn: Mapped[int] = mapped_column(Integer)
    fn: Mapped[int] = mapped_column(Integer)
    cases: Mapped[list[Any]] = mapped_column(default=list)
    source: Mapped[str] = mapped_column(String(32))
    notes: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[ReportStatus] = mapped_column(enum_column(ReportStatus, "report_status"))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column()
    claim_expires_at: Mapped[datetime | None] = mapped_column()
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    version: Mapped[VersionRow] = relationship(lazy="joined", innerjoin=True)

    def to_entity(self) -> ReportEntity:
        return entity_from_row(self, ReportEntity, model=self.version.model.name, version=self.version.version,
                               counts={"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn})


class DecisionReportRow(Base):
    __tablename__ = "decision_reports"

    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id"), primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("error_reports.id"), primary_key=True, index=True)


class CandidateRow(Base):
    __tablename__ = "decision_candidates"
    __table_args__ = (UniqueConstraint("decision_id", "rank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id"))
    rank: Mapped[int] = mapped_column(Integer)
    treatment: Mapped[str] = mapped_column(String(128))
    applicable: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text, default="")
    prior_cost: Mapped[float | None] = mapped_column(Float)
    empirical_cost: Mapped[float | None] = mapped_column(Float)
    expected_cost: Mapped[float | None] = mapped_column(Float)
    p_success: Mapped[float | None] = mapped_column(Float)
    alpha: Mapped[float | None] = mapped_column(Float)
    beta: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    needs_approval: Mapped[bool] = mapped_column(Boolean, default=False)

    def to_entity(self) -> CandidateEntity:
        return entity_from_row(self, CandidateEntity)


class ApprovalRow(Base):
    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id"), index=True)
    verdict: Mapped[Verdict] = mapped_column(enum_column(Verdict, "verdict"))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_entity(self) -> ApprovalEntity:
        return entity_from_row(self, ApprovalEntity)


class RunRow(Base):
    __tablename__ = "treatment_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"), index=True)
    treatment: Mapped[str] = mapped_column(String(128), index=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    input_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    output_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    wall_seconds: Mapped[float | None] = mapped_column(Float)
    trainable_parameters: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[RunOutcome] = mapped_column(enum_column(RunOutcome, "run_outcome"), index=True)
    error_text: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifacts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(128))

    def to_entity(self) -> RunEntity:
        return entity_from_row(self, RunEntity)


class AuditEventRow(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    at: Mapped[datetime] = mapped_column()
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(128))
    old: Mapped[Any | None] = mapped_column(JSON)
    new: Mapped[Any | None] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text, default="")
    prev_hash: Mapped[str] = mapped_column(String(DIGEST))
    hash: Mapped[str] = mapped_column(String(DIGEST))

    __table_args__ = (Index(None, "entity_type", "entity_id"),)

    def to_entity(self) -> AuditEventEntity:
        return entity_from_row(self, AuditEventEntity)


class AuditHeadRow(Base):
    """One row (id 1): the last event's seq and hash.

    Appenders lock it (`SELECT … FOR UPDATE`; on SQLite the write lock does it)
    so the chain never forks, and `verify` compares the chain's end with it so
    that deleting the newest events is detected too.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(DIGEST))

