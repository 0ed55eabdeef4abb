"""The decision engine: open error reports → plans → treatments → verdicts, all recorded.

It reads the registry, asks each plugin whether it applies (cheap facts only),
calls the pure planner, records the decision with every candidate and the
policy digest, then walks the escalation ladder: run the first candidate,
gate it, and on rejection move to the next — until one is accepted, the list
ends, or a candidate needs a person (`awaiting_approval`: the policy asks for
approval, or its expected cost exceeds `--max-cost`). Approved decisions are
resumed by the next pass from where they stopped.

A candidate that passes the gate with a flag a person must accept (an
underpowered non-inferiority check) is registered but held; a person's verdict
on it is settled by `decision.approvals`. Planning reads evidence besides the
report (`decision.evidence`); liveness and take-over arithmetic live in
`decision.liveness`.

Sites: a report's parent is the version serving its site (`production@site`,
else `production`), and the gate's verdict says whether a promotion covers
every site or that site alone (see `decision.treat`).

Crash safety: reports are claimed atomically with a lease, one at a time;
runs carry a heartbeat (`decision.liveness`); every pass first takes over
what dead processes left (`decision.recovery`) and resumes their decisions
where they stopped — the same decision, at the same rung, its approval kept,
the rungs it tried not run again. A decision is resumed by one pass alone
(`repo.claim_planned`). A process whose work was
taken over meanwhile is fenced: its claim is checked under a row lock before
it decides, its late run record is refused (`RunFinished`), and it leaves the
decision and reports to whoever took them. A treatment that raises is recorded
as `failed` with its error text and the ladder goes on; if nothing succeeded
and something failed, the report is opened again for the next pass.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from cxr.faults import failpoint
from decision import evidence, site_group_pass
from decision.approvals import approved_decisions, approved_treatment, settle_held, settle_rejected_holds
from decision.catalog import Catalog
from decision.executor import Executor, LocalExecutor, make_executor
from decision.past_runs import run_stats  # in its own module: `decide costs` reads it without torch
from decision.planner import Candidate, Plan, RunStat, plan
from decision.recovery import Recovery, recover
from decision.treat import Outcome, execute
from policies import Policy, load_policy, policy_digest
from registry import repo
from registry.entities import (
    DecisionEntity,
    DecisionStatus,
    ReportEntity,
    ReportStatus,
    RunOutcome,
    VersionEntity,
)
from registry.session import session_scope
from registry.settings import get_settings
from treatments.base import Treatment
from treatments.plugins import load_treatments

log = logging.getLogger(__name__)


@dataclass
class ReportPlan:
    report: ReportEntity
    parent: VersionEntity
    plan: Plan
    #: what the planner read besides the report (recorded with the decision), e.g. channel evidence
    evidence: dict = field(default_factory=dict)


@dataclass
class DecisionOutcome:
    report_id: int
    decision_id: int
    status: DecisionStatus
    plan: Plan | None
    runs: list[Outcome] = field(default_factory=list)
    message: str = ""
    #: every report the decision covers (a site group's: several; `report_id` is its lead)
    report_ids: list[int] = field(default_factory=list)


_FINAL = frozenset({DecisionStatus.succeeded, DecisionStatus.exhausted, DecisionStatus.rejected,
                    DecisionStatus.cancelled})


@dataclass(kw_only=True)
class PassSummary(Recovery):
    """One pass: what its recovery step found and did (`Recovery`), and each decision it made or moved on."""

    worker: str
    decisions: list[DecisionOutcome] = field(default_factory=list)


class Engine:
    """Plans and treats open reports against one registry and DECIDE_HOME."""

    def __init__(self, url: str | None, home: Path, policy: Policy, plugins: dict[str, Treatment] | None = None,
                 worker: str = "local", executor: Executor | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.url, self.home, self.policy, self.worker = url, Path(home), policy, worker
        self.stale_after = timedelta(seconds=90)  # from_settings: DECIDE_STALE_SECONDS
        #: one line per treatment start and end (the CLI prints them; default: the log)
        self.progress: Callable[[str], None] = progress or (lambda line: log.info("%s", line))
        self.executor: Executor = executor or LocalExecutor()
        self.plugins = plugins if plugins is not None else load_treatments().treatments
        self.catalog = Catalog(self.home)
        self.digest = policy_digest(policy)
        #: the site's shift diagnosis when none is recorded (engine, session, version, site) -> dict | None;
        #: None: `decision.site_group_pass` diagnoses it from the films
        self.diagnose: Callable[..., dict | None] | None = None

    @classmethod
    def from_settings(cls, policy_path: Path | None = None, worker: str | None = None) -> Engine:
        """An engine on $DECIDE_HOME / $DECIDE_DATABASE_URL with the given (or $DECIDE_POLICY, or bundled) policy."""
        import os
        import socket

        settings = get_settings()
        policy = load_policy(policy_path or settings.policy)
        who = worker or f"{socket.gethostname()}:{os.getpid()}"
        engine = cls(None, settings.home_dir, policy, worker=who, executor=make_executor(settings.executor))
        engine.stale_after = timedelta(seconds=settings.stale_seconds)
        return engine

    # -- planning (no writes) -----------------------------------------------
    def plan_report(self, session: Session, report: ReportEntity, past: list[RunStat]) -> ReportPlan:
        parent = evidence.serving_version(session, report)
        diag = evidence.site_diagnosis(session, parent, report.site)
        skip = evidence.skips_head_level(self.policy, diag)
        infos = evidence.treatment_infos(session, self.plugins, self.policy, report, parent, skip,
                                         catalog=self.catalog)
        p = plan(evidence.report_view(report), infos, self.policy, past, digest=self.digest)
        record, notes = evidence.for_plan(self.catalog, parent, report, diag, skip, p.chosen is not None, infos)
        if notes:
            p = dataclasses.replace(p, rationale=f"{p.rationale} {notes}")
        return ReportPlan(report, parent, p, record)

    def plan_open(self, report_ids: list[int] | None = None) -> list[ReportPlan]:
        """What the engine would do for each open report, and why; nothing is claimed or written."""
        with session_scope(self.url, read_only=True) as s:
            past = run_stats(s)
            reports = [r for r in repo.list_reports(s, status=ReportStatus.open)
                       if report_ids is None or r.id in report_ids]
            return [self.plan_report(s, r, past) for r in reports]

    # -- a pass ---------------------------------------------------------------
    def run_pass(self, *, max_cost: float | None = None, limit: int = 10, lease_seconds: float | None = None,
                 stale_after: timedelta | None = None, take_over: bool = False) -> PassSummary:
        """Recover, resume approved decisions, then claim and treat up to `limit` open reports.

        Recovery (`decision.recovery.recover`) takes over work silent for `stale_after` (default
        `DECIDE_STALE_SECONDS`, 90 s; with `take_over`, two missed heartbeats) and releases claims whose
        lease (`lease_seconds`, default the stale time) ran out.

        Reports are claimed one at a time, each just before it is planned: a claim lives only while
        its report is planned (then it is `decided`), so a claim older than that has lost its worker,
        and a pass never sits on reports it has not reached. A report this pass reopened is left for
        the next pass.
        """
        stale_after = stale_after if stale_after is not None else self.stale_after
        lease = lease_seconds if lease_seconds is not None else stale_after.total_seconds()
        summary = PassSummary(worker=self.worker, **vars(recover(self.url, stale_after, take_over=take_over,
                                                                 worker=self.worker)))
        settle_rejected_holds(self.url)
        for d in approved_decisions(self.url, also=summary.resumed_decisions):
            if (resumed := self._resume(d, max_cost)) is not None:
                summary.decisions.append(resumed)
        seen: list[int] = []
        while len(seen) < limit:
            with session_scope(self.url) as s:
                claimed = repo.claim_reports(s, self.worker, limit=1, lease_seconds=lease, exclude=seen)
            if not claimed:
                break
            failpoint("claim")
            seen.append(claimed[0].id)
            outcome = self.treat_report(claimed[0], max_cost)
            if outcome is not None:
                summary.decisions.append(outcome)
        if self.policy.site_groups.enabled:  # the reports that reached their backbone rungs: by site group
            summary.decisions += site_group_pass.run_groups(self, max_cost)
        return summary

    def treat_report(self, report: ReportEntity, max_cost: float | None) -> DecisionOutcome | None:
        """Plan, record the decision and walk the ladder for one claimed report.

        None if this worker no longer holds the claim (it was released meanwhile and may be another
        worker's now): the decision is recorded only under the claim's lock (`repo.holds_claim`).
        """
        with session_scope(self.url) as s:
            if not repo.holds_claim(s, report.id, self.worker):
                log.warning("report %d: the claim of %s was released meanwhile; left to its new holder",
                            report.id, self.worker)
                return None
            rp = self.plan_report(s, report, run_stats(s))
            cands = [_cand_dict(c) for c in rp.plan.candidates]
            chosen = rp.plan.chosen.treatment if rp.plan.chosen else None
            status = DecisionStatus.planned if chosen else DecisionStatus.exhausted
            decision = repo.create_decision(s, [report.id], self.digest, cands, chosen, rp.plan.rationale, status,
                                            evidence=rp.evidence)
            repo.set_report_status(s, report.id, ReportStatus.decided, reason=f"decision {decision.id}")
        failpoint("decision")
        if chosen is None:
            return DecisionOutcome(report.id, decision.id, DecisionStatus.exhausted, rp.plan, [],
                                   "no applicable treatment: a person must look")
        return self._ladder(decision.id, report, rp.parent, rp.plan, max_cost, approved=None)

    def _resume(self, d: DecisionEntity, max_cost: float | None) -> DecisionOutcome | None:
        """Carry on a planned decision — approved by a person, or taken over from a dead process — from
        its chosen rung, in the order it was decided. None if another pass resumed it first."""
        settled = settle_held(self.url, d)
        if settled is not None:
            return DecisionOutcome(d.report_ids[0], d.id, settled.status, None, message=settled.message,
                                   report_ids=list(d.report_ids))
        if (d.evidence or {}).get(site_group_pass.SITE_GROUP):
            return site_group_pass.resume_group(self, d, max_cost)
        with session_scope(self.url) as s:
            if not repo.claim_planned(s, d.id, reason=f"resumed by {self.worker} at {d.chosen}"):
                log.warning("decision %d: resumed by another pass meanwhile; left to it", d.id)
                return None
            report = repo.get_report(s, d.report_ids[0])
            rp = self.plan_report(s, report, run_stats(s))
        p = _as_decided(rp.plan, [c.treatment for c in sorted(d.candidates, key=lambda c: c.rank)], d.chosen)
        return self._ladder(d.id, report, rp.parent, p, max_cost, approved=approved_treatment(d))

    def _ladder(self, decision_id: int, report: ReportEntity, parent: VersionEntity, p: Plan,
                max_cost: float | None, approved: str | None, *, group: tuple[ReportEntity, ...] = (),
                report_ids: list[int] | None = None) -> DecisionOutcome:
        """Try the untried applicable candidates in order; `approved` names the one a person approved.

        `group`: the other reports of a site-level decision that `report` leads (`report_ids`: all of them).
        A one-report decision (policy `site_groups.enabled`) stops at its first backbone rung when another report
        at its site may share its cause (`decision.site_group_pass`).

        A rung counts as tried when the decision has a finished run of it (a run abandoned by a dead
        process does not count: the rung is run again); the runs are on the decision's parent, so a rung
        that was rejected or failed there is not run again on it."""
        with session_scope(self.url) as s:
            runs = repo.list_runs(s, decision_id=decision_id)
        tried = {r.treatment for r in runs if r.outcome != RunOutcome.abandoned}
        last_run = max((r.id for r in runs), default=0)
        out = DecisionOutcome(report.id, decision_id, DecisionStatus.running, p, report_ids=report_ids or [report.id])
        for cand in (c for c in p.candidates if c.applicable and c.treatment not in tried):
            plugin = self.plugins[cand.treatment]
            if (not plugin.head_only and report_ids is None and approved is None and self.policy.site_groups.enabled
                    and self._may_defer(report)):
                return self._finish(out, DecisionStatus.exhausted,
                                    site_group_pass.defer(self, decision_id, report, parent, cand.treatment))
            if getattr(plugin, "by_people", False):  # a label request: a person's approval carries it out
                done = cand.treatment == approved
                return self._finish(out, DecisionStatus.succeeded if done else DecisionStatus.awaiting_approval,
                                    plugin.outcome(evidence.report_info(report), done), chosen=cand.treatment,
                                    report_status=ReportStatus.resolved if done else None)
            too_dear = max_cost is not None and cand.expected_cost is not None and cand.expected_cost > max_cost
            if (cand.needs_approval or too_dear) and cand.treatment != approved:
                why = (f"{cand.treatment} needs approval by policy" if cand.needs_approval else
                       f"{cand.treatment} expected cost {cand.expected_cost:.1f} exceeds --max-cost {max_cost:g}")
                return self._finish(out, DecisionStatus.awaiting_approval, why, chosen=cand.treatment)
            self._set_status(decision_id, DecisionStatus.running, cand.treatment)
            what = (f"site group at {report.site} (reports {', '.join(map(str, out.report_ids))})" if group else
                    f"report {report.id} ({report.pathology} {report.kind.value} at {report.site})")
            self.progress(f"{what}: {cand.treatment} started on {parent.ref}")
            started = time.perf_counter()
            try:
                result = execute(self.url, self.home, self.catalog, self.policy, plugin,
                                 report, parent, decision_id, executor=self.executor,
                                 diagnosis=evidence.decision_diagnosis(self.url, decision_id), progress=self.progress,
                                 group=group)
            except BaseException:  # interrupted: the run is recorded as failed; leave the report actionable
                if self._taken_over(decision_id, last_run):  # ... unless it is another pass's now
                    self._left(out, f"interrupted during {cand.treatment}")
                else:
                    self._finish(out, DecisionStatus.cancelled, f"interrupted during {cand.treatment}",
                                 report_status=ReportStatus.open)
                raise
            failpoint("promotion")  # the run's record (and an accepted candidate's alias move) committed
            out.runs.append(result)
            ref = f" → {result.version.ref}" if result.version else ""
            why = (result.gate.summary if result.gate else result.error)[:160]
            self.progress(f"{what}: {cand.treatment} {result.outcome.value}{ref} after "
                          f"{time.perf_counter() - started:.1f} s (treatment {result.wall_seconds:.1f} s)"
                          + (f" — {why}" if why else ""))
            if result.outcome == RunOutcome.abandoned:  # another pass took the run over: the decision is its
                return self._left(out, f"run {result.run_id} was taken over by another pass (it saw no heartbeat); "
                                  "its candidate was not recorded")
            last_run = max(last_run, result.run_id)
            if result.outcome == RunOutcome.held:
                ref = result.version.ref if result.version else "the candidate"
                return self._finish(out, DecisionStatus.awaiting_approval,
                                    f"{cand.treatment} candidate {ref} passed the gate with underpowered checks "
                                    f"(no significant harm): a person must approve it", chosen=cand.treatment)
            if result.outcome == RunOutcome.accepted:
                return self._finish(out, DecisionStatus.succeeded, f"{cand.treatment} accepted: "
                                    f"{result.version.ref if result.version else ''} is production",
                                    report_status=ReportStatus.resolved)
        failed = any(r.outcome == RunOutcome.failed for r in out.runs)
        return self._finish(out, DecisionStatus.exhausted,
                            "every applicable treatment was tried; none passed the gate"
                            + ("; a run failed, the report is open again" if failed else ": a person must look"),
                            report_status=ReportStatus.open if failed else None)

    def _may_defer(self, report: ReportEntity) -> bool:
        with session_scope(self.url, read_only=True) as s:
            return site_group_pass.may_defer(s, report)

    def _taken_over(self, decision_id: int, since_run: int) -> bool:
        """Whether another pass took this decision over: a run started after `since_run` (this pass's own,
        then) was abandoned — only a pass that saw no heartbeat abandons a run."""
        with session_scope(self.url, read_only=True) as s:
            return any(r.id > since_run and r.outcome == RunOutcome.abandoned
                       for r in repo.list_runs(s, decision_id=decision_id))

    def _left(self, out: DecisionOutcome, message: str) -> DecisionOutcome:
        """This pass's run was taken over: the decision and its reports are another pass's now (it resumes
        them, or already finished them) — nothing of them is written here."""
        with session_scope(self.url, read_only=True) as s:
            out.status = repo.get_decision(s, out.decision_id).status
        out.message = f"{message}; decision {out.decision_id} is another pass's now ({out.status.value}): left to it"
        return out

    def _set_status(self, decision_id: int, status: DecisionStatus, chosen: str | None = None) -> None:
        with session_scope(self.url) as s:
            repo.set_decision_status(s, decision_id, status, chosen=chosen)

    def _finish(self, out: DecisionOutcome, status: DecisionStatus, message: str, *, chosen: str | None = None,
                report_status: ReportStatus | None = None) -> DecisionOutcome:
        """Move the decision (and its report) on; a decision another pass already finished (it took the
        work over) is left as it is, and so are its reports, which may be another decision's now."""
        with session_scope(self.url) as s:
            current = repo.get_decision(s, out.decision_id, lock=True).status
            if current in _FINAL:
                out.status = current
                out.message = (f"{message}; decision {out.decision_id} was already {current.value} (taken over by "
                               "another pass): left as it is")
                return out
            repo.set_decision_status(s, out.decision_id, status, chosen=chosen, reason=message)
            if report_status is not None:
                for rid in out.report_ids or [out.report_id]:
                    repo.set_report_status(s, rid, report_status, reason=message)
        out.status, out.message = status, message
        return out


def _as_decided(p: Plan, order: list[str], chosen: str | None) -> Plan:
    """`p`'s candidates as the decision recorded them — `chosen`, the rung it stopped at, first, then its
    recorded order, any new one last — so that a resumed decision carries on its own ladder at the same rung
    (the rungs it tried are skipped by `_ladder`)."""
    rank = {name: i for i, name in enumerate(order)}
    cands = tuple(sorted(p.candidates, key=lambda c: (c.treatment != chosen, rank.get(c.treatment, len(rank)))))
    return dataclasses.replace(p, candidates=cands)


def _cand_dict(c: Candidate) -> dict:
    return {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
