"""What leaves the registry: enums and frozen value objects, never live ORM rows.

`decision/` and `cli/` receive these from the repository functions
(`row.to_entity()`), so they never hold a session's objects, never trigger a
lazy load after the session closed, and can be compared, hashed and dumped to
JSON (`dataclasses.asdict`) without a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from cxr.kinds import IssueKind


class VersionStatus(StrEnum):
    candidate = "candidate"
    production = "production"
    archived = "archived"
    rejected = "rejected"


class ReportStatus(StrEnum):
    open = "open"
    claimed = "claimed"
    decided = "decided"
    resolved = "resolved"
    rejected = "rejected"


class DecisionStatus(StrEnum):
    planned = "planned"
    running = "running"
    awaiting_approval = "awaiting_approval"
    succeeded = "succeeded"
    exhausted = "exhausted"
    rejected = "rejected"
    cancelled = "cancelled"


class RunOutcome(StrEnum):
    running = "running"
    accepted = "accepted"
    rejected = "rejected"
    failed = "failed"
    abandoned = "abandoned"
    #: passed the gate with a flag a person must accept (e.g. an underpowered check); awaiting approval
    held = "held"


class DatasetRole(StrEnum):
    train = "train"
    calibration = "calibration"
    evaluation = "evaluation"
    feedback = "feedback"
    #: a site's studies without labels, judged by the label-free monitor (never calibration data)
    unlabelled = "unlabelled"


class Verdict(StrEnum):
    approved = "approved"
    rejected = "rejected"


#: The alias whose moves change version statuses (previous → archived, new → production).
PRODUCTION = "production"


@dataclass(frozen=True)
class BlobRef:
    """A content-addressed file: `path` is absolute on this machine."""

    digest: str
    size: int
    path: str


@dataclass(frozen=True)
class ModelEntity:
    id: int
    name: str
    description: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class VersionSummary:
    """The columns of a version that lists, history and lineage need."""

    id: int
    model: str
    version: int
    parent_id: int | None
    status: VersionStatus
    weights_digest: str
    created_by: str
    created_at: datetime
    decision_id: int | None = None
    treatment_run_id: int | None = None
    depth: int = 0  # lineage only: generations away from the queried version

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


@dataclass(frozen=True)
class VersionEntity:
    id: int
    model_id: int
    model: str
    version: int
    parent_id: int | None
    parent_ref: str | None
    status: VersionStatus
    spec_json: str
    spec_digest: str
    weights_digest: str
    backbone_digest: str
    tensors_digest: str
    thresholds: dict[str, float | None]
    pathologies: list[str]
    parameter_count: int
    trainable_parameters: int | None
    code_version: str
    created_by: str
    created_at: datetime
    decision_id: int | None
    treatment_run_id: int | None
    notes: str
    aliases: list[str] = field(default_factory=list)
    dataset_ids: list[int] = field(default_factory=list)
    #: {site: {pathology: threshold}} overrides of `thresholds` for one site
    site_thresholds: dict[str, dict[str, float | None]] = field(default_factory=dict)
    footprint: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    def thresholds_for(self, site: str | None) -> dict[str, float | None]:
        """The operating points in force at `site`: the defaults with that site's overrides on top."""
        if not site:
            return dict(self.thresholds)
        return {**self.thresholds, **self.site_thresholds.get(site, {})}


def alias_label(alias: str, site: str = "") -> str:
    """How an alias is written: `production` (every site) or `production@site-b` (one site's own)."""
    return f"{alias}@{site}" if site else alias


@dataclass(frozen=True)
class AliasEntity:
    model: str
    alias: str
    version_id: int
    version: int
    updated_by: str
    updated_at: datetime
    site: str = ""  # '' = every site

    @property
    def label(self) -> str:
        return alias_label(self.alias, self.site)


@dataclass(frozen=True)
class AliasMove:
    id: int
    model: str
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    at: datetime
    reason: str
    site: str = ""


@dataclass(frozen=True)
class DatasetEntity:
    id: int
    name: str
    role: DatasetRole
    digest: str
    size: int
    source: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class EvaluationEntity:
    id: int
    version_id: int
    dataset_id: int
    dataset: str
    pathology: str
    auroc: float | None
    auroc_lo: float | None
    auroc_hi: float | None
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    f1: float | None
    threshold: float | None
    n_pos: int
    n_neg: int
    created_at: datetime
    #: per-subgroup results (dicts of `decision.subgroups.SubgroupEval`); None when not evaluated per subgroup
    subgroups: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class ReportEntity:
    id: int
    version_id: int
    model: str
    version: int
    pathology: str
    kind: IssueKind
    metric: str
    value: float
    target: float
    site: str
    subgroup: str  # "" = the whole site; else "view=AP", "sex=F&age_band=65+" (`cxr.subgroup_key`)
    window_start: datetime
    window_end: datetime
    counts: dict[str, int]
    cases: list[dict[str, Any]]
    source: str
    notes: str
    status: ReportStatus
    claimed_by: str | None
    claimed_at: datetime | None
    claim_expires_at: datetime | None
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class IngestResult:
    """Ids in input order; `created` counts new rows, `existing` re-ingested ones."""

    ids: list[int]
    created: int
    existing: int


@dataclass(frozen=True)
class CandidateEntity:
    rank: int
    treatment: str
    applicable: bool
    reason: str
    prior_cost: float | None
    empirical_cost: float | None
    expected_cost: float | None
    p_success: float | None
    alpha: float | None
    beta: float | None
    score: float | None
    needs_approval: bool


@dataclass(frozen=True)
class ApprovalEntity:
    id: int
    decision_id: int
    verdict: Verdict
    actor: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class DecisionEntity:
    id: int
    report_ids: list[int]
    policy_digest: str
    chosen: str | None
    rationale: str
    status: DecisionStatus
    created_by: str
    created_at: datetime
    updated_at: datetime
    candidates: list[CandidateEntity]
    approvals: list[ApprovalEntity]
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunEntity:
    id: int
    decision_id: int | None
    treatment: str
    parameters: dict[str, Any]
    input_version_id: int
    output_version_id: int | None
    started_at: datetime
    finished_at: datetime | None
    heartbeat_at: datetime
    wall_seconds: float | None
    trainable_parameters: int | None
    outcome: RunOutcome
    error_text: str
    metrics: dict[str, Any]
    artifacts: dict[str, Any]
    created_by: str


@dataclass(frozen=True)
class AuditEventEntity:
    id: int
    seq: int
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    old: Any
    new: Any
    reason: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    """`ok` with `checked` events, or the first broken event's `seq` and why."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class Lineage:
    """`ancestors` nearest first (depth 1 = parent); `descendants` by depth then id."""

    version: VersionSummary
    ancestors: list[VersionSummary]
    descendants: list[VersionSummary]


@dataclass(frozen=True)
class VersionDiff:
    a: str
    b: str
    spec: dict[str, dict[str, Any]]  # dotted path → {"a": …, "b": …}
    thresholds: dict[str, dict[str, float | None]]  # pathology → {"a", "b"}
    metrics: dict[str, dict[str, dict[str, float | None]]]  # pathology → metric → {"a", "b", "delta"}
    metrics_dataset: str | None
    tensors_changed: list[str]
    tensors_added: list[str]
    tensors_removed: list[str]
    same_weights: bool
    same_backbone: bool
    parameter_count: dict[str, int]
    #: per pathology, per subgroup on `metrics_dataset`: {"pathology", "attribute", "group", metric: {"a", "b",
    #: "delta"} for auroc / recall / fpr, "judgeable": {"a", "b"}}; empty when either side has no subgroups
    subgroups: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class History:
    """Versions (oldest first), current aliases and every alias move (oldest first)."""

    versions: list[VersionSummary]
    aliases: list[AliasEntity]
    moves: list[AliasMove]
