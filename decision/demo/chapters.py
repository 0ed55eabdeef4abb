"""The demo's chapters after the feedback site's labelled weeks: the feedback site's first week without labels
(monitoring without labels, answered by a request for labels) and the new site whose washed-out films an
early-block F re-optimization fixes. Each plays the person the loop waits for, and says so in the record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from decision.approvals import held_run
from decision.demo.config import DemoConfig, Progress
from decision.engine import Engine
from decision.jobs import JobResult, Watch, monitor_pass
from registry import repo
from registry.entities import PRODUCTION, DatasetRole, DecisionStatus, RunOutcome
from registry.session import session_scope


@dataclass
class NewSite:
    """The new site's chapter: its first week's pass, and what a person (played by the demo) approved."""

    site: str
    job: JobResult | None
    approvals: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    skipped: str = ""  # why the chapter did not run (e.g. a home made before it existed)
    #: the accepted F re-optimization of an early block now serving the site (None: there is none)
    early_block_fix: dict[str, Any] | None = None


def early_block_fix(url: str, model: str, site: str) -> dict[str, Any] | None:
    """The site's early-block fix, read back from the registry: an F re-optimization run for a report at
    `site`, accepted (by the gate, or by a person after the gate held it), that tuned block 1 or 2 as the
    shift diagnosis said, whose version serves `site` now."""
    with session_scope(url, read_only=True) as s:
        reports = {r.id for r in repo.list_reports(s, model=model) if r.site == site}
        decisions = {d.id for d in repo.list_decisions(s) if set(d.report_ids) & reports}
        serving = repo.resolve_version(s, f"{model}@{PRODUCTION}", site=site)
        for run in repo.list_runs(s, treatment="f_reoptimization"):
            art = run.artifacts or {}
            if (run.decision_id in decisions and run.outcome == RunOutcome.accepted
                    and run.output_version_id == serving.id and art.get("block") in (1, 2)):
                diagnosis = art.get("diagnosis") or {}
                return {"run_id": run.id, "version": serving.ref, "block": art["block"],
                        "serving": f"{PRODUCTION}@{site}" if f"{PRODUCTION}@{site}" in serving.aliases else PRODUCTION,
                        "level": diagnosis.get("level"), "reason": art.get("block_reason"),
                        "site_style": art.get("site_style")}
    return None


def _pathology_of(check: str) -> str:
    """The pathology a check names: "noninferiority[Emphysema]@set" and "baseline_noninferiority[Emphysema]@set"
    → "Emphysema" (a subgroup check "[Emphysema|view=PA]" → "Emphysema")."""
    inside = check.split("@")[0].partition("[")[2].rstrip("]")
    return inside.split("|")[0] or check


def approve_held(engine: Engine, cfg: DemoConfig, say: Progress, decisions, site: str, *, rounds: int = 3,
                 ) -> tuple[list[str], list[str]]:
    """Play the person who approves each candidate the gate held only for underpowered checks with no significant
    harm (its target met at `site`), then settle them: (the approvals, the settled decisions), as said. The pass
    that settles them treats what else is open; a candidate it holds is approved the same way (`rounds` at most)."""
    approvals: list[str] = []
    settled: list[str] = []
    for _ in range(rounds):
        new = _approve_once(engine, cfg, say, decisions, site)
        if not new:
            break
        approvals += new
        decisions = engine.run_pass().decisions
        for d in decisions:
            settled.append(f"report {d.report_id}: {d.status.value} — {d.message}")
            say("decide", settled[-1])
    return approvals, settled


def _approve_once(engine: Engine, cfg: DemoConfig, say: Progress, decisions, site: str) -> list[str]:
    approvals: list[str] = []
    for d in decisions:
        held = held_run(engine.url, d.decision_id) if d.status == DecisionStatus.awaiting_approval else None
        if held is None or held.outcome != RunOutcome.held:
            continue
        gate = held.metrics.get("gate") or {}
        weak = ", ".join(sorted({_pathology_of(c["name"]) for c in gate.get("checks", [])
                                 if c.get("flag") == "underpowered" and c.get("binding", True)}))
        scope = "for this site" if gate.get("scope") == "site" else "for every site that follows production"
        reason = (f"played by `decide demo`: target met at {site}; {weak or 'some checks'} underpowered there "
                  f"with no significant harm — accepted {scope}")
        with session_scope(engine.url) as s:
            repo.approve_decision(s, d.decision_id, actor=cfg.approver, reason=reason)
        approvals.append(f"decision {d.decision_id}: {cfg.approver} approves ({reason})")
        say("approve", approvals[-1])
    return approvals


def label_free_chapter(engine: Engine, cfg: DemoConfig, say: Progress) -> JobResult | None:
    """The feedback site's first week, before any label: judged against the baseline's reference; a shift
    files a distribution_shift report, the policy answers with a request for labels, and the demo plays the
    person who sends the listed studies for labelling (the labelled weeks that follow are those labels)."""
    site = cfg.feedback_site
    with session_scope(engine.url, read_only=True) as s:
        if repo.list_datasets(s, role=DatasetRole.unlabelled, site=site):
            say("label-free", f"{site} week 1 without labels already judged (see `decide monitor drift {site}`)")
            return None
    say("label-free", f"{site} week 1 arrives without labels ({cfg.per_week} studies): drift tests, estimates "
                      "and out-of-distribution share against the baseline's reference")
    job = monitor_pass(engine, cfg.model, f"phantom:{site}", site, index=0, per_window=cfg.per_week,
                       unlabelled=True)
    say("label-free", job.monitor.record.tests.get("summary", ""))
    for d in job.pass_summary.decisions:
        say("decide", f"report {d.report_id}: {d.status.value} — {d.message}")
        if d.status != DecisionStatus.awaiting_approval or job.monitor.report_id != d.report_id:
            continue
        reason = (f"played by `decide demo`: the {len(job.monitor.record.moved)} studies listed are sent to "
                  f"{site}'s radiologists")
        with session_scope(engine.url) as s:
            repo.approve_decision(s, d.decision_id, actor=cfg.approver, reason=reason)
        say("approve", f"decision {d.decision_id}: {cfg.approver} requests the labels ({reason})")
        for settled in engine.run_pass().decisions:
            say("decide", f"report {settled.report_id}: {settled.status.value} — {settled.message}")
    return job


def new_site_chapter(engine: Engine, cfg: DemoConfig, say: Progress) -> NewSite:
    """The new site's first labelled week: monitor what its radiologists audit, treat, and play the person
    who approves a candidate held for underpowered checks (then settle it)."""
    site, url = cfg.new_site, engine.url
    with session_scope(url, read_only=True) as s:
        baseline = repo.get_version(s, next(v.id for v in repo.list_versions(s, cfg.model) if v.parent_id is None))
        bound = {d.source.get("site") for d in repo.list_datasets(s, ids=baseline.dataset_ids)
                 if d.role == DatasetRole.evaluation}
        replayed = bool(repo.list_datasets(s, role=DatasetRole.feedback, site=site))
    if site not in bound:
        why = (f"{site} has no evaluation set bound to {baseline.ref} (a home made before this chapter): "
               "start from a fresh home to see it")
        say("onboard", why)
        return NewSite(site, None, skipped="no evaluation set: " + why)
    if replayed:
        say("onboard", f"{site} week 1 already replayed (see `decide reports --site {site}`)")
        return NewSite(site, None, skipped="already replayed")
    watch = Watch(*cfg.new_site_watch)
    say("onboard", f"{site}: a new detector whose look-up table washes films out; its first labelled week, "
                   f"{cfg.new_site_week} studies, {watch.describe()} audited")
    job = monitor_pass(engine, cfg.model, f"phantom:{site}", site, index=0, per_window=cfg.new_site_week,
                       watch=watch)
    out = NewSite(site, job)
    if not job.monitor.reports:  # an earlier fix (one that serves every site) already serves it within its SLOs
        fpr = ", ".join(f"{m.pathology} FPR {m.fpr:.3f}" for m in job.monitor.metrics
                        if m.site == site and m.pathology in watch.pathologies and m.fpr is not None)
        out.skipped = f"no report: {job.monitor.version} meets the audited SLO at {site} ({fpr or watch.describe()})"
        say("onboard", out.skipped)
    for d in job.pass_summary.decisions:
        say("decide", f"report {d.report_id}: {d.status.value} — {d.message}")
    out.approvals, out.settled = approve_held(engine, cfg, say, job.pass_summary.decisions, site)
    return out
