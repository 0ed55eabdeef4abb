"""The gate judges a subgroup report's target on the subgroup's rows (`decision.gate_subgroup_target`)."""

from __future__ import annotations

import numpy as np

from decision.evaluate import evaluate_scores
from decision.gate import gate
from decision.planner import ReportView
from decision.subgroups import SubgroupInput, SubgroupSettings, group_columns
from policies import load_policy, parse_policy

NAMES = ["Cardiomegaly", "Edema"]


def _report(subgroup="view=AP") -> ReportView:
    return ReportView(id=1, model="cxr", version=1, pathology="Cardiomegaly", kind="false_positives", metric="fpr",
                      value=0.41, target=0.3, site="site-b", subgroup=subgroup)


def _world(fpr_ap, fpr_pa, seed=0, n=3000, settings=SubgroupSettings()):
    """Candidate scores with exact FPRs per view at threshold 0.5; parent: FPR 0.41 on AP, 0.08 on PA."""
    rng = np.random.default_rng(seed)
    view = np.where(np.arange(n) % 3 == 0, "PA", "AP")
    y = np.column_stack([(np.arange(n) % 10 == 0), rng.random(n) < 0.2]).astype(float)

    def scores(f_ap, f_pa):
        card = np.where(y[:, 0] == 1, 0.9, 0.2)
        for v, f in (("AP", f_ap), ("PA", f_pa)):
            neg = np.flatnonzero((view == v) & (y[:, 0] == 0))
            card[neg[: round(f * len(neg))]] = 0.7
        return np.column_stack([card, np.clip(0.5 * y[:, 1] + 0.4 * rng.random(n), 0, 1)])

    parent = scores(0.41, 0.08)
    cand = scores(fpr_ap, fpr_pa)
    cand[:, 1] = parent[:, 1]
    cols = group_columns(["F"] * n, np.full(n, 50.0), view, ["site-b"] * n, settings)
    return evaluate_scores(y, cand, parent, [0.5, 0.5], NAMES, parent_thresholds=[0.5, 0.5],
                           subgroups=SubgroupInput(cols, settings))


def _policy(**sg):
    raw = load_policy().model_dump(mode="json")
    raw["gate"]["target_rule"] = "meet_target"
    raw["subgroups"].update(sg)
    return parse_policy(raw)


def test_the_target_is_judged_on_the_subgroups_rows():
    fixed = gate(_report(), _world(0.25, 0.08), _policy())
    check = fixed.checks[0]
    assert check.name == "target_fixed" and check.passed and abs(check.value - 0.25) < 0.002, check.detail
    assert "on AP films (view=AP)" in check.detail and "the whole set:" in check.detail
    # The whole set meets 0.3 either way (0.41 AP x 2/3 + 0.08 PA x 1/3 = 0.30 before); AP alone does not:
    still = gate(_report(), _world(0.36, 0.02), _policy()).checks[0]
    assert not still.passed and abs(still.value - 0.36) < 0.002, still.detail
    whole = gate(_report(subgroup=""), _world(0.36, 0.02), _policy()).checks[0]
    assert whole.passed and whole.value < 0.3  # what the gate would have said without the subgroup


def test_a_subgroup_the_evaluation_cannot_see_fails_closed():
    ev = _world(0.25, 0.08)
    c = gate(_report("sex=M"), ev, _policy()).checks[0]  # every film is F: no such group in the evaluation
    assert not c.passed and "not evaluated on" in c.detail
    small = _world(0.25, 0.08, settings=SubgroupSettings(min_negatives=5000))  # AP has ~1,800 negatives
    c = gate(_report(), small, _policy()).checks[0]
    assert c.name == "target_fixed" and not c.passed and "too small to judge" in c.detail, c.detail
