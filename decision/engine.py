"""The decision engine: open error reports → plans → treatments → verdicts, all recorded.

It reads the registry, asks each plugin whether it applies (cheap facts only),
calls the pure planner, records the decision with every candidate and the
policy digest, then walks the escalation ladder: run the first candidate,
gate it, and on rejection move to the next — until one is accepted, the list
ends, or a candidate needs a person (`awaiting_approval`: the policy asks for
approval, or its expected cost exceeds `--max-cost`). Approved decisions are
resumed by the next pass from where they stopped.

A candidate that passes the gate with a flag a person must accept (an
underpowered non-inferiority check) is registered but held: its run is `held`,
the decision `awaiting_approval`. `decide approve` promotes it (if the version
it was made from still serves the site), `decide reject` rejects it.

Sites: a report's parent is the version serving its site (`production@site`,
else `production`), and the gate's verdict says whether a promotion covers
every site or that site alone (see `decision.treat`).

Crash safety: reports are claimed atomically with a lease, one at a time;
runs carry a heartbeat. At the start of every pass, runs without a heartbeat
are marked `abandoned`, expired claims are released, and decisions a dead
process left between two steps are finished as it would have
(`decision.recovery`), so work that a killed process left behind is picked up
again (`tests/faults/` kills a pass at every step). A process whose work was
taken over meanwhile is fenced: its claim is checked under a row lock before
it decides, its late run record is refused (`RunFinished`), and it leaves the
decision and reports to whoever took them. A treatment that raises is recorded
as `failed` with its error text and the ladder goes on; if nothing succeeded
and something failed, the report is opened again for the next pass.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from cxr import clock
from cxr.errors import NotFound
from cxr.faults import failpoint
from decision.catalog import Catalog
from decision.executor import Executor, LocalExecutor, make_executor
from decision.liveness import TAKEOVER_AFTER, LiveRun, running_now
from decision.past_runs import history  # in its own module: `decide costs` reads it without torch
from decision.planner import Plan, RunStat, TreatmentInfo, plan
from decision.recovery import reopen_interrupted, settle_stalled
from decision.treat import Outcome, data_plan, execute, report_info, report_view
from policies import Policy, load_policy, policy_digest
from registry import repo
from registry.entities import (
    PRODUCTION,
    DecisionEntity,
    DecisionStatus,
    ReportEntity,
    ReportStatus,
    RunEntity,
    RunOutcome,
    Verdict,
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


_FINAL = frozenset({DecisionStatus.succeeded, DecisionStatus.exhausted, DecisionStatus.rejected,
                    DecisionStatus.cancelled})


@dataclass
class PassSummary:
    worker: str
    abandoned_runs: list[int] = field(default_factory=list)
    released_claims: int = 0
    decisions: list[DecisionOutcome] = field(default_factory=list)
    live_runs: list[LiveRun] = field(default_factory=list)
    #: runs `--take-over` found alive (a heartbeat within two beats) and left alone
    refused_takeover: list[int] = field(default_factory=list)
    #: decisions a dead process left between two steps, finished by this pass (`recovery.settle_stalled`)
    settled_decisions: list[int] = field(default_factory=list)


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
    def parent_of(self, session: Session, report: ReportEntity) -> VersionEntity:
        """The version to treat: the one serving the report's site now (its own `production@site`, else
        `production`), else the reported one."""
        try:
            return repo.resolve_version(session, f"{report.model}@{PRODUCTION}", site=report.site)
        except NotFound:  # no production alias yet
            return repo.get_version(session, report.version_id)

    def plan_report(self, session: Session, report: ReportEntity, past: list[RunStat]) -> ReportPlan:
        from cxr.spec import ArchSpec

        parent = self.parent_of(session, report)
        spec = ArchSpec.from_json(parent.spec_json)
        dp = data_plan(session, parent, report.site)
        cases = sum(d.size for d in dp.calibration if d.source.get("site") == report.site)
        infos, info = [], report_info(report)
        diag = self._site_diagnosis(session, parent, report.site)
        skip = self._skips_head_level(diag)
        for name, plugin in self.plugins.items():
            entry = self.policy.treatments.get(name)
            params = dict(entry.params) if entry is not None else {}
            try:
                ok, why = plugin.applicable(info, PlanningContext(spec, parent.thresholds_for(report.site), params,
                                                                  cases))
            except Exception as exc:  # a plugin's own check must not stop planning
                ok, why = False, f"applicable() raised {exc.__class__.__name__}: {exc}"
            if ok and skip and plugin.head_only:
                ok, why = False, skip
            infos.append(TreatmentInfo(name, frozenset(plugin.fixes), ok, why))
        p = plan(report_view(report), infos, self.policy, past, digest=self.digest)
        evidence: dict = {}
        if diag is not None:
            evidence["shift_diagnosis"] = diag
            if skip:
                p = dataclasses.replace(p, rationale=f"{p.rationale} Shift diagnosis: {skip}.")
        if report.kind.value == "false_positives" and p.chosen is not None:
            hint = self._channel_evidence(parent, report.pathology)
            if hint is not None:
                evidence["channel_evidence"] = hint.data
                p = dataclasses.replace(p, rationale=f"{p.rationale} Classifier channels: {hint.hint}.")
        return ReportPlan(report, parent, p, evidence)

    @staticmethod
    def _site_diagnosis(session: Session, parent: VersionEntity, site: str) -> dict | None:
        """The latest shift diagnosis recorded for `parent`'s films at `site` (by a backbone treatment of an
        earlier decision), or None. A diagnosis describes one version at one site, so no other is reused."""
        for d in sorted(repo.list_decisions(session), key=lambda d: d.id, reverse=True):
            diag = (d.evidence or {}).get("shift_diagnosis")
            if isinstance(diag, dict) and diag.get("version_id") == parent.id and diag.get("site") == site:
                return {**diag, "decision": d.id}
        return None

    def _skips_head_level(self, diag: dict | None) -> str:
        """Why head-level rungs are skipped under `diag` (policy `diagnosis.skip_head_level_strength`), or ''."""
        bar = self.policy.diagnosis.skip_head_level_strength
        if diag is None or bar is None or diag.get("level") != "input" or float(diag.get("strength", 0.0)) < bar:
            return ""
        return (f"a strong input-level shift at {diag.get('site')} (strength {float(diag['strength']):.2f} ≥ {bar:g}, "
                f"located at {diag.get('located_at') or 'the input'}; diagnosed in decision {diag.get('decision')}) "
                "— head-level treatments read features the site's films already distort, so they are skipped")

    def _channel_evidence(self, parent: VersionEntity, pathology: str):
        """The version's polarized-channel evidence about `pathology` (None if it cannot be read)."""
        from decision.channel_evidence import channel_evidence

        try:
            return channel_evidence(self.catalog.weights(parent), pathology)
        except Exception as exc:  # evidence must never stop planning
            log.warning("channel evidence for %s skipped: %s", pathology, exc)
            return None

    def plan_open(self, report_ids: list[int] | None = None) -> list[ReportPlan]:
        """What the engine would do for each open report, and why; nothing is claimed or written."""
        with session_scope(self.url, read_only=True) as s:
            past = history(s)
            reports = [r for r in repo.list_reports(s, status=ReportStatus.open)
                       if report_ids is None or r.id in report_ids]
            return [self.plan_report(s, r, past) for r in reports]

    # -- a pass ---------------------------------------------------------------
    def run_pass(self, *, max_cost: float | None = None, limit: int = 10, lease_seconds: float | None = None,
                 stale_after: timedelta | None = None, take_over: bool = False) -> PassSummary:
        """Recover, resume approved decisions, then claim and treat up to `limit` open reports.

        Recovery marks runs without a heartbeat for `stale_after` (default `DECIDE_STALE_SECONDS`, 90 s)
        abandoned and reopens their reports, releases claims whose lease (`lease_seconds`, default the
        stale time) ran out, and finishes the decisions a dead process left between two steps
        (`settled_decisions`). `take_over` does it at once for work silent for two heartbeats
        (`TAKEOVER_AFTER`); a run that beat more recently is alive and is left alone (listed in
        `refused_takeover`). Runs still running afterwards are listed with when they would be taken over.

        Reports are claimed one at a time, each just before it is planned: a claim lives only while
        its report is planned (then it is `decided`), so a claim older than that has lost its worker,
        and a pass never sits on reports it has not reached. A report this pass reopened is left for
        the next pass.
        """
        stale_after = stale_after if stale_after is not None else self.stale_after
        lease = lease_seconds if lease_seconds is not None else stale_after.total_seconds()
        summary = PassSummary(self.worker)
        now = clock.now()
        cutoff = min(stale_after, TAKEOVER_AFTER) if take_over else stale_after
        with session_scope(self.url) as s:
            if take_over:
                summary.refused_takeover = [r.id for r in repo.running_runs(s) if now - r.heartbeat_at < cutoff]
            summary.abandoned_runs = repo.mark_abandoned_runs(s, older_than=cutoff, now=now)
            summary.released_claims = len(repo.release_expired_claims(
                s, now=now, claimed_before=now - cutoff if take_over else None))
            reopen_interrupted(s, summary.abandoned_runs)
            summary.settled_decisions = settle_stalled(s, cutoff, now)
            summary.live_runs = running_now(s, stale_after, now)
        self._settle_rejected_holds()
        for d in self._approved_decisions():
            summary.decisions.append(self._resume(d, max_cost))
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
        return summary

    def _approved_decisions(self) -> list[DecisionEntity]:
        with session_scope(self.url, read_only=True) as s:
            return [d for d in repo.list_decisions(s, status=DecisionStatus.planned) if d.approvals]

    # -- held candidates ---------------------------------------------------------
    def held_run(self, decision_id: int) -> RunEntity | None:
        """The decision's run whose candidate waits for a person, if any."""
        with session_scope(self.url, read_only=True) as s:
            return next((r for r in repo.run_history(s, decision_id=decision_id) if r.outcome == RunOutcome.held),
                        None)

    def settle_held(self, d: DecisionEntity) -> DecisionOutcome | None:
        """Act on a person's verdict about a held candidate: promote it (approved) or reject it.

        An approved candidate is promoted only if the version it was made from still serves the
        promotion's site(s); otherwise it is rejected as stale and the report reopened, so that the
        engine plans again from what production is now. Returns None when nothing is held.
        """
        run = self.held_run(d.id)
        if run is None:
            return None
        promote = (run.metrics.get("gate") or {}).get("promote") or {}
        alias, site = promote.get("alias", PRODUCTION), promote.get("site", "")
        approval = d.approvals[-1] if d.approvals else None
        out = DecisionOutcome(d.report_ids[0], d.id, DecisionStatus(d.status), None)
        with session_scope(self.url) as s:
            version = repo.get_version(s, run.output_version_id)
            if d.status == DecisionStatus.rejected or approval is None or approval.verdict != Verdict.approved:
                why = f"held candidate {version.ref} rejected by a person" + (
                    f": {approval.reason}" if approval is not None else "")
                repo.settle_held_run(s, run.id, RunOutcome.rejected, reason=why)
                repo.set_version_status(s, version.id, "rejected", reason=why)
                out.message = why
                return out
            serving = self._serving_id(s, version.model, alias, site)
            if serving != promote.get("parent_id"):
                why = (f"held candidate {version.ref} is stale: {alias}{'@' + site if site else ''} moved since it "
                       f"was made; the report is planned again")
                repo.settle_held_run(s, run.id, RunOutcome.rejected, reason=why)
                repo.set_version_status(s, version.id, "rejected", reason=why)
                repo.set_decision_status(s, d.id, DecisionStatus.exhausted, reason=why)
                repo.set_report_status(s, out.report_id, ReportStatus.open, reason=why)
                out.status, out.message = DecisionStatus.exhausted, why
                return out
            why = f"{run.treatment} candidate {version.ref} approved by {approval.actor}: {approval.reason}"
            repo.settle_held_run(s, run.id, RunOutcome.accepted, reason=why)
            repo.set_alias(s, version.model, alias, version.id, reason=why, site=site, run_id=run.id)
            repo.set_decision_status(s, d.id, DecisionStatus.succeeded, reason=why)
            repo.set_report_status(s, out.report_id, ReportStatus.resolved, reason=why)
            out.status, out.message = DecisionStatus.succeeded, why
        return out

    @staticmethod
    def _serving_id(s: Session, model: str, alias: str, site: str) -> int | None:
        """The version `alias` serves at `site` now (its own alias, else the all-sites one)."""
        try:
            return repo.resolve_version_id(s, f"{model}@{alias}", site=site or None)
        except NotFound:
            return None

    def _settle_rejected_holds(self) -> None:
        with session_scope(self.url, read_only=True) as s:
            rejected = [d for d in repo.list_decisions(s, status=DecisionStatus.rejected)]
        for d in rejected:
            self.settle_held(d)

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
            rp = self.plan_report(s, report, history(s))
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

    def _resume(self, d: DecisionEntity, max_cost: float | None) -> DecisionOutcome:
        settled = self.settle_held(d)
        if settled is not None:
            return settled
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
            what = f"report {report.id} ({report.pathology} {report.kind.value} at {report.site})"
            self.progress(f"{what}: {cand.treatment} started on {parent.ref}")
            try:
                result = execute(self.url, self.home, self.catalog, self.policy, self.plugins[cand.treatment],
                                 report, parent, decision_id, executor=self.executor,
                                 diagnosis=self._diagnosis_for(decision_id), progress=self.progress)
            except BaseException:  # interrupted: the run is recorded as failed; leave the report actionable
                self._finish(out, DecisionStatus.cancelled, f"interrupted during {cand.treatment}",
                             report_status=ReportStatus.open)
                raise
            failpoint("promotion")  # the run's record (and an accepted candidate's alias move) committed
            out.runs.append(result)
            ref = f" → {result.version.ref}" if result.version else ""
            why = (result.gate.summary if result.gate else result.error)[:160]
            self.progress(f"{what}: {cand.treatment} {result.outcome.value}{ref} in {result.wall_seconds:.1f} s"
                          + (f" — {why}" if why else ""))
            if result.outcome == RunOutcome.abandoned:  # another pass took the run over: the decision is its
                return self._finish(out, DecisionStatus.cancelled, f"run {result.run_id} was taken over by another "
                                    "pass (it saw no heartbeat); its candidate was not recorded")
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

    def _diagnosis_for(self, decision_id: int) -> dict | None:
        """The shift diagnosis recorded with the decision (None when none was made)."""
        with session_scope(self.url, read_only=True) as s:
            return (repo.get_decision(s, decision_id).evidence or {}).get("shift_diagnosis")

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
                repo.set_report_status(s, out.report_id, report_status, reason=message)
        out.status, out.message = status, message
        return out


def _cand_dict(c) -> dict:
    return {k: getattr(c, k) for k in ("rank", "treatment", "applicable", "reason", "prior_cost", "empirical_cost",
                                       "expected_cost", "p_success", "alpha", "beta", "score", "needs_approval")}
