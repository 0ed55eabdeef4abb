"""The shift diagnosis a backbone treatment makes is recorded on its decision, reused by the decision's later
rungs, and read by the planner for later reports about the same version at the same site: a strong
input-level shift skips the head-level rungs, with the reason in the rationale."""

from __future__ import annotations

from typing import ClassVar

import pytest

from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from policies import load_policy, parse_policy
from registry import audit, repo
from registry.entities import DecisionStatus
from registry.session import session_scope
from tests import dates
from treatments.base import TreatmentDeclined

pytestmark = pytest.mark.xdist_group("tiny-home")

DIAGNOSIS = {"level": "input", "blocks": [1, 2], "strength": 0.9, "located_at": "image", "reason": "toy"}


class HeadLevel:
    name, fixes, head_only = "toy_head", frozenset({"false_positives"}), True

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        raise TreatmentDeclined("cannot meet the target")


class Backbone:
    """Diagnoses (a fixed, recorded answer) unless given one, then declines; remembers what it was given."""

    name, fixes, head_only = "toy_backbone", frozenset({"false_positives"}), False
    seen: ClassVar[list] = []

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        Backbone.seen.append(ctx.diagnosis)
        raise TreatmentDeclined("the block could not reach the target", {"diagnosis": ctx.diagnosis or DIAGNOSIS})


def _policy(**diagnosis):
    raw = load_policy().model_dump(mode="json")
    raw["treatments"] = {"toy_head": {"prior_cost": 0.5, "fixes": ["false_positives"], "p_success_default": 0.9},
                         "toy_backbone": {"prior_cost": 3, "fixes": ["false_positives"], "p_success_default": 0.9}}
    raw["diagnosis"].update(diagnosis)
    return parse_policy(raw)


def _report(url, day, site="site-b"):
    rep = {"model": "cxr", "version": 1, "pathology": "Effusion", "kind": "false_positives", "metric": "fpr",
           "value": 0.99, "target": 0.5, "site": site,
           "window_start": dates.day(day), "window_end": dates.day(day + 1),
           "counts": {"tp": 5, "fp": 99, "tn": 1, "fn": 1}, "cases": []}
    with session_scope(url) as s:
        return ingest(s, [parse_report(rep)]).ids[0]


def _engine(tiny_home, **diagnosis):
    return Engine(tiny_home.url, tiny_home.home, _policy(**diagnosis),
                  plugins={"toy_head": HeadLevel(), "toy_backbone": Backbone()})


def test_a_recorded_input_level_diagnosis_skips_head_level_rungs_at_that_site_only(tiny_home):
    Backbone.seen = []
    engine = _engine(tiny_home, skip_head_level_strength=0.5)
    _report(tiny_home.url, 1)
    first = engine.run_pass().decisions[0]
    assert [r.treatment for r in first.runs] == ["toy_head", "toy_backbone"]  # no diagnosis yet: cheap rung first
    assert Backbone.seen == [None]
    with session_scope(tiny_home.url, read_only=True) as s:
        recorded = repo.get_decision(s, first.decision_id).evidence["shift_diagnosis"]
        parent = repo.resolve_version(s, "cxr@production", site="site-b")
        events = audit.list_events(s, entity_type="decision", entity_id=first.decision_id)
    assert recorded["level"] == "input" and recorded["version_id"] == parent.id and recorded["site"] == "site-b"
    assert any(e.action == "decision.evidence" for e in events)

    _report(tiny_home.url, 3)
    _report(tiny_home.url, 5, site="site-a")
    plans = {p.report.site: p for p in engine.plan_open()}
    b, a = plans["site-b"], plans["site-a"]
    head_b = next(c for c in b.plan.candidates if c.treatment == "toy_head")
    assert not head_b.applicable and "input-level shift at site-b" in head_b.reason
    assert "Shift diagnosis:" in b.plan.rationale and b.plan.chosen.treatment == "toy_backbone"
    assert b.evidence["shift_diagnosis"]["decision"] == first.decision_id
    assert next(c for c in a.plan.candidates if c.treatment == "toy_head").applicable  # another site: no skip
    assert "shift_diagnosis" not in a.evidence

    out = {d.report_id: d for d in engine.run_pass().decisions}
    second = next(d for d in out.values() if d.plan.chosen and d.plan.chosen.treatment == "toy_backbone")
    assert [r.treatment for r in second.runs] == ["toy_backbone"]
    assert Backbone.seen[1]["level"] == "input"  # the recorded diagnosis reached the treatment: not made twice


def test_no_skip_by_default_or_when_the_shift_is_weaker_than_the_policy_asks(tiny_home):
    _report(tiny_home.url, 1)
    _engine(tiny_home).run_pass()
    _report(tiny_home.url, 3)
    for engine in (_engine(tiny_home), _engine(tiny_home, skip_head_level_strength=0.95)):
        (p,) = engine.plan_open()
        assert next(c for c in p.plan.candidates if c.treatment == "toy_head").applicable
        assert "Shift diagnosis:" not in p.plan.rationale
        assert p.evidence["shift_diagnosis"]["strength"] == 0.9  # still recorded as evidence
    with session_scope(tiny_home.url, read_only=True) as s:
        assert all(d.status == DecisionStatus.exhausted for d in repo.list_decisions(s))
