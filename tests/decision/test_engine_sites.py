"""The engine on a tiny real registry, per site and with the power-aware gate: a site's calibration changes that
site's operating points only; a candidate that passes with underpowered checks waits for a person, who can
promote it, reject it, or find it stale."""

from __future__ import annotations

import numpy as np
import pytest

from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from policies import load_policy, parse_policy
from registry import audit, repo
from registry.entities import DecisionStatus, ReportStatus, RunOutcome, VersionStatus
from registry.session import session_scope
from tests import dates
from treatments.base import TreatmentResult

pytestmark = pytest.mark.xdist_group("tiny-home")

TARGET = "Effusion"


class SiteThreshold:
    """Moves the target's threshold to the median score of the site's calibration negatives."""

    name, fixes, head_only = "toy_site_threshold", frozenset({"false_positives"}), True

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        j = ctx.target_index
        here = ctx.calibration.for_site(ctx.report.site)
        from treatments.base import probabilities

        s = probabilities(here.features, ctx.head_weight, ctx.head_bias)[:, j]
        neg = here.labels[:, j] == 0
        t = dict(ctx.thresholds)
        t[TARGET] = float(np.median(s[neg]))
        return TreatmentResult(thresholds=t, notes="site median")


class Jitter(SiteThreshold):
    """Nudges every classifier row but the target's: every other output changes a little, none systematically."""

    name = "toy_jitter"

    def apply(self, ctx):
        rng = np.random.default_rng(0)
        w = ctx.head_weight + rng.normal(0, 5e-3, ctx.head_weight.shape).astype(np.float32)
        w[ctx.target_index] = ctx.head_weight[ctx.target_index]
        return TreatmentResult(head_weight=w, trainable_parameters=int(w.size), notes="jitter")


def _policy(name, **gate):
    raw = load_policy().model_dump(mode="json")
    raw["treatments"] = {name: {"prior_cost": 0.5, "fixes": ["false_positives"], "p_success_default": 0.9}}
    raw["gate"].update({"recall_floor": 0.01, "max_tp_loss_fraction": None, **gate})
    return parse_policy(raw)


def _report(url, day=1):
    rep = {"model": "cxr", "version": 1, "pathology": TARGET, "kind": "false_positives", "metric": "fpr",
           "value": 0.99, "target": 0.999, "site": "site-b",
           "window_start": dates.day(day), "window_end": dates.day(day + 1),
           "counts": {"tp": 5, "fp": 99, "tn": 1, "fn": 1}, "cases": []}
    with session_scope(url) as s:
        return ingest(s, [parse_report(rep)]).ids[0]


def _serving(url, site=None):
    with session_scope(url, read_only=True) as s:
        return repo.resolve_version(s, "cxr@production", site=site)


def test_a_site_calibration_moves_that_site_only_and_every_other_site_is_judged_unchanged(tiny_home):
    before = _serving(tiny_home.url)
    _report(tiny_home.url)
    out = Engine(tiny_home.url, tiny_home.home, _policy("toy_site_threshold"),
                 plugins={"toy_site_threshold": SiteThreshold()}).run_pass()
    run = out.decisions[0].runs[0]
    assert run.outcome == RunOutcome.accepted, run.gate.summary
    v = run.version
    assert v.thresholds == before.thresholds  # every site without an override: unchanged
    assert set(v.site_thresholds) == {"site-b"} and set(v.site_thresholds["site-b"]) == {TARGET}
    assert v.thresholds_for("site-b")[TARGET] != before.thresholds[TARGET]
    site_a = [c for c in run.gate.checks if "site-a" in c.name]
    assert site_a and all(c.passed and c.binding for c in site_a)
    assert all(c.flag == "unchanged" or "not evaluable" in c.detail
               for c in site_a if c.name.startswith("noninferiority["))
    assert run.gate.scope == "all_sites"  # identical elsewhere: one version serves everyone
    assert _serving(tiny_home.url, "site-a").id == _serving(tiny_home.url, "site-b").id == v.id
    assert _serving(tiny_home.url, "site-a").thresholds_for("site-a") == before.thresholds


def _held(tiny_home):
    _report(tiny_home.url)
    engine = Engine(tiny_home.url, tiny_home.home, _policy("toy_jitter"), plugins={"toy_jitter": Jitter()})
    out = engine.run_pass()
    d = out.decisions[0]
    assert d.status == DecisionStatus.awaiting_approval, d.message
    run = d.runs[0]
    assert run.outcome == RunOutcome.held and run.gate.passed and run.gate.needs_approval
    assert run.gate.flagged(), "no underpowered check was flagged"
    assert "a person must approve it" in d.message
    return engine, d, run


def test_an_underpowered_pass_is_held_and_a_person_promotes_it(tiny_home):
    before = _serving(tiny_home.url)
    engine, d, run = _held(tiny_home)
    assert _serving(tiny_home.url, "site-b").id == before.id  # nothing moved yet
    assert run.version.status == VersionStatus.candidate
    with session_scope(tiny_home.url) as s:
        repo.approve_decision(s, d.decision_id, actor="radiology-lead", reason="Hernia has 5 cases; accepted")
    engine.run_pass()
    with session_scope(tiny_home.url, read_only=True) as s:
        assert repo.get_run(s, run.run_id).outcome == RunOutcome.accepted
        assert repo.get_decision(s, d.decision_id).status == DecisionStatus.succeeded
        assert repo.get_report(s, d.report_id).status == ReportStatus.resolved
        settle = audit.list_events(s, entity_type="treatment_run", entity_id=run.run_id)[-1]
        assert audit.verify_chain(s).ok
    assert settle.action == "run.settle" and "radiology-lead" in settle.reason
    assert _serving(tiny_home.url, "site-b").id == run.version.id
    if run.gate.scope == "site":  # promoted for site-b alone: every other site keeps the parent
        assert _serving(tiny_home.url, "site-a").id == before.id


def test_a_rejected_hold_rejects_the_candidate(tiny_home):
    before = _serving(tiny_home.url)
    engine, d, run = _held(tiny_home)
    with session_scope(tiny_home.url) as s:
        repo.reject_decision(s, d.decision_id, actor="radiology-lead", reason="not without more Hernia cases")
    engine.run_pass()
    with session_scope(tiny_home.url, read_only=True) as s:
        assert repo.get_run(s, run.run_id).outcome == RunOutcome.rejected
        assert repo.get_version(s, run.version.id).status == VersionStatus.rejected
    assert _serving(tiny_home.url, "site-b").id == before.id


def test_an_approval_that_comes_after_production_moved_is_stale(tiny_home):
    engine, d, run = _held(tiny_home)
    with session_scope(tiny_home.url) as s:
        parent = repo.resolve_version(s, "cxr@production")
        other = repo.derive_version(s, parent.id, thresholds={}, reason="someone else's change")
        repo.set_alias(s, "cxr", "production", other.id, reason="moved meanwhile")
        repo.approve_decision(s, d.decision_id, actor="radiology-lead", reason="ok")
    engine_out = engine.run_pass()
    with session_scope(tiny_home.url, read_only=True) as s:
        assert repo.get_run(s, run.run_id).outcome == RunOutcome.rejected
        assert repo.get_decision(s, d.decision_id).status == DecisionStatus.exhausted
    assert _serving(tiny_home.url, "site-b").id == other.id
    # The report was opened again, and this same pass planned it afresh from what production is now.
    assert any(x.report_id == d.report_id and x.decision_id != d.decision_id for x in engine_out.decisions)
