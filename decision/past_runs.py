"""The registry's past treatment runs as the planner reads them (empirical costs, p(success) per kind, and the
runs that already answered a report's question: `decision.retry`).

Kept apart from the engine so that `decide costs` and `decide plan`'s numbers can be read without
importing the treatments, torch or the data code (`decide` must start fast).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from decision.ladder import rejection_reasons
from decision.planner import RunStat
from decision.retry import Attempt
from registry import repo
from registry.entities import DatasetRole, RunOutcome


def run_stats(session: Session) -> list[RunStat]:
    """Past runs as the planner sees them (kind of issue, success, time, parameters), oldest first."""
    facts = repo.run_reports(session)
    out = []
    for r in repo.list_runs(session):
        if r.outcome in (RunOutcome.running,):
            continue
        succeeded = True if r.outcome == RunOutcome.accepted else (False if r.outcome == RunOutcome.rejected else None)
        kind, site = facts.get(r.id, ("", None))
        out.append(RunStat(r.treatment, kind, succeeded, r.wall_seconds or 0.0, r.trainable_parameters, site))
    return out


def attempts_on(session: Session, version_id: int) -> list[Attempt]:
    """Every finished run on version `version_id` that belongs to a decision, with the report it treated (the
    decision's first), the decision's policy digest and whether the gate (or a person) rejected it, oldest
    first. A run that declined, failed or was abandoned is listed with `failed_gate` False."""
    out = []
    ref = None
    for r in repo.list_runs(session):
        if r.input_version_id != version_id or r.decision_id is None or r.outcome == RunOutcome.running:
            continue
        decision = repo.get_decision(session, r.decision_id)
        if not decision.report_ids:
            continue
        report = repo.get_report(session, decision.report_ids[0])
        ref = ref or repo.get_version(session, version_id).ref
        reasons = rejection_reasons(r.outcome.value, r.metrics, r.error_text or "")
        failed = r.outcome == RunOutcome.rejected and reasons != ["declined"]
        out.append(Attempt(r.id, r.treatment, version_id, ref, report.site, report.pathology, report.kind.value,
                           r.started_at, decision.policy_digest, failed, tuple(reasons) if failed else ()))
    return out


def feedback_times(session: Session, site: str | None) -> list[datetime]:
    """When each labelled feedback data set of `site` was registered (none for a report without a site)."""
    if site is None:
        return []
    return [d.created_at for d in repo.list_datasets(session, role=DatasetRole.feedback, site=site)]
