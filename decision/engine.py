"""The decision engine: open error reports → plans → treatments → verdicts, all recorded.

It reads the registry, asks each plugin whether it applies (cheap facts only),
calls the pure planner, records the decision with every candidate and the
policy digest, then walks the escalation ladder: run the first candidate,
gate it, and on rejection move to the next — until one is accepted, the list
ends, or a candidate needs a person (`awaiting_approval`: the policy asks for
approval, or its expected cost exceeds `--max-cost`). Approved decisions are
resumed by the next pass from where they stopped.

Crash safety: reports are claimed atomically with a lease; runs carry a
heartbeat. At the start of every pass, runs without a heartbeat are marked
`abandoned` and expired claims are released, so work that a killed process
left behind is picked up again. A treatment that raises is recorded as
`failed` with its error text and the ladder goes on; if nothing succeeded and
something failed, the report is opened again for the next pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from decision.catalog import Catalog
from decision.executor import Executor, LocalExecutor, make_executor
from decision.planner import Plan, RunStat, TreatmentInfo, plan
from decision.treat import Outcome, data_plan, execute, report_info, report_view
from policies import Policy, load_policy, policy_digest
from registry import repo
from registry.entities import (
    PRODUCTION,
    DecisionEntity,
    DecisionStatus,
    ReportEntity,
    ReportStatus,
    RunOutcome,
    VersionEntity,
)
from registry.session import session_scope
from registry.settings import get_settings
from treatments.base import PlanningContext, Treatment
from treatments.plugins import load_treatments

log = logging.getLogger(__name__)


@dataclass
class ReportPlan:
    report: ReportEntity
    parent: VersionEntity
    plan: Plan


@dataclass
class DecisionOutcome:
    report_id: int
    decision_id: int
    status: DecisionStatus
    plan: Plan | None
    runs: list[Outcome] = field(default_factory=list)
    message: str = ""


@dataclass
class PassSummary:
    worker: str
    abandoned_runs: list[int] = field(default_factory=list)
    released_claims: int = 0
    decisions: list[DecisionOutcome] = field(default_factory=list)


def history(session: Session) -> list[RunStat]:
    """Past runs as the planner sees them (kind of issue, success, time, parameters)."""
    kinds = repo.run_kinds(session)
    out = []
    for r in repo.run_history(session):
        if r.outcome in (RunOutcome.running,):
            continue
        succeeded = True if r.outcome == RunOutcome.accepted else (False if r.outcome == RunOutcome.rejected else None)
        out.append(RunStat(r.treatment, kinds.get(r.id, ""), succeeded, r.wall_seconds or 0.0, r.trainable_parameters))
    return out


class Engine:
    """Plans and treats open reports against one registry and DECIDE_HOME."""

    def __init__(self, url: str | None, home: Path, policy: Policy, plugins: dict[str, Treatment] | None = None,
                 worker: str = "local", executor: Executor | None = None) -> None:
        self.url, self.home, self.policy, self.worker = url, Path(home), policy, worker
        self.executor: Executor = executor or LocalExecutor()
        self.plugins = plugins if plugins is not None else load_treatments().treatments
        self.catalog = Catalog(self.home)
        self.digest = policy_digest(policy)

    @classmethod
    def from_settings(cls, policy_path: Path | None = None, worker: str | None = None) -> Engine:
        """An engine on $DECIDE_HOME / $DECIDE_DATABASE_URL with the given (or $DECIDE_POLICY, or bundled) policy."""
        import os
        import socket

        settings = get_settings()
        policy = load_policy(policy_path or settings.policy)
        who = worker or f"{socket.gethostname()}:{os.getpid()}"
        return cls(None, settings.home_dir, policy, worker=who, executor=make_executor(settings.executor))

    # -- planning (no writes) -----------------------------------------------
    def parent_of(self, session: Session, report: ReportEntity) -> VersionEntity:
        """The version to treat: the model's current production version (else the reported one)."""
        try:
            return repo.resolve_version(session, f"{report.model}@{PRODUCTION}")
        except Exception:  # no production alias yet
            return repo.get_version(session, report.version_id)

    def plan_report(self, session: Session, report: ReportEntity, past: list[RunStat]) -> ReportPlan:
        from cxr.spec import ArchSpec

        parent = self.parent_of(session, report)
        spec = ArchSpec.from_json(parent.spec_json)
        dp = data_plan(session, parent, report.site)
        cases = sum(d.size for d in dp.calibration if d.source.get("site") == report.site)
        infos, info = [], report_info(report)
        for name, plugin in self.plugins.items():
            entry = self.policy.treatments.get(name)
            params = dict(entry.params) if entry is not None else {}
            try:
                ok, why = plugin.applicable(info, PlanningContext(spec, dict(parent.thresholds), params, cases))
            except Exception as exc:  # a plugin's own check must not stop planning
                ok, why = False, f"applicable() raised {exc.__class__.__name__}: {exc}"
            infos.append(TreatmentInfo(name, frozenset(plugin.fixes), ok, why))
        return ReportPlan(report, parent, plan(report_view(report), infos, self.policy, past, digest=self.digest))

    def plan_open(self, report_ids: list[int] | None = None) -> list[ReportPlan]:
        """What the engine would do for each open report, and why; nothing is claimed or written."""
        with session_scope(self.url, read_only=True) as s:
            past = history(s)
            reports = [r for r in repo.list_reports(s, status=ReportStatus.open)
                       if report_ids is None or r.id in report_ids]
            return [self.plan_report(s, r, past) for r in reports]

    # -- a pass ---------------------------------------------------------------
    def run_pass(self, *, max_cost: float | None = None, limit: int = 10, lease_seconds: float = 900,
                 stale_after: timedelta = timedelta(seconds=90)) -> PassSummary:
        """Recover, resume approved decisions, then claim and treat up to `limit` open reports."""
        summary = PassSummary(self.worker)
        with session_scope(self.url) as s:
            summary.abandoned_runs = repo.mark_abandoned_runs(s, older_than=stale_after)
            summary.released_claims = len(repo.release_expired_claims(s))
            self._reopen_interrupted(s, summary.abandoned_runs)
        for d in self._approved_decisions():
            summary.decisions.append(self._resume(d, max_cost))
        with session_scope(self.url) as s:
            claimed = repo.claim_reports(s, self.worker, limit=limit, lease_seconds=lease_seconds)
        for report in claimed:
            summary.decisions.append(self.treat_report(report, max_cost))
        return summary

    def _reopen_interrupted(self, s: Session, abandoned: list[int]) -> None:
        """Reports whose run was abandoned become actionable again; their decision is cancelled."""
        for run_id in abandoned:
            run = repo.get_run(s, run_id)
            if run.decision_id is None:
                continue
            d = repo.get_decision(s, run.decision_id)
            if d.status in (DecisionStatus.running, DecisionStatus.planned):
                repo.set_decision_status(s, d.id, DecisionStatus.cancelled, reason=f"run {run_id} abandoned")
            for rid in d.report_ids:
                if repo.get_report(s, rid).status in (ReportStatus.claimed, ReportStatus.decided):
                    repo.set_report_status(s, rid, ReportStatus.open, reason=f"run {run_id} abandoned")

    def _approved_decisions(self) -> list[DecisionEntity]:
        with session_scope(self.url, read_only=True) as s:
            return [d for d in repo.list_decisions(s, status=DecisionStatus.planned) if d.approvals]

    def treat_report(self, report: ReportEntity, max_cost: float | None) -> DecisionOutcome:
        """Plan, record the decision and walk the ladder for one claimed report."""
        with session_scope(self.url) as s:
            rp = self.plan_report(s, report, history(s))
            cands = [_cand_dict(c) for c in rp.plan.candidates]
            chosen = rp.plan.chosen.treatment if rp.plan.chosen else None
            status = DecisionStatus.planned if chosen else DecisionStatus.exhausted
            decision = repo.create_decision(s, [report.id], self.digest, cands, chosen, rp.plan.rationale, status)
            repo.set_report_status(s, report.id, ReportStatus.decided, reason=f"decision {decision.id}")
        if chosen is None:
            return DecisionOutcome(report.id, decision.id, DecisionStatus.exhausted, rp.plan, [],
                                   "no applicable treatment: a person must look")
        return self._ladder(decision.id, report, rp.parent, rp.plan, max_cost, approved=None)

    def _resume(self, d: DecisionEntity, max_cost: float | None) -> DecisionOutcome:
        with session_scope(self.url) as s:
            report = repo.get_report(s, d.report_ids[0])
            rp = self.plan_report(s, report, history(s))
        return self._ladder(d.id, report, rp.parent, rp.plan, max_cost, approved=d.chosen)

    def _ladder(self, decision_id: int, report: ReportEntity, parent: VersionEntity, p: Plan,
                max_cost: float | None, approved: str | None) -> DecisionOutcome:
        """Try the untried applicable candidates in order; `approved` names the one a person approved."""
        with session_scope(self.url) as s:
            tried = {r.treatment for r in repo.run_history(s, decision_id=decision_id)}
        out = DecisionOutcome(report.id, decision_id, DecisionStatus.running, p)
        for cand in (c for c in p.candidates if c.applicable and c.treatment not in tried):
            too_dear = max_cost is not None and cand.expected_cost is not None and cand.expected_cost > max_cost
            if (cand.needs_approval or too_dear) and cand.treatment != approved:
                why = (f"{cand.treatment} needs approval by policy" if cand.needs_approval else
                       f"{cand.treatment} expected cost {cand.expected_cost:.1f} exceeds --max-cost {max_cost:g}")
                return self._finish(out, DecisionStatus.awaiting_approval, why, chosen=cand.treatment)
            self._set_status(decision_id, DecisionStatus.running, cand.treatment)
            try:
                result = execute(self.url, self.home, self.catalog, self.policy, self.plugins[cand.treatment],
                                 report, parent, decision_id, executor=self.executor)
            except BaseException:  # interrupted: the run is recorded as failed; leave the report actionable
                self._finish(out, DecisionStatus.cancelled, f"interrupted during {cand.treatment}",
                             report_status=ReportStatus.open)
                raise
            out.runs.append(result)
            if result.outcome == RunOutcome.accepted:
                return self._finish(out, DecisionStatus.succeeded, f"{cand.treatment} accepted: "
                                    f"{result.version.ref if result.version else ''} is production",
                                    report_status=ReportStatus.resolved)
        failed = any(r.outcome == RunOutcome.failed for r in out.runs)
        return self._finish(out, DecisionStatus.exhausted,
                            "every applicable treatment was tried; none passed the gate"
                            + ("; a run failed, the report is open again" if failed else ": a person must look"),
                            report_status=ReportStatus.open if failed else None)

    def _set_status(self, decision_id: int, status: DecisionStatus, chosen: str | None = None) -> None:
        with session_scope(self.url) as s:
            repo.set_decision_status(s, decision_id, status, chosen=chosen)

    def _finish(self, out: DecisionOutcome, status: DecisionStatus, message: str, *, chosen: str | None = None,
                report_status: ReportStatus | None = None) -> DecisionOutcome:
        with session_scope(self.url) as s:
            repo.set_decision_status(s, out.decision_id, status, chosen=chosen, reason=message)
            if report_status is not None:
                repo.set_report_status(s, out.report_id, report_status, reason=message)
        out.status, out.message = status, message
        return out


def _cand_dict(c) -> dict:
    return {k: getattr(c, k) for k in ("rank", "treatment", "applicable", "reason", "prior_cost", "empirical_cost",
                                       "expected_cost", "p_success", "alpha", "beta", "score", "needs_approval")}
