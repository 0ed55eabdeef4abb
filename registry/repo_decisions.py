"""Decisions (with every candidate's numbers), approvals, and treatment runs.

The decision engine writes through these; each call is one state change and
appends its audit event in the caller's transaction. `run_history` is what
the planner's empirical cost matrix is built from, so runs keep their wall
time, trainable parameters and outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound
from registry import audit
from registry.entities import DecisionEntity, DecisionStatus, RunEntity, RunOutcome, Verdict
from registry.models import ApprovalRow, CandidateRow, DecisionReportRow, DecisionRow, ReportRow, RunRow, utcnow
from registry.repo_common import actor_of, finite_or_none
from registry.repo_versions import _version_row

_CANDIDATE_FLOATS = ("prior_cost", "empirical_cost", "expected_cost", "p_success", "alpha", "beta", "score")
_TERMINAL = {DecisionStatus.succeeded, DecisionStatus.exhausted, DecisionStatus.rejected, DecisionStatus.cancelled}


def _decision_row(session: Session, decision_id: int, *, lock: bool = False) -> DecisionRow:
    q = select(DecisionRow).where(DecisionRow.id == decision_id)
    row = session.scalars(q.with_for_update() if lock else q).one_or_none()
    if row is None:
        raise NotFound(f"no decision with id {decision_id}", field="decision")
    return row


def create_decision(session: Session, report_ids: Sequence[int], policy_digest: str,
                    candidates: Sequence[Mapping[str, Any]], chosen: str | None, rationale: str,
                    status: DecisionStatus | str = DecisionStatus.planned, *,
                    actor: str | None = None) -> DecisionEntity:
    """Record a decision on reports: the policy digest, every candidate (in rank order) and the choice.

    A candidate dict has treatment, applicable, reason, prior_cost, empirical_cost,
    expected_cost, p_success, alpha, beta, score, needs_approval (numbers may be None);
    `rank` defaults to its position.
    """
    who = actor_of(actor)
    status = DecisionStatus(status)
    ids = sorted(set(report_ids))
    found = set(session.scalars(select(ReportRow.id).where(ReportRow.id.in_(ids)))) if ids else set()
    if missing := [i for i in ids if i not in found]:
        raise NotFound(f"no report with id {missing[0]}", field="report_ids")
    names = [c.get("treatment") for c in candidates]
    if chosen is not None and chosen not in names:
        raise InvalidInput(f"{chosen!r} is not among the candidates", field="chosen")
    now = utcnow()
    row = DecisionRow(policy_digest=policy_digest, chosen=chosen, rationale=rationale, status=status,
                      created_by=who, created_at=now, updated_at=now)
    session.add(row)
    session.flush()
    if ids:
        session.execute(insert(DecisionReportRow.__table__), [{"decision_id": row.id, "report_id": i} for i in ids])
    rows = []
    for i, c in enumerate(candidates):
        if not c.get("treatment"):
            raise InvalidInput("a candidate needs a treatment name", field=f"candidates[{i}].treatment")
        rows.append({
            "decision_id": row.id, "rank": int(c.get("rank", i)), "treatment": str(c["treatment"]),
            "applicable": bool(c.get("applicable", True)), "reason": str(c.get("reason") or ""),
            "needs_approval": bool(c.get("needs_approval", False)),
            **{k: finite_or_none(c.get(k), f"candidates[{i}].{k}") for k in _CANDIDATE_FLOATS},
        })
    if rows:
        session.execute(insert(CandidateRow.__table__), rows)
    audit.record(session, "decision.create", "decision", row.id, new={
        "report_ids": ids, "policy_digest": policy_digest, "chosen": chosen, "status": status,
        "candidates": [{"rank": r["rank"], "treatment": r["treatment"], "expected_cost": r["expected_cost"],
                        "p_success": r["p_success"], "applicable": r["applicable"]} for r in rows],
    }, reason=rationale, actor=who)
    session.flush()
    session.expire(row)
    return get_decision(session, row.id)


def get_decision(session: Session, decision_id: int) -> DecisionEntity:
    return _decision_row(session, decision_id).to_entity()


def list_decisions(session: Session, *, status: DecisionStatus | str | None = None) -> list[DecisionEntity]:
    q = select(DecisionRow).order_by(DecisionRow.id)
    if status is not None:
        q = q.where(DecisionRow.status == DecisionStatus(status))
    return [r.to_entity() for r in session.scalars(q)]


def set_decision_status(session: Session, decision_id: int, status: DecisionStatus | str, *, chosen: str | None = None,
                        reason: str = "", actor: str | None = None) -> DecisionEntity:
    """Move a decision (e.g. planned → running → succeeded, or → exhausted); optionally change `chosen`."""
    status = DecisionStatus(status)
    row = _decision_row(session, decision_id, lock=True)
    old = {"status": DecisionStatus(row.status), "chosen": row.chosen}
    if old["status"] in _TERMINAL and status is not old["status"]:
        raise InvalidInput(f"decision {decision_id} is {old['status'].value} (final)", field="status")
    row.status, row.updated_at = status, utcnow()
    if chosen is not None:
        row.chosen = chosen
    audit.record(session, "decision.status", "decision", decision_id, old=old,
                 new={"status": status, "chosen": row.chosen}, reason=reason, actor=actor)
    session.flush()
    return row.to_entity()


def _verdict(session: Session, decision_id: int, verdict: Verdict, actor: str | None, reason: str) -> DecisionEntity:
    who = actor_of(actor)
    row = _decision_row(session, decision_id, lock=True)
    if DecisionStatus(row.status) is not DecisionStatus.awaiting_approval:
        raise InvalidInput(f"decision {decision_id} is {DecisionStatus(row.status).value}, not awaiting approval",
                           field="decision")
    session.add(ApprovalRow(decision_id=decision_id, verdict=verdict, actor=who, reason=reason, at=utcnow()))
    new_status = DecisionStatus.planned if verdict is Verdict.approved else DecisionStatus.rejected
    row.status, row.updated_at = new_status, utcnow()
    audit.record(session, f"decision.{verdict.value}", "decision", decision_id,
                 old={"status": DecisionStatus.awaiting_approval}, new={"status": new_status, "verdict": verdict},
                 reason=reason, actor=who)
    session.flush()
    session.expire(row)
    return get_decision(session, decision_id)


def approve_decision(session: Session, decision_id: int, actor: str | None = None, reason: str = "") -> DecisionEntity:
    """A human approves a decision awaiting approval: it goes back to `planned`, ready to run."""
    return _verdict(session, decision_id, Verdict.approved, actor, reason)


def reject_decision(session: Session, decision_id: int, actor: str | None = None, reason: str = "") -> DecisionEntity:
    """A human rejects a decision awaiting approval: it becomes `rejected` (final)."""
    return _verdict(session, decision_id, Verdict.rejected, actor, reason)


# -- runs -----------------------------------------------------------------------
def _run_row(session: Session, run_id: int) -> RunRow:
    row = session.scalars(select(RunRow).where(RunRow.id == run_id).with_for_update()).one_or_none()
    if row is None:
        raise NotFound(f"no treatment run with id {run_id}", field="run")
    return row


def start_run(session: Session, decision_id: int | None, treatment: str, parameters: Mapping[str, Any],
              input_version_id: int, *, actor: str | None = None) -> RunEntity:
    """Record that a treatment started on a version (outcome `running`)."""
    who = actor_of(actor)
    if decision_id is not None:
        _decision_row(session, decision_id)
    _version_row(session, input_version_id)
    now = utcnow()
    row = RunRow(decision_id=decision_id, treatment=treatment, parameters=audit.jsonable(dict(parameters)),
                 input_version_id=input_version_id, started_at=now, heartbeat_at=now, outcome=RunOutcome.running,
                 error_text="", metrics={}, artifacts={}, created_by=who)
    session.add(row)
    session.flush()
    audit.record(session, "run.start", "treatment_run", row.id, new={
        "decision_id": decision_id, "treatment": treatment, "input_version_id": input_version_id,
        "parameters": row.parameters,
    }, actor=who)
    return row.to_entity()


def heartbeat_run(session: Session, run_id: int) -> None:
    """A running treatment says it is alive (not audited: no state change)."""
    row = _run_row(session, run_id)
    row.heartbeat_at = utcnow()


def finish_run(session: Session, run_id: int, outcome: RunOutcome | str, output_version_id: int | None = None,
               wall_seconds: float | None = None, trainable_parameters: int | None = None, error_text: str = "",
               metrics: Mapping[str, Any] | None = None, artifacts: Mapping[str, Any] | None = None, *,
               actor: str | None = None) -> RunEntity:
    """Close a run with its outcome, output version, wall time and trainable parameter count."""
    outcome = RunOutcome(outcome)
    if outcome is RunOutcome.running:
        raise InvalidInput("a finished run needs a final outcome", field="outcome")
    row = _run_row(session, run_id)
    if RunOutcome(row.outcome) is not RunOutcome.running:
        raise InvalidInput(f"run {run_id} already finished ({RunOutcome(row.outcome).value})", field="run")
    if output_version_id is not None:
        _version_row(session, output_version_id)
    now = utcnow()
    row.outcome, row.output_version_id, row.finished_at, row.heartbeat_at = outcome, output_version_id, now, now
    row.wall_seconds = finite_or_none(wall_seconds, "wall_seconds", lo=0.0)
    row.trainable_parameters, row.error_text = trainable_parameters, error_text or ""
    row.metrics, row.artifacts = audit.jsonable(dict(metrics or {})), audit.jsonable(dict(artifacts or {}))
    audit.record(session, "run.finish", "treatment_run", run_id, old={"outcome": RunOutcome.running}, new={
        "outcome": outcome, "output_version_id": output_version_id, "wall_seconds": row.wall_seconds,
        "trainable_parameters": trainable_parameters, "error_text": row.error_text[:500],
    }, actor=actor)
    session.flush()
    return row.to_entity()


def mark_abandoned_runs(session: Session, *, older_than: timedelta = timedelta(hours=1),
                        now: datetime | None = None, actor: str | None = None) -> list[int]:
    """Runs still `running` whose heartbeat is older than `older_than` become `abandoned`; audited."""
    cutoff = (now or utcnow()) - older_than
    rows = list(session.scalars(select(RunRow).where(RunRow.outcome == RunOutcome.running,
                                                     RunRow.heartbeat_at < cutoff).with_for_update(skip_locked=True)))
    stamp = utcnow()
    for r in rows:
        r.outcome, r.finished_at = RunOutcome.abandoned, stamp
        r.error_text = r.error_text or f"no heartbeat since {r.heartbeat_at.isoformat()}"
    audit.record_many(session, [{
        "action": "run.abandon", "entity_type": "treatment_run", "entity_id": r.id,
        "old": {"outcome": "running"}, "new": {"outcome": "abandoned"}, "reason": r.error_text,
    } for r in rows], actor=actor)
    session.flush()
    return [r.id for r in rows]


def get_run(session: Session, run_id: int) -> RunEntity:
    row = session.get(RunRow, run_id)
    if row is None:
        raise NotFound(f"no treatment run with id {run_id}", field="run")
    return row.to_entity()


def run_history(session: Session, *, treatment: str | None = None,
                decision_id: int | None = None) -> list[RunEntity]:
    """Every run, oldest first (the planner's empirical costs come from these)."""
    q = select(RunRow).order_by(RunRow.id)
    if treatment is not None:
        q = q.where(RunRow.treatment == treatment)
    if decision_id is not None:
        q = q.where(RunRow.decision_id == decision_id)
    return [r.to_entity() for r in session.scalars(q)]


def run_kinds(session: Session) -> dict[int, str]:
    """The issue kind each run treated (its decision's first report), by run id."""
    q = (select(RunRow.id, ReportRow.kind)
         .join(DecisionReportRow, DecisionReportRow.decision_id == RunRow.decision_id)
         .join(ReportRow, ReportRow.id == DecisionReportRow.report_id)
         .order_by(RunRow.id, ReportRow.id))
    out: dict[int, str] = {}
    for run_id, kind in session.execute(q):
        out.setdefault(run_id, str(getattr(kind, "value", kind)))
    return out
