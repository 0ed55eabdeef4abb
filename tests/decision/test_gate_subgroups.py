"""The subgroup gate (`decision.gate_subgroups`): a candidate that improves its target overall while lowering
recall in PA films only is rejected by a check naming the group, and accepted with the subgroup gate off.

References independent of the code under test: Holm's worked example (Wikipedia, "Holm–Bonferroni method":
p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05 rejects H1 and H4 only); the exact McNemar tail from a direct sum
of binomial coefficients in exact rational arithmetic; the paired AUROC p from an O(m*n) DeLong with scipy's
normal CDF; and a simulation of the guarantee (candidates equal to their parent are falsely rejected at most
alpha of the time, by a Wilson bound).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import norm

from cxr.drift import holm
from decision.evaluate import evaluate_scores
from decision.gate import gate
from decision.gate_subgroups import auroc_harm_p, recall_harm_p, subgroup_checks
from decision.planner import ReportView
from decision.subgroups import SubgroupInput, SubgroupSettings, group_columns
from policies import load_policy, parse_policy

NAMES = ["Cardiomegaly", "Edema"]


def _policy(**sg) -> object:
    raw = load_policy().model_dump(mode="json")
    raw["subgroups"].update(sg)
    return parse_policy(raw)


def _report() -> ReportView:
    return ReportView(id=1, model="cxr", version=1, pathology="Cardiomegaly", kind="false_positives", metric="fpr",
                      value=0.3, target=0.2, site="site-a", has_case_evidence=False, n_cases=0)


def _cohort(rng, n=4000):
    """Labels, group columns and a parent with recall 0.95 / FPR 0.30 on Cardiomegaly at threshold 0.5."""
    y = (rng.random((n, 2)) < 0.3).astype(float)
    view = np.where(rng.random(n) < 0.5, "PA", "AP")
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    age = rng.uniform(20, 90, n)
    pos = y[:, 0] == 1
    hit = rng.random(n) < np.where(pos, 0.95, 0.30)
    card = np.where(hit, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.5, n))
    edema = np.clip(0.5 * y[:, 1] + 0.5 * rng.random(n), 0, 1)
    cols = group_columns(sex, age, view, ["site-a"] * n, SubgroupSettings())
    return y, np.column_stack([card, edema]), cols, view


def _candidate(y, parent, view, rng, pa_drop=0.2):
    """FPR 0.30 -> 0.10 everywhere (the fix); `pa_drop` of the PA positives the parent caught now missed."""
    cand = parent.copy()
    neg_hit = (y[:, 0] == 0) & (parent[:, 0] >= 0.5)
    cand[neg_hit & (rng.random(len(y)) < 2 / 3), 0] = 0.2
    lost = (y[:, 0] == 1) & (parent[:, 0] >= 0.5) & (view == "PA") & (rng.random(len(y)) < pa_drop)
    cand[lost, 0] = 0.45
    return cand


def _evaluate(y, cand, parent, cols):
    return evaluate_scores(y, cand, parent, [0.5, 0.5], NAMES, parent_thresholds=[0.5, 0.5],
                           subgroups=SubgroupInput(cols, SubgroupSettings()))


def test_recall_lost_in_pa_films_only_is_rejected_naming_the_group_and_accepted_without_the_subgroup_gate():
    rng = np.random.default_rng(3)
    y, parent, cols, view = _cohort(rng)
    cand = _candidate(y, parent, view, rng)
    ev = _evaluate(y, cand, parent, cols)
    on = gate(_report(), ev, load_policy())
    off = gate(_report(), ev, _policy(gate=False))
    # the overall checks all pass: FPR fixed, recall above the floor, TP loss within 20 %, Edema unchanged
    assert off.passed, off.summary
    assert not any(c.name.startswith("subgroup_") for c in off.checks)
    assert not on.passed
    failed = {c.name for c in on.failed()}
    assert "subgroup_recall[Cardiomegaly|view=PA]" in failed
    assert not any("view=AP" in name for name in failed)  # AP films were not touched
    assert failed <= {c.name for c in on.checks if c.name.startswith("subgroup_")}
    assert "subgroup_recall[Cardiomegaly|view=PA]" in on.summary
    pa = next(c for c in on.checks if c.name == "subgroup_recall[Cardiomegaly|view=PA]")
    assert "positives lost" in pa.detail and pa.value <= 0.05


def test_the_same_fix_without_the_pa_loss_passes_the_subgroup_gate():
    rng = np.random.default_rng(3)
    y, parent, cols, view = _cohort(rng)
    cand = _candidate(y, parent, view, rng, pa_drop=0.0)
    result = gate(_report(), _evaluate(y, cand, parent, cols), load_policy())
    assert result.passed, result.summary
    family = next(c for c in result.checks if c.name == "subgroup_family")
    assert family.value == sum(c.name.startswith("subgroup_") and c.name != "subgroup_family"
                               for c in result.checks) > 10


def test_all_pathologies_switch_widens_the_family():
    rng = np.random.default_rng(5)
    y, parent, cols, view = _cohort(rng)
    ev = _evaluate(y, _candidate(y, parent, view, rng, pa_drop=0.0), parent, cols)
    target = subgroup_checks(ev, "Cardiomegaly", load_policy())
    every = subgroup_checks(ev, "Cardiomegaly", _policy(gate_pathologies="all"))
    assert any("[Edema|" in c.name for c in every) and not any("[Edema|" in c.name for c in target)
    no_recall = subgroup_checks(ev, "Cardiomegaly", _policy(gate_recall=False))
    assert not any(c.name.startswith("subgroup_recall[") for c in no_recall)
    assert any(c.name.startswith("subgroup_noninferiority[Cardiomegaly|sex & age_band=") for c in no_recall)


def test_holm_matches_the_published_worked_example():
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert [bool(a <= 0.05) for a in adjusted] == [True, False, False, True]


@pytest.mark.parametrize(("lost", "gained"), [(0, 0), (3, 0), (9, 1), (12, 5), (40, 31), (2, 9)])
def test_recall_p_is_the_exact_binomial_tail(lost, gained):
    n = lost + gained
    tail = sum(Fraction(math.comb(n, k), 2**n) for k in range(lost, n + 1)) if n else Fraction(1)
    assert recall_harm_p(lost, gained) == pytest.approx(float(tail), rel=1e-12, abs=1e-15)


def _brute_paired(y, a, b):
    psi = lambda s: (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])  # noqa: E731
    d = psi(a) - psi(b)
    v10, v01 = d.mean(1), d.mean(0)
    return d.mean(), math.sqrt(v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size)


def test_auroc_p_matches_an_independent_paired_delong_on_the_groups_rows():
    rng = np.random.default_rng(11)
    y, parent, cols, view = _cohort(rng, n=1200)
    cand = parent.copy()
    cand[:, 0] = np.clip(parent[:, 0] + rng.normal(0, 0.15, len(y)) * (view == "PA"), 0, 1)
    ev = _evaluate(y, cand, parent, cols)
    policy = load_policy()
    checks = {c.name: c for c in subgroup_checks(ev, "Cardiomegaly", policy)}
    rows = view == "PA"
    yy = y[rows, 0].astype(bool)
    delta, se = _brute_paired(yy, cand[rows, 0], parent[rows, 0])
    margin = policy.gate.noninferiority_margin
    g = next(g for g in ev.subgroups if g.pathology == "Cardiomegaly" and g.attribute == "view" and g.group == "PA")
    assert g.delta_auroc == pytest.approx(delta, abs=1e-12) and g.se_delta == pytest.approx(se, rel=1e-9)
    expected = norm.cdf((delta + margin) / se)
    assert auroc_harm_p(g.delta_auroc, g.se_delta, margin) == pytest.approx(expected, rel=1e-9)
    assert f"one-sided p {expected:.4g}" in checks["subgroup_noninferiority[Cardiomegaly|view=PA]"].detail


def test_candidates_equal_to_their_parent_are_falsely_rejected_at_most_alpha_of_the_time():
    """Simulation of the guarantee: 200 candidates with the parent's distribution (scores correlated 0.9)."""
    rng = np.random.default_rng(2024)
    policy, n_sim, rejected = load_policy(), 200, 0
    n = 1500
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    cols = group_columns(sex, rng.uniform(20, 90, n), np.where(rng.random(n) < 0.5, "PA", "AP"), ["s"] * n)
    for _ in range(n_sim):
        y = (rng.random((n, 1)) < 0.3).astype(float)
        latent = 1.2 * y[:, 0] + rng.normal(size=n)
        par = latent + 0.33 * rng.normal(size=n)
        cand = latent + 0.33 * rng.normal(size=n)
        ev = evaluate_scores(y, cand[:, None], par[:, None], [0.6], ["Cardiomegaly"], parent_thresholds=[0.6],
                             subgroups=SubgroupInput(cols, SubgroupSettings()))
        rejected += any(not c.passed for c in subgroup_checks(ev, "Cardiomegaly", policy))
    rate, z = rejected / n_sim, norm.ppf(0.975)
    wilson_lo = (rate + z * z / (2 * n_sim) - z * math.sqrt(rate * (1 - rate) / n_sim + z * z / (4 * n_sim**2))) / (
        1 + z * z / n_sim)
    assert wilson_lo <= policy.gate.alpha  # a gate falsely rejecting more than alpha would fail this
