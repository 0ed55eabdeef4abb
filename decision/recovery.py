"""Recovery: what every pass first does about the work that dead processes left behind.

A `decide run` can die at any step (`kill -9`, a crash, a lost machine). What it leaves is found from
the registry alone, one transaction at the start of the next pass (`Engine.run_pass`):

* a run still `running` without a heartbeat for the stale time is `abandoned`
  (`repo.mark_abandoned_runs`); its decision, if still in progress, is cancelled and its report
  opened again (`reopen_interrupted`);
* a claim whose lease ran out (or, with `--take-over`, older than two heartbeats) is released
  (`repo.release_expired_claims`);
* a decision left between two steps — no run running, nothing written for the stale time — is
  finished as its process would have finished it (`settle_stalled`).

The fault-injection suite (`tests/faults/`) kills a pass at every step of the loop and checks that
this recovers all of it, with nothing half-written and no report decided twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from registry import repo
from registry.entities import DecisionStatus, ReportStatus, RunOutcome

log = logging.getLogger(__name__)


def reopen_interrupted(s: Session, abandoned: list[int]) -> None:
    """Reports whose run was abandoned become actionable again; their decision is cancelled.

    Only when that decision was still in progress: one already finished (its process recorded the
    interruption before it died) no longer speaks for its reports, which may be another decision's now.
    """
    for run_id in abandoned:
        run = repo.get_run(s, run_id)
        if run.decision_id is None:
            continue
        d = repo.get_decision(s, run.decision_id)
        if d.status not in (DecisionStatus.running, DecisionStatus.planned):
            continue
        repo.set_decision_status(s, d.id, DecisionStatus.cancelled, reason=f"run {run_id} abandoned")
        for rid in d.report_ids:
            if repo.get_report(s, rid).status in (ReportStatus.claimed, ReportStatus.decided):
                repo.set_report_status(s, rid, ReportStatus.open, reason=f"run {run_id} abandoned")


def settle_stalled(s: Session, older_than: timedelta, now: datetime) -> list[int]:
    """Finish the decisions a dead process left between two steps (`repo.stalled_decisions`) as that
    process would have; return their ids.

    An accepted run had promoted its candidate in the transaction that recorded it, so the decision
    succeeded and its report is resolved (never treated again); a held run waits for a person
    (`awaiting_approval`); any other decision is cancelled and its report opened to be planned again.
    Each move is audited with the reason.
    """
    settled = []
    for did in repo.stalled_decisions(s, older_than=older_than, now=now):
        d = repo.get_decision(s, did)
        runs = repo.run_history(s, decision_id=did)
        accepted = next((r for r in runs if r.outcome == RunOutcome.accepted), None)
        held = next((r for r in runs if r.outcome == RunOutcome.held), None)
        why = f"taken over: the process working on decision {did} stopped between two steps"
        report_status: ReportStatus | None = ReportStatus.open
        if accepted is not None:
            ref = repo.get_version(s, accepted.output_version_id).ref if accepted.output_version_id else "?"
            why = f"{accepted.treatment} accepted: run {accepted.id} promoted {ref}; {why}"
            status, report_status = DecisionStatus.succeeded, ReportStatus.resolved
        elif held is not None:
            why = f"{held.treatment} candidate of run {held.id} is held for a person; {why}"
            status, report_status = DecisionStatus.awaiting_approval, None
        else:
            status = DecisionStatus.cancelled
        repo.set_decision_status(s, did, status, reason=why)
        for rid in d.report_ids:
            if report_status is not None and repo.get_report(s, rid).status in (ReportStatus.claimed,
                                                                                 ReportStatus.decided):
                repo.set_report_status(s, rid, report_status, reason=why)
        log.warning("decision %d: %s", did, why)
        settled.append(did)
    return settled
