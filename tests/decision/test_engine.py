"""The engine on a tiny real registry: planning writes nothing, failures and interruptions are recorded,
approvals and --max-cost stop the ladder, treatments never see evaluation labels, surgery is surgical."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cxr.infer import predict_logits
from decision.catalog import Catalog, head_of
from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from decision.past_runs import run_stats
from decision.planner import empirical_cost_matrix
from decision.treat import candidate_weights
from policies import load_policy, parse_policy
from registry import audit, repo
from registry.entities import DatasetRole, DecisionStatus, ReportStatus, RunOutcome
from registry.session import session_scope
from tests import dates
from treatments.base import TreatmentContext, TreatmentResult
from treatments.plugins import load_treatments

pytestmark = pytest.mark.xdist_group("tiny-home")


class Raising:
    name, fixes, head_only = "toy_raise", frozenset({"false_positives"}), True

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        raise RuntimeError("boom: the GPU caught fire")


class Interrupting(Raising):
    name = "toy_interrupt"

    def apply(self, ctx):
        raise KeyboardInterrupt


class Relabel(Raising):
    name = "toy_relabel"

    def apply(self, ctx):
        t = dict(ctx.thresholds)
        t[ctx.report.pathology] = 0.999
        return TreatmentResult(thresholds=t, notes="almost never call it")


def _policy(**entries):
    raw = load_policy().model_dump(mode="json")
    for name, extra in entries.items():
        raw["treatments"][name] = {"prior_cost": 0.5, "fixes": ["false_positives"], "p_success_default": 0.9,
                                   **extra}
    return parse_policy(raw)


def _report(url, day: int = 1) -> int:
    rep = {"model": "cxr", "version": 1, "pathology": "Cardiomegaly", "kind": "false_positives", "metric": "fpr",
           "value": 0.6, "target": 0.2, "site": "site-b",
           "window_start": dates.day(day), "window_end": dates.day(day + 1),
           "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1}, "cases": []}
    with session_scope(url) as s:
        return ingest(s, [parse_report(rep)]).ids[0]


def _state(url):
    with session_scope(url, read_only=True) as s:
        prod = repo.resolve_version(s, "cxr@production")
        return prod, repo.list_reports(s), repo.list_runs(s), repo.list_decisions(s), audit.verify_chain(s)


def test_plan_writes_nothing(tiny_home):
    _report(tiny_home.url)
    with session_scope(tiny_home.url, read_only=True) as s:
        before = len(repo.list_events(s))
    plans = Engine(tiny_home.url, tiny_home.home, load_policy()).plan_open()
    assert len(plans) == 1 and plans[0].plan.chosen is not None
    assert plans[0].plan.chosen.treatment == "threshold_calibration"  # the cheapest likely fix ranks first
    with session_scope(tiny_home.url, read_only=True) as s:
        assert len(repo.list_events(s)) == before
        assert repo.list_reports(s)[0].status == ReportStatus.open


def test_a_raising_treatment_is_recorded_failed_and_the_report_stays_actionable(tiny_home):
    rid = _report(tiny_home.url)
    engine = Engine(tiny_home.url, tiny_home.home, _policy(toy_raise={}), plugins={"toy_raise": Raising()})
    summary = engine.run_pass()
    prod, reports, runs, _decisions, chain = _state(tiny_home.url)
    assert [r.outcome for r in runs] == [RunOutcome.failed]
    assert "boom: the GPU caught fire" in runs[0].error_text
    assert reports[0].id == rid and reports[0].status == ReportStatus.open  # picked up again next pass
    assert prod.version == 1  # nothing promoted
    assert summary.decisions[0].status == DecisionStatus.exhausted
    assert chain.ok


def test_an_interrupted_treatment_is_recorded_and_nothing_is_half_done(tiny_home):
    _report(tiny_home.url)
    engine = Engine(tiny_home.url, tiny_home.home, _policy(toy_interrupt={}),
                    plugins={"toy_interrupt": Interrupting()})
    with pytest.raises(KeyboardInterrupt):
        engine.run_pass()
    prod, reports, runs, decisions, chain = _state(tiny_home.url)
    assert [(r.outcome, r.error_text) for r in runs] == [(RunOutcome.failed, "interrupted")]
    assert reports[0].status == ReportStatus.open
    assert decisions[0].status == DecisionStatus.cancelled
    assert prod.version == 1 and chain.ok
    with session_scope(tiny_home.url, read_only=True) as s:
        assert len(repo.list_versions(s, "cxr")) == 1  # no candidate version left behind


def test_approval_stops_the_ladder_until_a_person_approves(tiny_home):
    _report(tiny_home.url)
    engine = Engine(tiny_home.url, tiny_home.home, _policy(toy_relabel={"needs_approval": True}),
                    plugins={"toy_relabel": Relabel()})
    first = engine.run_pass()
    assert first.decisions[0].status == DecisionStatus.awaiting_approval
    assert _state(tiny_home.url)[2] == []  # nothing ran
    with session_scope(tiny_home.url) as s:
        repo.approve_decision(s, first.decisions[0].decision_id, actor="radiology-lead",
                              reason="reviewed by the radiology lead")  # four-eyes: not the engine's actor
    second = engine.run_pass()
    assert [r.treatment for r in second.decisions[0].runs] == ["toy_relabel"]
    runs = _state(tiny_home.url)[2]
    assert runs[0].outcome in (RunOutcome.accepted, RunOutcome.rejected) and runs[0].output_version_id


def test_max_cost_defers_dear_treatments(tiny_home):
    _report(tiny_home.url)
    engine = Engine(tiny_home.url, tiny_home.home, _policy(toy_relabel={"prior_cost": 5.0}),
                    plugins={"toy_relabel": Relabel()})
    out = engine.run_pass(max_cost=2.0)
    assert out.decisions[0].status == DecisionStatus.awaiting_approval
    assert "exceeds --max-cost" in out.decisions[0].message


def test_treatments_never_receive_evaluation_labels(tiny_home):
    seen: list[TreatmentContext] = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner
            self.name, self.fixes, self.head_only = inner.name, inner.fixes, inner.head_only

        def applicable(self, report, planning):
            return self.inner.applicable(report, planning)

        def apply(self, ctx):
            seen.append(ctx)
            return self.inner.apply(ctx)

    builtins = load_treatments().treatments
    plugins = {n: Spy(builtins[n]) for n in ("threshold_calibration", "head_retrain")}
    _report(tiny_home.url)
    Engine(tiny_home.url, tiny_home.home, load_policy(), plugins=plugins).run_pass()
    assert seen, "no treatment ran"
    with session_scope(tiny_home.url, read_only=True) as s:
        evaluation = repo.list_datasets(s, role=DatasetRole.evaluation)
    cat = Catalog(tiny_home.home)
    eval_ids = {i for d in evaluation for i in cat.dataset(d).image_ids}
    assert "evaluation" not in {f.name for f in dataclasses.fields(TreatmentContext)}
    for ctx in seen:
        ids = set(ctx.calibration.image_ids) | (set(ctx.train.image_ids) if ctx.train else set())
        assert ids and not ids & eval_ids
        for ds in (ctx.image_data or {}).values():
            assert not set(ds.image_ids) & eval_ids


def test_surgery_leaves_every_other_output_bit_identical_on_the_evaluation_split(tiny_home):
    with session_scope(tiny_home.url, read_only=True) as s:
        parent = repo.resolve_version(s, "cxr@production")
        evaluation = repo.list_datasets(s, role=DatasetRole.evaluation)
    cat = Catalog(tiny_home.home)
    pw = cat.weights(parent)
    weight, _bias = head_of(pw)
    j = list(pw.spec.pathologies).index("Cardiomegaly")
    cut = weight.copy()
    cut[j, np.argsort(-weight[j])[:5]] = 0.0  # what surgery does: zero K channels of one row
    cand, _ = candidate_weights(pw, TreatmentResult(head_weight=cut))
    others = [k for k in range(pw.spec.num_classes) if k != j]
    for d in evaluation:  # through the real module, on every image of every evaluation set
        a = predict_logits(pw.model(), cat.dataset(d))
        b = predict_logits(cand.model(), cat.dataset(d))
        assert np.array_equal(a[:, others], b[:, others])
        assert not np.array_equal(a[:, j], b[:, j])
    assert torch.equal(cand.state["features.conv0.weight"], pw.state["features.conv0.weight"])
    assert cand.backbone_sha256 == pw.backbone_sha256


def test_the_empirical_cost_matrix_learns_from_runs(tiny_home):
    _report(tiny_home.url)
    engine = Engine(tiny_home.url, tiny_home.home, _policy(toy_relabel={}), plugins={"toy_relabel": Relabel()})
    engine.run_pass()
    with session_scope(tiny_home.url, read_only=True) as s:
        rows = {r.treatment: r for r in empirical_cost_matrix(run_stats(s), engine.policy)}
    row = rows["toy_relabel"]
    assert row.n_runs == 1 and row.measured_cost is not None
    assert row.blended_cost != row.prior_cost  # the prior moved towards what was measured
