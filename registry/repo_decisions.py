"""Decisions (with every candidate's numbers), approvals, and treatment runs.

The decision engine writes through these; each call is one state change and
appends its audit event in the caller's transaction. `list_runs` is what
the planner's empirical cost matrix is built from, so runs keep their wall
time, trainable parameters and outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound
from registry import audit, repo_notify, repo_notify_events
from registry.entities import DecisionEntity, DecisionStatus, RunEntity, RunOutcome, Verdict
from registry.models import ApprovalRow, CandidateRow, DecisionReportRow, DecisionRow, ReportRow, RunRow, utcnow
from registry.repo_common import actor_of, finite_or_none
from registry.repo_versions import _version_row
from registry.stale import abandon_silent

log = logging.getLogger(__name__)
#: a timestamp further than this ahead of the checking clock is not believed (see `mark_abandoned_runs`)
MAX_CLOCK_SKEW = timedelta(seconds=5)
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
                    evidence: Mapping[str, Any] | None = None, actor: str | None = None) -> DecisionEntity:
    """Record a decision on reports: the policy digest, every candidate (in rank order) and the choice.

    A candidate dict has treatment, applicable, reason, prior_cost, empirical_cost,
    expected_cost, p_success, alpha, beta, score, needs_approval (numbers may be None);
    `rank` defaults to its position. `evidence` is what the planner read besides the report (e.g. a
    shift diagnosis), JSON.
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
                      evidence=audit.jsonable(dict(evidence or {})), created_by=who, created_at=now, updated_at=now)
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
        **({"evidence": row.evidence} if row.evidence else {}),
        "candidates": [{"rank": r["rank"], "treatment": r["treatment"], "expected_cost": r["expected_cost"],
                        "p_success": r["p_success"], "applicable": r["applicable"]} for r in rows],
    }, reason=rationale, actor=who)
    _notify_status(session, row.id, status, chosen)
    session.flush()
    session.expire(row)
    return get_decision(session, row.id)


def _notify_status(session: Session, decision_id: int, status: DecisionStatus, chosen: str | None) -> None:
    # in the caller's transaction: the event exists iff the status change commits
    if status is DecisionStatus.awaiting_approval:
        repo_notify.enqueue_decision(session, "decision.awaiting_approval", decision_id,
                                     f"awaits approval to run {chosen or 'its treatment'}")
    elif status is DecisionStatus.exhausted:
        repo_notify.enqueue_decision(session, "decision.exhausted", decision_id,
                                     "exhausted its ladder: no treatment fixed the issue")


def get_decision(session: Session, decision_id: int, *, lock: bool = False) -> DecisionEntity:
    """The decision; `lock` holds its row until the transaction ends (a status read, then acted on)."""
    return _decision_row(session, decision_id, lock=lock).to_entity()


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
    if status is not old["status"]:
        _notify_status(session, decision_id, status, row.chosen)
    session.flush()
    return row.to_entity()


def resume_decision(session: Session, decision_id: int, *, at: str | None, reason: str, worker: str = "",
                    actor: str | None = None) -> DecisionEntity:
    """A pass takes over a decision whose process died: it goes back to `planned` (its approvals, runs and
    reports untouched) to be resumed at rung `at` (None: its chosen one). Audited as `decision.resume`,
    by the actor of the take-over, with the worker that resumes it. A final decision is refused."""
    row = _decision_row(session, decision_id, lock=True)
    old = {"status": DecisionStatus(row.status), "chosen": row.chosen}
    if old["status"] in _TERMINAL:
        raise InvalidInput(f"decision {decision_id} is {old['status'].value} (final): it cannot be resumed",
                           field="decision")
    row.status, row.updated_at = DecisionStatus.planned, utcnow()
    if at is not None:
        row.chosen = at
    audit.record(session, "decision.resume", "decision", decision_id, old=old,
                 new={"status": DecisionStatus.planned, "chosen": row.chosen, "worker": worker}, reason=reason,
                 actor=actor)
    session.flush()
    return row.to_entity()


def claim_planned(session: Session, decision_id: int, *, reason: str, actor: str | None = None) -> bool:
    """Move a `planned` decision to `running` under its row lock, for one pass alone to resume it; False
    (nothing written) when it is no longer `planned` — another pass took it, or it was finished."""
    row = _decision_row(session, decision_id, lock=True)
    if DecisionStatus(row.status) is not DecisionStatus.planned:
        return False
    set_decision_status(session, decision_id, DecisionStatus.running, reason=reason, actor=actor)
    return True


def add_decision_evidence(session: Session, decision_id: int, key: str, value: Any, *, reason: str = "",
                          actor: str | None = None) -> DecisionEntity:
    """Record one more piece of evidence on a decision (e.g. the shift diagnosis made before a backbone
    treatment); an existing key is replaced. Audited with the value."""
    row = _decision_row(session, decision_id, lock=True)
    value = audit.jsonable(value)
    old = (row.evidence or {}).get(key)
    row.evidence = {**(row.evidence or {}), key: value}
    row.updated_at = utcnow()
    audit.record(session, "decision.evidence", "decision", decision_id, old={key: old} if old is not None else None,
                 new={key: value}, reason=reason, actor=actor)
    session.flush()
    return row.to_entity()


def latest_evidence(session: Session, key: str, **match: int | str) -> tuple[int, dict[str, Any]] | None:
    """The newest decision whose evidence `key` is an object with every field of `match` equal to the given
    value (ints and strings), as (decision id, that object); None when no decision has such evidence.

    A JSON-path query the database answers (SQLite's json_extract, PostgreSQL's #>> operator), not a scan
    of every decision in Python.
    """
    q = select(DecisionRow.id, DecisionRow.evidence).order_by(DecisionRow.id.desc()).limit(1)
    for field, value in match.items():
        path = DecisionRow.evidence[(key, field)]
        q = q.where(path.as_integer() == value if isinstance(value, int) else path.as_string() == value)
    row = session.execute(q).first()
    return None if row is None else (row.id, dict(row.evidence[key]))


class ApprovalRefused(InvalidInput):
    """Four-eyes: the actor who created a decision may not approve it. The refusal is an audit event, so
    `session_scope` commits the transaction (`commit_before_raise`) before this error propagates."""

    commit_before_raise = True


def _verdict(session: Session, decision_id: int, verdict: Verdict, actor: str | None, reason: str, *,
             four_eyes: bool = True) -> DecisionEntity:
    who = actor_of(actor)
    row = _decision_row(session, decision_id, lock=True)
    if DecisionStatus(row.status) is not DecisionStatus.awaiting_approval:
        raise InvalidInput(f"decision {decision_id} is {DecisionStatus(row.status).value}, not awaiting approval",
                           field="decision")
    own = verdict is Verdict.approved and who == row.created_by
    if own and four_eyes:
        audit.record(session, "decision.approval_refused", "decision", decision_id,
                     old={"status": DecisionStatus.awaiting_approval}, new={"status": DecisionStatus.awaiting_approval,
                     "rule": "four_eyes", "created_by": row.created_by}, reason=reason, actor=who)
        raise ApprovalRefused(f"{who!r} created decision {decision_id} and may not approve it (four-eyes rule): "
                              "another person must, or set approvals.four_eyes = false in the policy", field="actor")
    session.add(ApprovalRow(decision_id=decision_id, verdict=verdict, actor=who, reason=reason, at=utcnow()))
    new_status = DecisionStatus.planned if verdict is Verdict.approved else DecisionStatus.rejected
    row.status, row.updated_at = new_status, utcnow()
    audit.record(session, f"decision.{verdict.value}", "decision", decision_id,
                 old={"status": DecisionStatus.awaiting_approval}, new={"status": new_status, "verdict": verdict,
                 **({"four_eyes": "waived by policy"} if own else {})}, reason=reason, actor=who)
    repo_notify.enqueue_decision(session, f"decision.{verdict.value}", decision_id, f"was {verdict.value} by {who}")
    session.flush()
    session.expire(row)
    return get_decision(session, decision_id)


def approve_decision(session: Session, decision_id: int, actor: str | None = None, reason: str = "", *,
                     four_eyes: bool = True) -> DecisionEntity:
    """A human approves a decision awaiting approval: it goes back to `planned`, ready to run.

    `four_eyes` (the policy's `approvals.four_eyes`): the actor who created the decision may not
    approve it — `ApprovalRefused` (exit 2), recorded as a `decision.approval_refused` audit event.
    With `four_eyes=False` a self-approval is allowed and its audit event says the rule was waived.
    """
    return _verdict(session, decision_id, Verdict.approved, actor, reason, four_eyes=four_eyes)


def reject_decision(session: Session, decision_id: int, actor: str | None = None, reason: str = "") -> DecisionEntity:
    """A human rejects a decision awaiting approval: it becomes `rejected` (final)."""
    return _verdict(session, decision_id, Verdict.rejected, actor, reason)


# -- runs -----------------------------------------------------------------------
class RunFinished(InvalidInput):
    """The run is no longer `running`: finished, or taken over (`abandoned`) by another pass that saw no
    heartbeat. A late writer — the process that was running it — is refused, and must leave the decision
    and its reports to whoever took them over."""


def _run_row(session: Session, run_id: int) -> RunRow:
    row = session.scalars(select(RunRow).where(RunRow.id == run_id).with_for_update()).one_or_none()
    if row is None:
        raise NotFound(f"no treatment run with id {run_id}", field="run")
    return row


def start_run(session: Session, decision_id: int | None, treatment: str, parameters: Mapping[str, Any],
              input_version_id: int, *, actor: str | None = None) -> RunEntity:
    """Record that a treatment started on a version (outcome `running`). A decision already final (e.g.
    taken over while its process stood still between two steps) gets no new run: `InvalidInput`."""
    who = actor_of(actor)
    if decision_id is not None:
        decision = _decision_row(session, decision_id, lock=True)
        if DecisionStatus(decision.status) in _TERMINAL:
            raise InvalidInput(f"decision {decision_id} is {DecisionStatus(decision.status).value} (final): "
                               "no treatment may start on it", field="decision")
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
    """A running treatment says it is alive (not audited: no state change). A run no longer `running`
    (taken over) keeps the heartbeat it had when it was finished."""
    row = _run_row(session, run_id)
    if RunOutcome(row.outcome) is RunOutcome.running:
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
        raise RunFinished(f"run {run_id} already finished ({RunOutcome(row.outcome).value})", field="run")
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
    if outcome is RunOutcome.held:  # a person must judge the candidate: an event, in this transaction
        repo_notify_events.enqueue_held(session, row)
    session.flush()
    return row.to_entity()


def settle_held_run(session: Session, run_id: int, outcome: RunOutcome | str, *, reason: str,
                    actor: str | None = None) -> RunEntity:
    """A run `held` for a person (its candidate passed the gate with a flag) becomes `accepted` or
    `rejected` once someone decided; the verdict's reason is audited. Any other run is refused."""
    outcome = RunOutcome(outcome)
    if outcome not in (RunOutcome.accepted, RunOutcome.rejected):
        raise InvalidInput("a held run is settled as accepted or rejected", field="outcome")
    row = _run_row(session, run_id)
    if RunOutcome(row.outcome) is not RunOutcome.held:
        raise InvalidInput(f"run {run_id} is {RunOutcome(row.outcome).value}, not held", field="run")
    row.outcome = outcome
    audit.record(session, "run.settle", "treatment_run", run_id, old={"outcome": RunOutcome.held},
                 new={"outcome": outcome}, reason=reason, actor=actor)
    session.flush()
    return row.to_entity()


def mark_abandoned_runs(session: Session, *, older_than: timedelta = timedelta(hours=1),
                        now: datetime | None = None, actor: str | None = None,
                        max_skew: timedelta = MAX_CLOCK_SKEW) -> list[int]:
    """Runs still `running` whose heartbeat is older than `older_than` become `abandoned`; audited.

    Clocks. Age is measured on this clock (`now`), so a live worker whose clock runs ahead writes
    heartbeats "in the future", which never look old: it is not taken over while it beats. But such a
    heartbeat must not make a run immortal once its process is dead (it would look alive until the
    future date). A heartbeat more than `max_skew` ahead of `now` is not believed: it is set back to
    `now`, as if the run had beaten now, so the run is abandoned `older_than` from now unless it beats
    again — which a live worker does within one heartbeat interval, far less than the stale time.
    """
    now = now or utcnow()
    abandoned = abandon_silent(session, RunRow, "outcome", RunOutcome.running, RunOutcome.abandoned,
                               cutoff=now - older_than, action="run.abandon", entity_type="treatment_run",
                               why=lambda r: f"no heartbeat since {r.heartbeat_at.isoformat()}", actor=actor)
    ahead = list(session.scalars(
        update(RunRow).where(RunRow.outcome == RunOutcome.running, RunRow.heartbeat_at > now + max_skew)
        .values(heartbeat_at=now).returning(RunRow.id).execution_options(synchronize_session=False)))
    if ahead:
        log.warning("runs %s had heartbeats more than %s s ahead of this clock (%s): set back to now",
                    sorted(ahead), max_skew.total_seconds(), now.isoformat())
    return abandoned


def stalled_decisions(session: Session, *, older_than: timedelta, now: datetime | None = None,
                      max_skew: timedelta = MAX_CLOCK_SKEW) -> list[int]:
    """Decisions a dead process left between two steps; their rows are locked for the caller to finish.

    A decision is stalled when it is `running`, or `planned` without an approval (the engine moves a new
    decision on at once), none of its runs is `running` (a running run has its own heartbeat, see
    `mark_abandoned_runs`), and nothing about it was written — the decision, or its runs' last
    heartbeats and finishes — for `older_than`. Between two steps a live engine writes within
    milliseconds, so such a decision has lost its process: it was killed after a run's record committed
    (a promotion included) and before the decision was finished, or before its first run started.
    A timestamp more than `max_skew` in the future is not believed (as in `mark_abandoned_runs`): the
    decision's own is set back to `now`, its runs' are ignored.
    """
    now = now or utcnow()
    cutoff, ahead = now - older_than, now + max_skew
    rows = list(session.scalars(
        select(DecisionRow).where(DecisionRow.status.in_((DecisionStatus.planned, DecisionStatus.running)))
        .order_by(DecisionRow.id).with_for_update(skip_locked=True)))
    runs: dict[int, list[RunRow]] = {}
    if rows:
        for r in session.scalars(select(RunRow).where(RunRow.decision_id.in_([d.id for d in rows]))):
            runs.setdefault(r.decision_id, []).append(r)
    out = []
    for d in rows:
        mine = runs.get(d.id, [])
        if (DecisionStatus(d.status) is DecisionStatus.planned and d.approvals) or any(
                RunOutcome(r.outcome) is RunOutcome.running for r in mine):
            continue
        if d.updated_at > ahead:
            log.warning("decision %d was last written at %s, ahead of this clock (%s): set back to now",
                        d.id, d.updated_at.isoformat(), now.isoformat())
            d.updated_at = now
        stamps = [t for r in mine for t in (r.heartbeat_at, r.finished_at) if t is not None and t <= ahead]
        if max([d.updated_at, *stamps]) < cutoff:
            out.append(d.id)
    session.flush()
    return out


def running_runs(session: Session) -> list[RunEntity]:
    """Runs still `running` (their heartbeat says whether anyone is still at them), oldest first."""
    q = select(RunRow).where(RunRow.outcome == RunOutcome.running).order_by(RunRow.id)
    return [r.to_entity() for r in session.scalars(q)]


def get_run(session: Session, run_id: int) -> RunEntity:
    row = session.get(RunRow, run_id)
    if row is None:
        raise NotFound(f"no treatment run with id {run_id}", field="run")
    return row.to_entity()


def list_runs(session: Session, *, treatment: str | None = None,
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
    return {run_id: kind for run_id, (kind, _) in run_reports(session).items()}


def run_reports(session: Session) -> dict[int, tuple[str, str | None]]:
    """(issue kind, site) of the report each run treated (its decision's first report), by run id."""
    q = (select(RunRow.id, ReportRow.kind, ReportRow.site)
         .join(DecisionReportRow, DecisionReportRow.decision_id == RunRow.decision_id)
         .join(ReportRow, ReportRow.id == DecisionReportRow.report_id)
         .order_by(RunRow.id, ReportRow.id))
    out: dict[int, tuple[str, str | None]] = {}
    for run_id, kind, site in session.execute(q):
        out.setdefault(run_id, (str(getattr(kind, "value", kind)), site))
    return out
