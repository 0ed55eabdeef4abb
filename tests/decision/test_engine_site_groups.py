"""Site-level decisions in the engine (`decision.site_group_pass`), with toy plugins on the tiny registry.

Two false-positive reports at site-b (an input-level shift planted as the site's diagnosis) each try their
head-level rung alone, then are grouped: ONE decision on both, ONE backbone candidate, a gate that judges both
targets at site-b, both reports resolved by it. A third report, at site-c, is not grouped: it climbs alone.
`decide decisions --json` and `decide export` show the group.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from decision.catalog import Catalog
from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from policies import load_policy, parse_policy
from registry import audit, repo
from registry.entities import DatasetRole, DecisionStatus, ReportStatus, RunOutcome
from registry.session import session_scope
from tests import dates
from treatments.base import TreatmentDeclined, TreatmentResult, probabilities
from treatments.operating import target_point

pytestmark = pytest.mark.xdist_group("tiny-home")

PLANTED = {"level": "input", "blocks": [1, 2], "strength": 0.9, "located_at": "input", "reason": "planted"}


class Cheap:
    """A head-level rung that looks and finds nothing to change (as calibration does when no point is feasible)."""

    name, fixes, head_only = "toy_cheap", frozenset({"false_positives"}), True

    def __init__(self):
        self.calls = []

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        self.calls.append(ctx.report.id)
        raise TreatmentDeclined("nothing to change on the head")


class SiteBackbone:
    """A backbone rung: a new weights blob (the same head), the lead's threshold chosen on the site's rows."""

    name, fixes, head_only = "toy_backbone", frozenset({"false_positives"}), False

    def __init__(self):
        self.calls = []

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        self.calls.append((ctx.report.id, ctx.diagnosis))
        here = ctx.calibration.for_site(ctx.report.site)
        if len(here) < 50:
            raise TreatmentDeclined(f"{len(here)} rows at {ctx.report.site}: too few")
        j = ctx.target_index
        known = ~np.isnan(here.labels[:, j])
        s = probabilities(here.features, ctx.head_weight, ctx.head_bias)[known, j]
        op, _ = target_point(ctx, here.labels[known, j].astype(int), s)
        return TreatmentResult(thresholds={**ctx.thresholds, ctx.report.pathology: float(op.threshold)},
                               head_weight=ctx.head_weight.copy(), trainable_parameters=1, notes="toy backbone")


def _policy(enabled=True, approval=False):
    raw = load_policy().model_dump(mode="json")
    raw["treatments"] = {"toy_cheap": {"prior_cost": 0.5, "fixes": ["false_positives"], "p_success_default": 0.9},
                         "toy_backbone": {"prior_cost": 3, "fixes": ["false_positives"], "p_success_default": 0.5,
                                          "needs_approval": approval}}
    raw["gate"].update({"recall_floor": 0.01, "max_tp_loss_fraction": None})
    raw["slos"]["default"].update({"min_recall": 0.05, "max_fpr": 0.5})
    raw["calibration"].update({"fpr_headroom": 0.4, "skip_infeasible": False})
    raw["site_groups"]["enabled"] = enabled
    # The toy backbone fixes FPR by raising one threshold and nothing else, trading recall for it as the relaxed
    # recall floor above allows: the subgroup gate's recall test (no margin) would refuse that trade in every
    # large group. These tests are about grouping; the subgroup gate has its own (test_gate_subgroups.py).
    raw["subgroups"]["gate"] = False
    return parse_policy(raw)


def _pathologies(tiny_home, n=2):
    """The `n` outputs with the most site-b feedback positives (both classes present), most first."""
    cat = Catalog(tiny_home.home)
    with session_scope(tiny_home.url, read_only=True) as s:
        v = repo.resolve_version(s, "cxr@production")
        fb = repo.list_datasets(s, role=DatasetRole.feedback, site="site-b")[0]
    names = list(cat.weights(v).spec.pathologies)
    y = cat.dataset(fb).aligned_labels(names)
    pos = [(int(np.nansum(y[:, j] == 1)), names[j]) for j in range(len(names))]
    return [name for _, name in sorted(pos, reverse=True)[:n]]


def _ingest(url, pathology, site, value=0.95, target=0.5):
    rep = {"model": "cxr", "version": 1, "pathology": pathology, "kind": "false_positives", "metric": "fpr",
           "value": value, "target": target, "site": site, "window_start": dates.day(1), "window_end": dates.day(8),
           "counts": {"tp": 5, "fp": round(100 * value), "tn": 100 - round(100 * value), "fn": 1}, "cases": []}
    with session_scope(url) as s:
        return ingest(s, [parse_report(rep)]).ids[0]


def _engine(tiny_home, policy):
    cheap, backbone = Cheap(), SiteBackbone()
    engine = Engine(tiny_home.url, tiny_home.home, policy, plugins={"toy_cheap": cheap, "toy_backbone": backbone})
    engine.diagnose = lambda engine, session, parent, site: dict(PLANTED) if site == "site-b" else None
    return engine, cheap, backbone


def test_two_reports_at_a_shifted_site_are_grouped_and_fixed_by_one_candidate_a_third_elsewhere_is_not(
        tiny_home, monkeypatch):
    p1, p2 = _pathologies(tiny_home)
    r1 = _ingest(tiny_home.url, p1, "site-b", value=0.97)
    r2 = _ingest(tiny_home.url, p2, "site-b", value=0.90)
    r3 = _ingest(tiny_home.url, p1, "site-c")
    engine, cheap, backbone = _engine(tiny_home, _policy())
    out = engine.run_pass()

    assert sorted(cheap.calls) == [r1, r2, r3]  # every report tried its head-level rung alone, first
    assert len(backbone.calls) == 2  # once for the site-b group, once for site-c's report alone
    lead, diag = next(c for c in backbone.calls if c[0] != r3)
    assert lead == r1 and diag["level"] == "input"  # the lead: furthest from its target; the diagnosis handed on

    group = next(d for d in out.decisions if len(d.report_ids) > 1)
    assert sorted(group.report_ids) == [r1, r2]
    assert group.status == DecisionStatus.succeeded, group.message
    [run] = group.runs
    assert run.outcome == RunOutcome.accepted, run.gate.summary
    fixed = {c.name.split("@")[0]: c for c in run.gate.checks if c.name.startswith("target_fixed")
             and c.name.endswith("@phantom-site-b-evaluation")}
    assert set(fixed) == {"target_fixed", f"target_fixed[{p2}]"} and all(c.passed for c in fixed.values())
    assert p2 in run.version.site_thresholds["site-b"]  # the second pathology's point, re-chosen at the site
    assert run.version.thresholds_for("site-b")[p2] != run.version.thresholds_for("site-a")[p2]

    alone = [d for d in out.decisions if r3 in d.report_ids]
    assert alone and all(d.report_ids == [r3] for d in alone)  # site-c is never grouped
    with session_scope(tiny_home.url, read_only=True) as s:
        status = {r.id: r.status for r in repo.list_reports(s)}
        decisions = repo.list_decisions(s)
        assert audit.verify_chain(s).ok
    assert status[r1] == status[r2] == ReportStatus.resolved
    assert status[r3] != ReportStatus.resolved
    record = next(d for d in decisions if d.id == group.decision_id)
    g = record.evidence["site_group"]
    assert g["report_ids"] == [r1, r2] and g["site"] == "site-b" and g["level"] == "input" and g["lead"] == r1
    assert record.evidence["shift_diagnosis"]["version_id"] == g["version_id"]
    deferred = [d for d in decisions if "site_group_deferred" in (d.evidence or {})]
    assert sorted(d.report_ids[0] for d in deferred) == [r1, r2]
    assert all(d.evidence["site_group_deferred"]["taken_by"] == group.decision_id for d in deferred)
    assert "toy_cheap" in {c.treatment for c in record.candidates}
    assert not next(c for c in record.candidates if c.treatment == "toy_cheap").applicable

    monkeypatch.setenv("DECIDE_DATABASE_URL", tiny_home.url)
    listed = json.loads(CliRunner().invoke(app, ["decisions", "--json"]).stdout)
    row = next(d for d in listed if d["id"] == group.decision_id)
    assert row["reports"] == [r1, r2] and row["site_group"]["level"] == "input"
    exported = json.loads(CliRunner().invoke(app, ["export"]).stdout)
    assert [(x["decision_id"], x["report_ids"]) for x in exported["site_groups"]] == [(group.decision_id, [r1, r2])]


def test_with_the_switch_off_each_report_climbs_its_own_ladder(tiny_home):
    p1, p2 = _pathologies(tiny_home)
    r1, r2 = _ingest(tiny_home.url, p1, "site-b"), _ingest(tiny_home.url, p2, "site-b")
    engine, _cheap, backbone = _engine(tiny_home, _policy(enabled=False))
    out = engine.run_pass()
    assert sorted(c[0] for c in backbone.calls) == [r1, r2]
    assert all(len(d.report_ids) == 1 for d in out.decisions)
    with session_scope(tiny_home.url, read_only=True) as s:
        assert not any("site_group" in (d.evidence or {}) for d in repo.list_decisions(s))


def test_one_approval_covers_the_group_and_the_resumed_decision_resolves_every_report(tiny_home):
    p1, p2 = _pathologies(tiny_home)
    r1, r2 = _ingest(tiny_home.url, p1, "site-b"), _ingest(tiny_home.url, p2, "site-b")
    engine, _cheap, backbone = _engine(tiny_home, _policy(approval=True))
    group = next(d for d in engine.run_pass().decisions if len(d.report_ids) > 1)
    assert group.status == DecisionStatus.awaiting_approval and not backbone.calls
    with session_scope(tiny_home.url) as s:
        repo.approve_decision(s, group.decision_id, actor="radiology-lead", reason="site-b's detector: treat it once")
    resumed = [d for d in engine.run_pass().decisions if d.decision_id == group.decision_id]
    assert [d.status for d in resumed] == [DecisionStatus.succeeded], [d.message for d in resumed]
    assert len(backbone.calls) == 1 and sorted(resumed[0].report_ids) == [r1, r2]
    with session_scope(tiny_home.url, read_only=True) as s:
        assert {r.id: r.status for r in repo.list_reports(s)} == {r1: ReportStatus.resolved, r2: ReportStatus.resolved}


def test_without_a_recorded_diagnosis_the_engine_diagnoses_the_site_from_its_films(tiny_home):
    from decision.site_group_pass import _diagnosis

    engine = Engine(tiny_home.url, tiny_home.home, _policy(), plugins={})
    with session_scope(tiny_home.url, read_only=True) as s:
        parent = repo.resolve_version(s, "cxr@production")
        diag = _diagnosis(engine, s, parent, "site-b")
        nothing = _diagnosis(engine, s, parent, "site-c")  # no labelled films there: no diagnosis, nothing groups
    assert diag["level"] in ("input", "feature", "output", "none") and diag["site"] == "site-b"
    assert diag["version_id"] == parent.id and nothing is None
