"""The demo's site-level chapter: the feedback site's reports that share a shift, treated as one.

After the labelled weeks, site-b's false-positive reports that no operating point or head could fix wait in one
site decision for a person to approve the network-sized rung (augmentation retrain). The demo plays that person
(the approval says so), runs the one candidate, and says which reports it resolved and which are still open.

It also says *why* with numbers, whatever the gate decided: for every grouped pathology, the best false-positive
rate any threshold could reach on the site's held-out evaluation set within the gate's TP-loss bound and recall
floor (`decision.feasibility.operating_feasibility`, exact over every operating point), for the parent and for
each candidate the group produced. A threshold chosen on other rows cannot do better than that on these rows,
so a target whose best reachable FPR is above it was out of reach of that candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from decision.demo.config import DemoConfig, Progress
from decision.engine import Engine
from decision.feasibility import bounds_for, operating_feasibility, target_of
from registry import repo
from registry.entities import DatasetRole, DecisionStatus, ReportStatus
from registry.session import session_scope

__all__ = ["SiteGroup", "site_group_chapter"]


@dataclass
class SiteGroup:
    """What became of the site decision: approvals played, reports resolved and open, reachability."""

    site: str
    decision_id: int | None = None
    report_ids: list[int] = field(default_factory=list)
    approvals: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)  # "report 7 (Pneumonia)"
    still_open: list[str] = field(default_factory=list)
    #: per grouped pathology: target, and the best FPR reachable within the gate's bounds per version
    reach: list[dict[str, Any]] = field(default_factory=list)
    skipped: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("site", "decision_id", "report_ids", "approvals", "settled",
                                              "resolved", "still_open", "reach", "skipped")}


def _waiting_group(url: str, site: str):
    """The site decision at `site` waiting for a person (several reports, one decision) that no person has
    approved yet, or None: the demo approves one rung (a re-run on the same home approves nothing more)."""
    with session_scope(url, read_only=True) as s:
        reports = {r.id: r for r in repo.list_reports(s)}
        for d in repo.list_decisions(s, status=DecisionStatus.awaiting_approval):
            if (len(d.report_ids) > 1 and not d.approvals
                    and all(reports[i].site == site for i in d.report_ids if i in reports)):
                return d, [reports[i] for i in d.report_ids if i in reports]
    return None, []


def site_group_chapter(engine: Engine, cfg: DemoConfig, say: Progress) -> SiteGroup:
    """Approve the feedback site's waiting site decision (played by the demo), run it, report what it fixed."""
    site, url = cfg.feedback_site, engine.url
    out = SiteGroup(site)
    decision, reports = _waiting_group(url, site)
    if decision is None:
        out.skipped = f"no site-level decision at {site} waits for a first approval"
        say("site group", out.skipped)
        return out
    out.decision_id, out.report_ids = decision.id, list(decision.report_ids)
    names = ", ".join(r.pathology for r in reports)
    reason = (f"played by `decide demo`: one candidate for the {len(reports)} reports at {site} that share its "
              f"shift ({names}), instead of one network-sized run each")
    with session_scope(url) as s:
        repo.approve_decision(s, decision.id, actor=cfg.approver, reason=reason)
    out.approvals.append(f"decision {decision.id}: {cfg.approver} approves ({reason})")
    say("approve", out.approvals[-1])
    for d in engine.run_pass().decisions:
        out.settled.append(f"{'site group' if len(d.report_ids) > 1 else 'report'} "
                           f"{', '.join(map(str, d.report_ids))}: {d.status.value} — {d.message}")
        say("decide", out.settled[-1])
    with session_scope(url, read_only=True) as s:
        now = {r.id: r for r in repo.list_reports(s)}
    for r in reports:
        label = f"report {r.id} ({r.pathology} {r.metric} {r.value:.3f}, target {r.target})"
        (out.resolved if now[r.id].status == ReportStatus.resolved else out.still_open).append(label)
    out.reach = reachability(engine, decision.id, reports, site)
    for row in out.reach:
        best = ", ".join(f"{ref} {v if v is None else round(v, 3)}" for ref, v in row["best_fpr"].items())
        say("site group", f"{row['pathology']}: best FPR within the gate's bounds at {site} (target ≤ "
                          f"{row['target']}): {best}")
    say("site group", f"resolved by the one candidate: {', '.join(out.resolved) or 'none'}; still open: "
                      f"{', '.join(out.still_open) or 'none'}")
    return out


def reachability(engine: Engine, decision_id: int, reports, site: str) -> list[dict[str, Any]]:
    """Per grouped pathology, the best FPR reachable within the gate's TP-loss bound and recall floor on the
    site's held-out evaluation set, for the parent and for every candidate of the decision."""
    policy, cat = engine.policy, engine.catalog
    with session_scope(engine.url, read_only=True) as s:
        runs = repo.list_runs(s, decision_id=decision_id)
        if not runs:
            return []
        parent = repo.get_version(s, runs[0].input_version_id)
        cands = [(r.treatment, repo.get_version(s, r.output_version_id)) for r in runs if r.output_version_id]
        sets = [d for d in repo.list_datasets(s, role=DatasetRole.evaluation) if d.source.get("site") == site]
    if not sets:
        return []
    d = sets[0]
    wp = cat.weights(parent)
    names = list(wp.spec.pathologies)
    labels = cat.dataset(d).aligned_labels(names)
    p_scores = cat.probabilities(wp, d)
    c_scores = {f"{v.ref} ({t})": cat.probabilities(cat.weights(v), d) for t, v in cands}
    t_parent = parent.thresholds_for(site)
    rows = []
    for r in reports:
        if r.pathology not in names or t_parent.get(r.pathology) is None:
            continue
        slo = policy.slos.for_pathology(r.pathology)
        aim = target_of(r.kind, r.metric, r.target, slo.max_fpr, slo.min_recall)
        if aim is None or aim[0] != "fpr":
            continue
        j = names.index(r.pathology)
        known = ~np.isnan(labels[:, j])
        y, ps, t0 = labels[known, j].astype(int), p_scores[known, j], float(t_parent[r.pathology])
        bounds = bounds_for(policy, r.pathology)
        best = {f"{parent.ref} (parent)": operating_feasibility(y, ps, t0, "fpr", aim[1], bounds).best}
        for ref, cs in c_scores.items():
            best[ref] = operating_feasibility(y, cs[known, j], t0, "fpr", aim[1], bounds, parent=ps).best
        rows.append({"report_id": r.id, "pathology": r.pathology, "target": aim[1], "dataset": d.name,
                     "positives": int(y.sum()), "negatives": int((y == 0).sum()), "bounds": bounds.describe(),
                     "best_fpr": best})
    return rows
