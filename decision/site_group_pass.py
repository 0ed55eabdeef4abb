"""Site-level decisions in the engine: defer a report's backbone rungs, group what is ready, treat each group once.

Policy `[site_groups] enabled`. The flow, within one `Engine.run_pass`:

1. Each claimed report gets its own decision and climbs its head-level rungs (threshold calibration, surgery,
   head retrain) as before. When it reaches its first backbone rung and another report of the same model at
   its site is open, claimed, or waiting like it (`may_defer`), its decision ends `exhausted` with the
   evidence `site_group_deferred` (the site, the serving version, the rung it stopped at); its report stays
   `decided`. A report with no such peer climbs on alone, exactly as without grouping.
2. After the claimed reports, `run_groups` collects the waiting reports, reads each (site, serving version)'s
   shift diagnosis (the newest recorded one, else the engine's own, `cxr.shift.diagnose_for` on the version's
   training films against the site's labelled films), and applies the pure rule
   (`decision.site_groups.group_reports`).
3. Each group gets ONE decision on all its reports (`report_ids`) with the evidence `site_group` (site,
   version, level, reports, lead, the per-report decisions it continues) and the diagnosis; its ladder holds
   the backbone rungs only, planned for the lead (the report furthest from its target). Each rung trains one
   candidate for the site, the grouped pathologies' operating points at the site are chosen on it
   (`decision.group_treat`) and the gate judges every grouped target (`decision.gate.judge_group`). One approval
   covers the group; an accepted candidate resolves every grouped report. A waiting report without a partner
   gets the same kind of decision on itself alone (`site_group` with one report), so nothing is left waiting.

A waiting decision is taken under its row lock (`taken_by` in its evidence), so two passes never group the same
report twice. Decisions of step 3 are resumed (after an approval or a take-over) by `resume_group`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from decision import evidence
from decision.approvals import approved_treatment
from decision.past_runs import run_stats
from decision.planner import Plan
from decision.site_groups import GroupFacts, group_reports
from registry import repo
from registry.entities import DecisionEntity, DecisionStatus, ReportEntity, ReportStatus, VersionEntity
from registry.session import session_scope

if TYPE_CHECKING:
    from decision.engine import DecisionOutcome, Engine

log = logging.getLogger(__name__)

SITE_GROUP = "site_group"
DEFERRED = "site_group_deferred"

__all__ = ["DEFERRED", "SITE_GROUP", "defer", "may_defer", "resume_group", "run_groups"]


def _waiting(session) -> list[tuple[DecisionEntity, ReportEntity]]:
    """Deferred per-report decisions not yet taken by a group, whose report is still `decided`."""
    out = []
    for d in repo.list_decisions(session, status=DecisionStatus.exhausted):
        mark = (d.evidence or {}).get(DEFERRED)
        if not isinstance(mark, dict) or mark.get("taken_by") is not None:
            continue
        report = repo.get_report(session, d.report_ids[0])
        if report.status == ReportStatus.decided:
            out.append((d, report))
    return out


def may_defer(session, report: ReportEntity) -> bool:
    """Whether `report` may wait for a site group: another report of its model at its site is open, claimed,
    or waiting already."""
    if not report.site:
        return False
    for other in repo.list_reports(session):
        if (other.id != report.id and other.site == report.site and other.model == report.model
                and other.status in (ReportStatus.open, ReportStatus.claimed)):
            return True
    return any(r.id != report.id and r.site == report.site and r.model == report.model for _, r in _waiting(session))


def defer(engine: Engine, decision_id: int, report: ReportEntity, parent: VersionEntity, rung: str) -> str:
    """Record that `report`'s backbone rungs go to the site group step; returns the decision's closing message."""
    with session_scope(engine.url) as s:
        repo.add_decision_evidence(s, decision_id, DEFERRED, {
            "site": report.site, "version_id": parent.id, "version": parent.ref, "at": rung, "taken_by": None},
            reason=f"backbone rungs from {rung} deferred to the site group of {report.site}")
    return (f"head-level rungs tried; the backbone rungs from {rung} go to a site-level decision for "
            f"{report.site} (reports there on {parent.ref} that share a shift diagnosis are treated together)")


def _diagnosis(engine: Engine, session, parent: VersionEntity, site: str) -> dict[str, Any] | None:
    """The shift diagnosis of `parent` at `site`: recorded, else the engine's own (`engine.diagnose`), else None."""
    found = evidence.site_diagnosis(session, parent, site)
    if found is not None:
        return found
    try:
        diag = (engine.diagnose or _diagnose_here)(engine, session, parent, site)
    except Exception as exc:  # evidence never stops the pass: without a diagnosis nothing groups
        log.warning("diagnosing the shift of %s at %s failed: %s", parent.ref, site, exc)
        return None
    return None if diag is None else {**diag, "version_id": parent.id, "version": parent.ref, "site": site}


def _diagnose_here(engine: Engine, session, parent: VersionEntity, site: str) -> dict[str, Any] | None:
    """`cxr.shift.diagnose_for` on the version's training films against the site's labelled films."""
    from cxr.data import concat_datasets
    from cxr.model import build_model
    from cxr.shift import diagnose_for

    plan = evidence.data_plan(session, parent, site)
    here = [d for d in plan.calibration if d.source.get("site") == site]
    if not plan.train or not here:
        return None
    w = engine.catalog.weights(parent)
    model = build_model(w.spec)
    model.load_state_dict(dict(w.state), strict=True)
    ref = concat_datasets([engine.catalog.dataset(d) for d in plan.train], "train")
    films = concat_datasets([engine.catalog.dataset(d) for d in here], "site")
    return diagnose_for(model.eval(), ref, films, max_images=engine.policy.site_groups.diagnosis_images)


def _lead(reports: list[ReportEntity]) -> ReportEntity:
    """The report furthest from its target (the treatment's class-balanced output); ties: the lowest id."""
    def gap(r: ReportEntity) -> float:
        return 0.0 if r.value is None or r.target is None else abs(float(r.value) - float(r.target))
    return sorted(reports, key=lambda r: (-gap(r), r.id))[0]


def group_plan(engine: Engine, session, reports: list[ReportEntity], lead_id: int | None = None
               ) -> tuple[ReportEntity, VersionEntity, Plan, dict]:
    """The lead (`lead_id`, else `_lead`), the parent, and the lead's plan with the head-level rungs ruled out
    (each report tried them)."""
    lead = next((r for r in reports if r.id == lead_id), None) or _lead(reports)
    rp = engine.plan_report(session, lead, run_stats(session))
    cands = tuple(c if not engine.plugins[c.treatment].head_only or not c.applicable else dataclasses.replace(
        c, applicable=False, reason="head-level: tried per report before the site group")
        for c in rp.plan.candidates if c.treatment in engine.plugins)
    chosen = next((c for c in cands if c.applicable), None)
    return lead, rp.parent, dataclasses.replace(rp.plan, candidates=cands, chosen=chosen), rp.evidence


def run_groups(engine: Engine, max_cost: float | None) -> list[DecisionOutcome]:
    """Group the waiting reports and treat each group (or lone report) with one decision; see the module doc."""
    with session_scope(engine.url, read_only=True) as s:
        waiting = _waiting(s)
        parents = {r.id: evidence.serving_version(s, r) for _, r in waiting}
        keys: dict[tuple[str, int], int] = {}
        for _, r in waiting:
            keys[(r.site, parents[r.id].id)] = keys.get((r.site, parents[r.id].id), 0) + 1
        diags = {(site, vid): _diagnosis(engine, s, next(p for p in parents.values() if p.id == vid), site)
                 for (site, vid), n in keys.items() if n >= engine.policy.site_groups.min_reports}
    facts = [GroupFacts(r.id, r.site, parents[r.id].id,
                        (diags.get((r.site, parents[r.id].id)) or {}).get("level"), True) for _, r in waiting]
    grouping = group_reports(facts, engine.policy.site_groups.min_reports)
    by_report = {r.id: (d, r) for d, r in waiting}
    outs = []
    for g in grouping.groups:
        out = _treat(engine, [by_report[i] for i in g.report_ids], diags.get((g.site, g.version_id)), g.level,
                     max_cost)
        if out is not None:
            outs.append(out)
    for rid in grouping.alone:
        d, r = by_report[rid]
        out = _treat(engine, [(d, r)], diags.get((r.site, parents[rid].id)), None, max_cost)
        if out is not None:
            outs.append(out)
    return outs


def _treat(engine: Engine, members: list[tuple[DecisionEntity, ReportEntity]], diag: dict | None,
           level: str | None, max_cost: float | None) -> DecisionOutcome | None:
    """Take the members' waiting decisions (row locks), record the group's decision, climb its ladder."""
    from decision.engine import DecisionOutcome, _cand_dict

    with session_scope(engine.url) as s:
        for d, _ in members:  # a waiting decision another pass took meanwhile is left to it
            mark = (repo.get_decision(s, d.id, lock=True).evidence or {}).get(DEFERRED) or {}
            if mark.get("taken_by") is not None:
                log.warning("decision %d was taken by a site group meanwhile; left to it", d.id)
                return None
        reports = [repo.get_report(s, r.id) for _, r in members]
        lead, parent, plan, record = group_plan(engine, s, reports)
        ids = sorted(r.id for r in reports)
        names = ", ".join(f"{r.pathology} (report {r.id})" for r in sorted(reports, key=lambda r: r.id))
        what = (f"Site-level decision at {lead.site} on {parent.ref}: {names} share a {level}-level shift"
                if len(reports) > 1 else f"Backbone rungs of report {lead.id} at {lead.site} (no report there "
                                         "shares its diagnosis)")
        rationale = (f"{what}; their head-level rungs were tried report by report (decisions "
                     f"{', '.join(str(d.id) for d, _ in members)}); one candidate per rung for all of them, planned "
                     f"for the lead, report {lead.id}. {plan.rationale}")
        group = {"site": lead.site, "version_id": parent.id, "version": parent.ref, "level": level,
                 "report_ids": ids, "pathologies": {str(r.id): r.pathology for r in reports}, "lead": lead.id,
                 "from_decisions": [d.id for d, _ in members]}
        record = {**record, SITE_GROUP: group, **({evidence.SHIFT_DIAGNOSIS: diag} if diag else {})}
        chosen = plan.chosen.treatment if plan.chosen else None
        decision = repo.create_decision(s, ids, engine.digest, [_cand_dict(c) for c in plan.candidates], chosen,
                                        rationale, DecisionStatus.planned if chosen else DecisionStatus.exhausted,
                                        evidence=record)
        for d, _ in members:
            mark = {**((d.evidence or {}).get(DEFERRED) or {}), "taken_by": decision.id}
            repo.add_decision_evidence(s, d.id, DEFERRED, mark, reason=f"taken by site-level decision {decision.id}")
    others = tuple(r for r in reports if r.id != lead.id)
    if chosen is None:
        return DecisionOutcome(lead.id, decision.id, DecisionStatus.exhausted, plan, [],
                               "no applicable backbone treatment: a person must look", report_ids=ids)
    return engine._ladder(decision.id, lead, parent, plan, max_cost, approved=None, group=others, report_ids=ids)


def resume_group(engine: Engine, d: DecisionEntity, max_cost: float | None) -> DecisionOutcome | None:
    """Carry on a site-level decision (approved, or taken over) from its chosen rung; None if another pass did."""
    from decision.engine import _as_decided

    with session_scope(engine.url) as s:
        if not repo.claim_planned(s, d.id, reason=f"resumed by {engine.worker} at {d.chosen}"):
            return None
        reports = [repo.get_report(s, i) for i in d.report_ids]
        lead, parent, plan, _ = group_plan(engine, s, reports, ((d.evidence or {}).get(SITE_GROUP) or {}).get("lead"))
    p = _as_decided(plan, [c.treatment for c in sorted(d.candidates, key=lambda c: c.rank)], d.chosen)
    others = tuple(r for r in reports if r.id != lead.id)
    return engine._ladder(d.id, lead, parent, p, max_cost, approved=approved_treatment(d), group=others,
                          report_ids=list(d.report_ids))
