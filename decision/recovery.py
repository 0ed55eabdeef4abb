"""Recovery: what every pass first does about the work that dead processes left behind.

A `decide run` can die at any step (`kill -9`, a crash, a lost machine). What it leaves is found from
the registry alone, in one transaction at the start of the next pass (`recover`, called by
`Engine.run_pass`):

* a run still `running` without a heartbeat for the stale time is `abandoned`
  (`repo.mark_abandoned_runs`); its decision, if still in progress, is taken over and resumed
  (`resume_interrupted`): it goes back to `planned` at the abandoned run's rung, with its approvals,
  its runs and its reports as they were, and the same pass carries it on (`Engine.run_pass`) — the
  approved treatment runs again, the rungs it already tried are not re-run, and its report never gets
  a second decision. The audit trail says it was resumed (`decision.resume`), by whom (the actor of
  the take-over) and by which worker;
* a claim whose lease ran out (or, with `--take-over`, older than two heartbeats) is released
  (`repo.release_expired_claims`);
* a decision left between two steps — no run running, nothing written for the stale time — is
  finished as its process would have finished it, or resumed when nothing finished it (`settle_stalled`).

The fault-injection suite (`tests/faults/`) kills a pass at every step of the loop and checks that
this recovers all of it, with nothing half-written and no report decided twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from cxr import clock
from decision.liveness import TAKEOVER_AFTER, LiveRun, running_now
from registry import repo
from registry.entities import DecisionStatus, ReportStatus, RunOutcome, Verdict
from registry.session import session_scope

log = logging.getLogger(__name__)


@dataclass
class Recovery:
    """What a pass found of dead processes' work, and what it did about it."""

    abandoned_runs: list[int] = field(default_factory=list)
    released_claims: int = 0
    #: decisions a dead process left between two steps, finished by this pass (`settle_stalled`)
    settled_decisions: list[int] = field(default_factory=list)
    #: decisions taken over from a dead process and put back to `planned`, for this pass to carry on
    resumed_decisions: list[int] = field(default_factory=list)
    #: runs still running afterwards: another process's work, with when they would be taken over
    live_runs: list[LiveRun] = field(default_factory=list)
    #: runs `take_over` found alive (a heartbeat within two beats) and left alone
    refused_takeover: list[int] = field(default_factory=list)


def recover(url: str | None, stale_after: timedelta, *, take_over: bool = False, worker: str = "") -> Recovery:
    """Mark runs without a heartbeat for `stale_after` abandoned and resume their decisions, release claims
    whose lease ran out, and finish (or resume) the decisions a dead process left between two steps — in
    one transaction. `take_over` does it at once for work silent for two heartbeats (`TAKEOVER_AFTER`); a
    run that beat more recently is alive and is left alone (`refused_takeover`). `worker` (the pass that
    takes the work over) is recorded with each resumption."""
    now = clock.now()
    cutoff = min(stale_after, TAKEOVER_AFTER) if take_over else stale_after
    out = Recovery()
    with session_scope(url) as s:
        if take_over:
            out.refused_takeover = [r.id for r in repo.running_runs(s) if now - r.heartbeat_at < cutoff]
        out.abandoned_runs = repo.mark_abandoned_runs(s, older_than=cutoff, now=now)
        out.released_claims = len(repo.release_expired_claims(
            s, now=now, claimed_before=now - cutoff if take_over else None))
        out.resumed_decisions = resume_interrupted(s, out.abandoned_runs, worker)
        out.settled_decisions = settle_stalled(s, cutoff, now, worker, resumed=out.resumed_decisions)
        out.live_runs = running_now(s, stale_after, now)
    return out


def resume_interrupted(s: Session, abandoned: list[int], worker: str = "") -> list[int]:
    """The decisions of abandoned runs go back to `planned` at the abandoned run's rung, to be resumed;
    return their ids.

    Nothing else of them changes: their approvals stand (the approved treatment runs again, as
    approved), their finished runs stand (those rungs are not tried again), their reports stay `decided`
    by them. Only a decision still in progress is resumed: one already finished (its process recorded
    the interruption before it died) no longer speaks for its reports, which may be another decision's.
    """
    resumed: list[int] = []
    for run_id in abandoned:
        run = repo.get_run(s, run_id)
        if run.decision_id is None or run.decision_id in resumed:
            continue
        d = repo.get_decision(s, run.decision_id)
        if d.status not in (DecisionStatus.running, DecisionStatus.planned):
            continue
        approved = [a.actor for a in d.approvals if a.verdict == Verdict.approved]
        why = (f"taken over{_by(worker)}: run {run_id} ({run.treatment}) had no heartbeat since "
               f"{run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC (its process is gone); decision {d.id} resumes at "
               f"{run.treatment}" + (f", approved by {', '.join(approved)}" if approved else ""))
        repo.resume_decision(s, d.id, at=run.treatment, reason=why, worker=worker)
        log.warning("decision %d: %s", d.id, why)
        resumed.append(d.id)
    return resumed


def _by(worker: str) -> str:
    return f" by {worker}" if worker else ""


def settle_stalled(s: Session, older_than: timedelta, now: datetime, worker: str = "", *,
                   resumed: list[int] | None = None) -> list[int]:
    """Finish the decisions a dead process left between two steps (`repo.stalled_decisions`) as that
    process would have; return their ids.

    An accepted run had promoted its candidate in the transaction that recorded it, so the decision
    succeeded and its report is resolved (never treated again); a held run waits for a person
    (`awaiting_approval`). Any other decision is resumed as `resume_interrupted` does (back to
    `planned`, appended to `resumed`): the pass carries on its ladder where it stopped. Each move is
    audited with the reason.
    """
    settled = []
    for did in repo.stalled_decisions(s, older_than=older_than, now=now):
        d = repo.get_decision(s, did)
        runs = repo.list_runs(s, decision_id=did)
        accepted = next((r for r in runs if r.outcome == RunOutcome.accepted), None)
        held = next((r for r in runs if r.outcome == RunOutcome.held), None)
        why = f"taken over{_by(worker)}: the process working on decision {did} stopped between two steps"
        if accepted is None and held is None:
            repo.resume_decision(s, did, at=None, reason=f"{why}; it resumes", worker=worker)
            log.warning("decision %d: %s; it resumes", did, why)
            if resumed is not None:
                resumed.append(did)
            continue
        if accepted is not None:
            ref = repo.get_version(s, accepted.output_version_id).ref if accepted.output_version_id else "?"
            why = f"{accepted.treatment} accepted: run {accepted.id} promoted {ref}; {why}"
            repo.set_decision_status(s, did, DecisionStatus.succeeded, reason=why)
            for rid in d.report_ids:
                if repo.get_report(s, rid).status in (ReportStatus.claimed, ReportStatus.decided):
                    repo.set_report_status(s, rid, ReportStatus.resolved, reason=why)
        else:
            why = f"{held.treatment} candidate of run {held.id} is held for a person; {why}"
            repo.set_decision_status(s, did, DecisionStatus.awaiting_approval, reason=why)
        log.warning("decision %d: %s", did, why)
        settled.append(did)
    return settled
