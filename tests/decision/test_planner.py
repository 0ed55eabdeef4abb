"""The planner: ordering by cost / p(success), Bayesian updating, cost learning, reasons, purity."""

from __future__ import annotations

import copy
import itertools

import pytest

from decision.planner import (
    Plan,
    ReportView,
    RunStat,
    TreatmentInfo,
    empirical_cost_matrix,
    measured_cost,
    plan,
)
from policies import ISSUE_KINDS, CostModel, load_policy, parse_policy, policy_digest

ALL_KINDS = frozenset(ISSUE_KINDS)


def _report(kind="false_positives", evidence=True, **kw) -> ReportView:
    base = dict(id="r1", model="chexnet", version=3, pathology="Cardiomegaly", kind=kind, metric="fpr", value=0.25,
                target=0.1, site="A", has_case_evidence=evidence, n_cases=40)  # fmt: skip
    base.update(kw)
    return ReportView(**base)


def _installed(policy, **overrides) -> list[TreatmentInfo]:
    return [overrides.get(name, TreatmentInfo(name, ALL_KINDS)) for name in policy.treatments]


def _by_name(p: Plan) -> dict:
    return {c.treatment: c for c in p.candidates}


def _ladder_cost(cands) -> float:
    """Expected total cost of trying candidates in turn until one succeeds."""
    total, fail = 0.0, 1.0
    for c in cands:
        total += fail * c.expected_cost
        fail *= 1 - c.p_success
    return total


def test_default_false_positive_plan_orders_by_cost_over_probability():
    policy = load_policy()
    p = plan(_report(), _installed(policy), policy, [])
    applicable = [c for c in p.candidates if c.applicable]
    assert p.chosen is applicable[0] and p.chosen.treatment == "threshold_calibration"
    scores = [c.score for c in applicable]
    assert scores == sorted(scores)
    assert [c.rank for c in p.candidates] == list(range(1, len(p.candidates) + 1))
    # this order is the cheapest escalation ladder among all orders
    best = min(_ladder_cost(perm) for perm in itertools.permutations(applicable))
    assert _ladder_cost(applicable) == pytest.approx(best)
    assert p.policy_digest == policy_digest(policy) and p.report_id == "r1"
    assert "threshold_calibration first: expected cost 1.0 / p 0.60 = 1.7" in p.rationale
    first = _by_name(p)["full_retrain"]
    assert first.needs_approval and first.prior_cost == 10


def test_no_action_is_listed_but_never_chosen():
    policy = load_policy()
    p = plan(_report(), _installed(policy), policy, [])
    no_action = _by_name(p)["no_action"]
    assert not no_action.applicable and "reference" in no_action.reason and no_action.score == 0.0
    only = plan(_report(), [TreatmentInfo("no_action", ALL_KINDS)], policy, [])
    assert only.chosen is None and "escalate to a person" in only.rationale


def test_inapplicable_treatments_come_last_with_their_reasons():
    policy = load_policy()
    infos = _installed(
        policy,
        head_retrain=TreatmentInfo("head_retrain", ALL_KINDS, applicable=False, reason="no feature cache"),
        f_reoptimization=TreatmentInfo("f_reoptimization", frozenset({"footprint"})),
    )
    p = plan(_report(evidence=False), infos, policy, [])
    c = _by_name(p)
    assert "needs case-level evidence" in c["surgical_correction"].reason
    assert c["head_retrain"].reason == "no feature cache"
    assert c["f_reoptimization"].reason == "the plugin does not fix false_positives"
    flags = [cand.applicable for cand in p.candidates]
    assert flags == sorted(flags, reverse=True)  # all applicable ones first
    assert "Not applicable:" in p.rationale and "surgical_correction" in p.rationale


def test_policy_disables_and_missing_plugins_are_explained():
    data = load_policy().model_dump()
    data["treatments"]["full_retrain"]["enabled"] = False
    policy = parse_policy(data)
    infos = [i for i in _installed(policy) if i.name != "augmentation_retrain"]
    infos.append(TreatmentInfo("third_party_fix", ALL_KINDS))
    c = _by_name(plan(_report(kind="auroc_drop", metric="auroc"), infos, policy, []))
    assert c["full_retrain"].reason == "disabled by the policy"
    assert c["augmentation_retrain"].reason == "no plugin installed"
    assert c["third_party_fix"].reason == "no entry in the policy" and c["third_party_fix"].score is None
    assert "does not list it for auroc_drop" in c["threshold_calibration"].reason


def test_successes_raise_and_failures_lower_p_success():
    policy = load_policy()  # threshold_calibration: p0 0.6, prior strength 4 -> Beta(2.4, 1.6)
    infos = _installed(policy)
    base = _by_name(plan(_report(), infos, policy, []))["threshold_calibration"]
    assert (base.alpha, base.beta, base.p_success) == pytest.approx((2.4, 1.6, 0.6))
    wins = [RunStat("threshold_calibration", "false_positives", True, 0.4)] * 3
    up = _by_name(plan(_report(), infos, policy, wins))["threshold_calibration"]
    assert up.p_success == pytest.approx(5.4 / 7) and up.alpha == pytest.approx(5.4)
    losses = [RunStat("threshold_calibration", "false_positives", False, 0.4),
              RunStat("threshold_calibration", "false_positives", None, 0.4)]  # fmt: skip
    down = _by_name(plan(_report(), infos, policy, losses))["threshold_calibration"]
    assert down.p_success == pytest.approx(2.4 / 6) and down.beta == pytest.approx(3.6) and down.n_runs == 2
    other_kind = [RunStat("threshold_calibration", "false_negatives", False, 0.4)] * 5
    same = _by_name(plan(_report(), infos, policy, other_kind))["threshold_calibration"]
    assert same.p_success == pytest.approx(0.6)  # outcomes on another kind do not move this kind's p


def test_repeated_failures_escalate_to_the_next_treatment():
    policy = load_policy()
    history = [RunStat("threshold_calibration", "false_positives", False, 0.5)] * 6
    p = plan(_report(), _installed(policy), policy, history)
    assert p.chosen.treatment != "threshold_calibration"
    assert _by_name(p)["threshold_calibration"].rank > p.chosen.rank


def test_measured_cost_reproduces_the_papers_observations():
    m = CostModel()
    assert measured_cost(0.5, None, m) == pytest.approx(1.0, abs=0.15)  # threshold calibration, <1 s
    assert measured_cost(85, 18_000, m) == pytest.approx(2.0, abs=0.1)  # classifier head, 85 s
    assert 2.5 <= measured_cost(300, 200_000, m) <= 3.6  # minutes
    assert 2.5 <= measured_cost(600, None, m) <= 3.6
    assert 8.0 <= measured_cost(2 * 3600, 3_383_248, m) <= 10.5  # hours, all parameters
    assert measured_cost(-3, -5, m) == m.base  # nonsense input counts as zero


def test_cost_blending_moves_a_pessimistic_prior_towards_the_measurements():
    """The paper's correction: partial retraining estimated at 6, measured at 85 s (cost 2)."""
    data = load_policy().model_dump()
    data["treatments"]["head_retrain"]["prior_cost"] = 6
    policy = parse_policy(data)
    run = RunStat("head_retrain", "false_positives", True, 85.0, 18_000)
    costs = [_by_name(plan(_report(), _installed(policy), policy, [run] * n))["head_retrain"] for n in (0, 1, 4, 40)]
    expected = [c.expected_cost for c in costs]
    assert expected[0] == 6 and expected == sorted(expected, reverse=True)
    assert expected[-1] == pytest.approx(2.0, abs=0.25)
    k = policy.learning.cost_strength
    assert expected[1] == pytest.approx((k * 6 + costs[1].empirical_cost) / (k + 1))
    assert costs[0].empirical_cost is None and costs[1].empirical_cost == pytest.approx(
        measured_cost(85, 18_000, CostModel())
    )


def test_empirical_cost_matrix_rows():
    policy = load_policy()
    history = [RunStat("head_retrain", "false_positives", True, 80.0, 18_000),
               RunStat("head_retrain", "auroc_drop", False, 90.0, 18_000),
               RunStat("plugin_x", "footprint", True, 10.0)]  # fmt: skip
    rows = {r.treatment: r for r in empirical_cost_matrix(history, policy)}
    assert list(rows)[: len(policy.treatments)] == list(policy.treatments)
    head = rows["head_retrain"]
    assert head.n_runs == 2 and head.mean_wall_seconds == pytest.approx(85.0) and head.prior_cost == 2
    assert head.p_success_by_kind["false_positives"] > 0.5 > head.p_success_by_kind["auroc_drop"]
    assert rows["threshold_calibration"].measured_cost is None and rows["threshold_calibration"].blended_cost == 1
    x = rows["plugin_x"]
    assert x.prior_cost is None and x.blended_cost == x.measured_cost and x.p_success_by_kind["footprint"] > 0.5


def test_plan_is_pure_and_handles_many_treatments():
    data = load_policy().model_dump()
    builtin = len(data["treatments"])
    for i in range(11):
        data["treatments"][f"extra_{i}"] = {"prior_cost": 1 + i, "fixes": ["false_positives"]}
    policy = parse_policy(data)
    infos = _installed(policy)
    assert len(infos) == builtin + 11
    history = [RunStat("head_retrain", "false_positives", True, 85.0, 18_000)] * 3
    snapshot = (copy.deepcopy(infos), copy.deepcopy(history), policy.model_dump())
    first, second = plan(_report(), infos, policy, history), plan(_report(), infos, policy, history)
    assert first == second
    assert (infos, history, policy.model_dump()) == snapshot
    assert len(first.candidates) == builtin + 11


def test_runs_at_other_sites_count_for_less_in_p_success():
    """Partial pooling (`learning.other_sites_weight`): site-b's failures lower p(success) at site-b fully and at
    site-e by a quarter each (the bundled policy), so they do not push a new site's ladder past its rungs."""
    policy = load_policy()  # f_reoptimization: p0 0.3, prior strength 4 -> Beta(1.2, 2.8)
    assert policy.learning.other_sites_weight == 0.25
    infos = _installed(policy)
    fails = [RunStat("f_reoptimization", "false_positives", False, 30.0, 16_000, "site-b")] * 6
    at_b = _by_name(plan(_report(site="site-b"), infos, policy, fails))["f_reoptimization"]
    at_e = _by_name(plan(_report(site="site-e"), infos, policy, fails))["f_reoptimization"]
    assert (at_b.alpha, at_b.beta) == pytest.approx((1.2, 2.8 + 6))
    assert (at_e.alpha, at_e.beta) == pytest.approx((1.2, 2.8 + 6 * 0.25))
    assert at_e.expected_cost == at_b.expected_cost  # costs are pooled: time does not depend on the site
    p_e = plan(_report(site="site-e"), infos, policy, fails)
    assert "each of the 6 past run(s) for other sites' reports as 0.25" in p_e.rationale
    assert "other sites" not in plan(_report(site="site-b"), infos, policy, fails).rationale
    unknown = [RunStat("f_reoptimization", "false_positives", False, 30.0, 16_000)] * 6  # no site: counts fully
    assert _by_name(plan(_report(site="site-e"), infos, policy, unknown))["f_reoptimization"].beta == \
        pytest.approx(8.8)
    raw = policy.model_dump(mode="json")
    raw["learning"]["other_sites_weight"] = 1.0  # fully pooled: the old behaviour
    pooled = parse_policy(raw)
    assert _by_name(plan(_report(site="site-e"), _installed(pooled), pooled, fails))["f_reoptimization"].beta == \
        pytest.approx(8.8)
