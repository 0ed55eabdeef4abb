"""A person's verdict on a held candidate, and where an accepted candidate is promoted.

A candidate that passes the gate with a flag a person must accept (an underpowered non-inferiority
check) is registered but held: its run is `held`, its decision `awaiting_approval`. The run records
its `PromotionIntent` — which alias it would move, at which site, and the version it was made from.
`decide approve` / `decide reject` record the verdict; the next pass settles it (`settle_held`):

* rejected → the run and the version are rejected;
* approved, and the version it was made from still serves the intent's site → the alias moves, the
  decision succeeds and the report is resolved;
* approved, but the alias has moved since → the candidate is stale: rejected, the decision exhausted
  and the report opened again, so that the engine plans from what serves the site now.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session

from cxr.errors import NotFound
from registry import repo
from registry.entities import (
    PRODUCTION,
    DecisionEntity,
    DecisionStatus,
    ReportStatus,
    RunEntity,
    RunOutcome,
    Verdict,
)
from registry.session import session_scope


@dataclass(frozen=True)
class PromotionIntent:
    """What accepting a candidate moves: `alias` (at `site`, '' for every site without its own) from the
    version `parent_id` that served there when the candidate was made."""

    alias: str
    site: str
    parent_id: int

    @classmethod
    def for_verdict(cls, scope: str, report_site: str, parent_id: int) -> PromotionIntent:
        """`production` for every site (gate scope "all_sites"), or `production@site` (scope "site")."""
        return cls(PRODUCTION, report_site if scope == "site" else "", parent_id)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_run(cls, run: RunEntity) -> PromotionIntent:
        """The intent a run recorded with its gate verdict (`metrics["gate"]["promote"]`, see `decision.treat`).
        Raises `NotFound` when the run recorded none (it never passed the gate)."""
        raw = (run.metrics.get("gate") or {}).get("promote")
        if not isinstance(raw, dict) or not isinstance(raw.get("parent_id"), int):
            raise NotFound(f"run {run.id} recorded no promotion intent")
        return cls(str(raw.get("alias", PRODUCTION)), str(raw.get("site", "")), raw["parent_id"])

    @property
    def target(self) -> str:
        return self.alias + (f"@{self.site}" if self.site else "")


@dataclass(frozen=True)
class Settlement:
    """Where a person's verdict left the decision."""

    status: DecisionStatus
    message: str


def held_run(url: str | None, decision_id: int) -> RunEntity | None:
    """The decision's run whose candidate waits for a person, if any."""
    with session_scope(url, read_only=True) as s:
        return next((r for r in repo.list_runs(s, decision_id=decision_id) if r.outcome == RunOutcome.held), None)


def settle_held(url: str | None, d: DecisionEntity) -> Settlement | None:
    """Act on a person's verdict about `d`'s held candidate (see the module docstring). None when nothing is held."""
    run = held_run(url, d.id)
    if run is None:
        return None
    intent = PromotionIntent.of_run(run)
    approval = d.approvals[-1] if d.approvals else None
    with session_scope(url) as s:
        version = repo.get_version(s, run.output_version_id)
        if d.status == DecisionStatus.rejected or approval is None or approval.verdict != Verdict.approved:
            why = f"held candidate {version.ref} rejected by a person" + (
                f": {approval.reason}" if approval is not None else "")
            repo.settle_held_run(s, run.id, RunOutcome.rejected, reason=why)
            repo.set_version_status(s, version.id, "rejected", reason=why)
            return Settlement(DecisionStatus(d.status), why)
        if _serving_id(s, version.model, intent) != intent.parent_id:
            why = (f"held candidate {version.ref} is stale: {intent.target} moved since it was made; the report "
                   "is planned again")
            repo.settle_held_run(s, run.id, RunOutcome.rejected, reason=why)
            repo.set_version_status(s, version.id, "rejected", reason=why)
            repo.set_decision_status(s, d.id, DecisionStatus.exhausted, reason=why)
            for report_id in d.report_ids:  # a site-level decision: every grouped report
                repo.set_report_status(s, report_id, ReportStatus.open, reason=why)
            return Settlement(DecisionStatus.exhausted, why)
        why = f"{run.treatment} candidate {version.ref} approved by {approval.actor}: {approval.reason}"
        repo.settle_held_run(s, run.id, RunOutcome.accepted, reason=why)
        repo.set_alias(s, version.model, intent.alias, version.id, reason=why, site=intent.site, run_id=run.id)
        repo.set_decision_status(s, d.id, DecisionStatus.succeeded, reason=why)
        for report_id in d.report_ids:
            repo.set_report_status(s, report_id, ReportStatus.resolved, reason=why)
        return Settlement(DecisionStatus.succeeded, why)


def _serving_id(s: Session, model: str, intent: PromotionIntent) -> int | None:
    """The version the intent's alias serves at its site now (the site's own alias, else the all-sites one)."""
    try:
        return repo.resolve_version_id(s, f"{model}@{intent.alias}", site=intent.site or None)
    except NotFound:
        return None


def settle_rejected_holds(url: str | None) -> None:
    """Settle every held candidate whose decision a person rejected."""
    with session_scope(url, read_only=True) as s:
        rejected = repo.list_decisions(s, status=DecisionStatus.rejected)
    for d in rejected:
        settle_held(url, d)


def approved_decisions(url: str | None, also: Collection[int] = ()) -> list[DecisionEntity]:
    """Planned decisions a person approved, and the planned ones among `also` (decisions a take-over put back
    to `planned`, `decision.recovery`): the pass resumes them (or settles their held candidate)."""
    with session_scope(url, read_only=True) as s:
        return [d for d in repo.list_decisions(s, status=DecisionStatus.planned) if d.approvals or d.id in also]


def approved_treatment(d: DecisionEntity) -> str | None:
    """The rung a person approved on `d` — its chosen treatment, when its last verdict approved it — else None."""
    last = d.approvals[-1] if d.approvals else None
    return d.chosen if last is not None and last.verdict == Verdict.approved else None
