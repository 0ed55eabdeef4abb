"""Power from the data: the gate's power rule on the measured paired DeLong SE and correlation.

Independent references: the DeLong (1988) covariance computed here by brute force from its published
definition (pairwise kernel, structural components, their sample covariance); the correlation of two
AUROC estimates from a simulation (numpy's corrcoef of scipy's Mann–Whitney AUROCs over replicate data
sets) and, for AUROC 1/2 under a bivariate normal, the grade correlation (6/π)·arcsin(ρ/2); the normal
CDF from scipy; and boundary cases whose verdict follows by hand from the rule in `decision/power.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from statistics import NormalDist

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, norm

from decision.evaluate import ParentComparison, PathologyEval, evaluate_scores
from decision.gate import noninferiority_check
from decision.power import PowerAssessment, assess_power, hanley_mcneil_variance, positives_needed
from policies import load_policy, parse_policy

Z = float(norm.ppf(0.975))
MARGIN = 0.02


def _policy(**gate):
    raw = load_policy().model_dump(mode="json")
    raw["gate"].update(gate)
    return parse_policy(raw)


def _brute_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(var_a, var_b, cov) by DeLong et al. (1988): ψ(x, y) = 1, 1/2, 0; V10 over positives, V01 over
    negatives; S = S10/m + S01/n with S10, S01 the (ddof 1) covariance matrices of the components."""
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    comps10, comps01 = [], []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        comps10.append(psi.mean(axis=1))
        comps01.append(psi.mean(axis=0))
    s_mat = np.cov(np.stack(comps10)) / m + np.cov(np.stack(comps01)) / n
    return float(s_mat[0, 0]), float(s_mat[1, 1]), float(s_mat[0, 1])


def _one(labels, cand, parent, name="Emphysema") -> PathologyEval:
    return evaluate_scores(labels[:, None], cand[:, None], parent[:, None], pathologies=[name])[name]


# -- the covariance the gate reads is DeLong's, by its definition -----------------------------------------
def test_the_comparison_carries_delongs_variances_and_covariance_checked_by_brute_force():
    rng = np.random.default_rng(4)
    y = (rng.random(300) < 0.15).astype(float)
    parent = np.round(y + rng.normal(size=300), 1)  # rounded: many ties, each counted 1/2
    cand = np.round(0.6 * parent + 0.8 * rng.normal(size=300) + 0.5 * y, 1)
    c = _one(y, cand, parent).comparison
    v1, v2, cov = _brute_delong(y, cand, parent)
    assert (c.var_candidate, c.var_parent, c.covariance) == pytest.approx((v1, v2, cov), rel=1e-9, abs=1e-15)
    assert c.correlation == pytest.approx(cov / math.sqrt(v1 * v2), rel=1e-9)
    # the interval the gate judges is Δ ± z·SE with exactly this SE
    assert c.se_delta == pytest.approx(math.sqrt(v1 + v2 - 2 * cov), rel=1e-9)
    assert c.delta_hi - c.delta_lo == pytest.approx(2 * Z * math.sqrt(v1 + v2 - 2 * cov), rel=1e-9)


# -- the measured correlation recovers the simulated one ---------------------------------------------------
def _replicates(rng, mu, rho, m, n, reps):
    """`reps` data sets of m positives and n negatives: parent = μ·y + e₁, candidate = μ·y + ρe₁ + √(1-ρ²)e₂."""
    y = np.r_[np.ones(m), np.zeros(n)]
    e1, e2 = rng.normal(size=(reps, m + n)), rng.normal(size=(reps, m + n))
    return y, mu * y + e1, mu * y + rho * e1 + math.sqrt(1 - rho * rho) * e2


def _mean_measured_r(y, parents, cands) -> tuple[float, float]:
    rs = np.array([_one(y, c, p).comparison.correlation for p, c in zip(parents, cands, strict=True)])
    return float(rs.mean()), float(rs.std(ddof=1) / math.sqrt(rs.size))


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_measured_correlation_matches_the_grade_correlation_at_auroc_one_half(rho):
    # With μ = 0 the structural components are Φ(score) (uniform, variance 1/12) for either model, so the
    # two AUROC estimates correlate as Φ(Z₁), Φ(Z₂) do: the grade correlation (6/π)·arcsin(ρ/2) of a
    # bivariate normal (Pearson 1907). Tolerance: 4 standard errors of the simulated mean plus 1/m for
    # the O(1/m) bias of the ratio cov/√(v₁v₂) (about 0.4/m to 0.9/m measured at m = 150 and 400).
    m, n, reps = 150, 600, 200
    y, parents, cands = _replicates(np.random.default_rng(10), 0.0, rho, m, n, reps)
    mean_r, se = _mean_measured_r(y, parents, cands)
    assert mean_r == pytest.approx(6 / math.pi * math.asin(rho / 2), abs=4 * se + 1 / m)


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.95])
def test_measured_correlation_matches_the_correlation_of_simulated_auroc_pairs(rho):
    # A separating model (μ = 1, AUROC about 0.76): the reference is numpy's corrcoef of the AUROC pairs
    # of 4,000 independent data sets (scipy's Mann–Whitney U / mn), standard error (1 - r²)/√4000; the
    # measured r is averaged over 150 of them. Tolerance: 4 combined standard errors plus 1/m (bias).
    m, n, rng = 150, 600, np.random.default_rng(20 + int(10 * rho))
    y, parents, cands = _replicates(rng, 1.0, rho, m, n, 4000)
    pos, neg = y == 1, y == 0
    auc_p = mannwhitneyu(parents[:, pos], parents[:, neg], axis=1).statistic / (m * n)
    auc_c = mannwhitneyu(cands[:, pos], cands[:, neg], axis=1).statistic / (m * n)
    reference = float(np.corrcoef(auc_c, auc_p)[0, 1])
    se_ref = (1 - reference**2) / math.sqrt(auc_p.size)
    mean_r, se = _mean_measured_r(y, parents[:150], cands[:150])
    assert mean_r == pytest.approx(reference, abs=4 * math.hypot(se, se_ref) + 1 / m)


# -- the gate on a decorrelated candidate -----------------------------------------------------------------
def _decorrelated(seed=2, n=2000, prevalence=0.05):
    """A parent and a candidate equal in expectation (same signal, AUROC about 0.8) whose noise is
    independently re-drawn: a re-trained backbone's scores, uncorrelated with the parent's given the label."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(float)
    parent = 1.2 * y + rng.normal(size=n)
    cand = 1.2 * y + rng.normal(size=n)
    return y, cand, parent


def test_a_decorrelated_candidate_equal_in_expectation_is_underpowered_not_failed():
    y, cand, parent = _decorrelated()
    r = _one(y, cand, parent)
    c = r.comparison
    v1, v2, cov = _brute_delong(y, cand, parent)
    se = math.sqrt(v1 + v2 - 2 * cov)
    assert abs(cov / math.sqrt(v1 * v2)) < 0.2  # decorrelated, as simulated
    assert Z * se > MARGIN  # the measured interval cannot clear the margin even at Δ = 0 ...
    assert c.delta_lo < -MARGIN <= 0 <= c.delta_hi  # ... and here it does not; zero is inside
    check = noninferiority_check(r, load_policy())
    assert (check.passed, check.flag, check.limit, check.value) == (True, "underpowered", 0.0, c.delta_hi)
    assert f"measured SE {se:.4f}, ρ {cov / math.sqrt(v1 * v2):.2f})" in check.detail
    assert not noninferiority_check(r, _policy(underpowered="block")).passed
    # The fixed ρ = 0.95 would have called this design powered, and so the change a powered failure:
    # 2·V_HM·(1 - 0.95) with V_HM at the parent's AUROC is far below (margin/z)².
    assumed = assess_power(c.parent_auroc, r.n_pos, r.n_neg, MARGIN, 0.05, 0.95)
    assert not assumed.underpowered


def test_clear_harm_on_a_decorrelated_candidate_still_fails():
    y, _, parent = _decorrelated()
    cand = np.random.default_rng(8).normal(size=y.size)  # no signal at all: AUROC about 1/2 against 0.8
    r = _one(y, cand, parent)
    assert r.comparison.delta_hi < 0
    for rule in ("no_significant_harm", "block"):
        check = noninferiority_check(r, _policy(underpowered=rule))
        assert not check.passed and check.flag == "underpowered", rule


# -- at the boundary z·SE = margin --------------------------------------------------------------------------
def _hand(delta: float, se: float, v: float = 4e-4, n_pos: int = 400, n_neg: int = 1600) -> PathologyEval:
    """Both AUROC variances `v`, covariance chosen so that √(2v - 2cov) = `se`; interval Δ ± z·se."""
    cov = (2 * v - se * se) / 2
    c = ParentComparison(0.8, delta, delta - Z * se, delta + Z * se, None, None, None, None, None, None, None,
                         None, None, None, False, v, v, cov)
    return PathologyEval("Edema", True, None, n_pos, n_neg, 0, 0.8, 0.75, 0.85, None, None, None, None, None, None,
                         None, None, None, c)


@pytest.mark.parametrize(("factor", "underpowered"), [(0.999, False), (1.001, True)])
def test_just_either_side_of_z_se_equal_to_the_margin(factor, underpowered):
    se = MARGIN / Z * factor
    r = _hand(-0.005, se)  # lower bound -0.005 - z·se ≈ -0.025 < -margin: only the power rule can save it
    check = noninferiority_check(r, load_policy())
    if underpowered:  # passed on harm alone: the upper bound -0.005 + 0.02 is above zero
        assert (check.passed, check.flag, check.limit) == (True, "underpowered", 0.0)
        assert check.value == pytest.approx(-0.005 + Z * se)
    else:  # the interval could have shown the margin: an ordinary failure
        assert (check.passed, check.flag, check.limit) == (False, None, -MARGIN)
        assert check.value == pytest.approx(-0.005 - Z * se)
    p = assess_power(0.8, 400, 1600, MARGIN, 0.05, 0.95, measured_se=r.comparison.se_delta,
                     measured_rho=r.comparison.correlation)
    assert p.underpowered is underpowered and p.measured and p.rho_measured
    assert p.se == pytest.approx(se, rel=1e-9)
    assert p.rho == pytest.approx(1 - se * se / (2 * 4e-4), rel=1e-9)  # cov / v, by hand
    assert p.power_if_unchanged == pytest.approx(norm.cdf(MARGIN / se - Z), abs=1e-12)


def _hm(a, n1, n0):
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0)


@pytest.mark.parametrize(("se", "rho"), [(0.03, 0.6), (0.012, 0.3), (0.05, -0.2), (0.05, 0.95), (0.02, 0.99)])
def test_positives_needed_satisfy_both_the_design_at_measured_rho_and_the_scaled_measured_se(se, rho):
    # By a linear scan (not the bisection under test): the first n, prevalence held (n0 = round(79 n)),
    # at which both z·√(2 V_HM(n)(1 - r)) and z·se·√(V_HM(n)/V_HM(25)) are within the margin.
    a, n_pos, n_neg = 0.8, 25, 1975
    p = assess_power(a, n_pos, n_neg, MARGIN, 0.05, 0.95, measured_se=se, measured_rho=rho)
    v_here = _hm(a, n_pos, n_neg)
    n = n_pos
    while not (Z * math.sqrt(2 * _hm(a, n, round(n * 79)) * (1 - rho)) <= MARGIN
               and Z * se * math.sqrt(_hm(a, n, round(n * 79)) / v_here) <= MARGIN):
        n += 1
    assert p.needed_positives == n
    assert p.underpowered == (Z * se > MARGIN)
    if p.underpowered:
        assert p.needed_positives > n_pos  # never "needs" what it already has
    assert p.design_se == pytest.approx(math.sqrt(2 * v_here * (1 - rho)), rel=1e-12)


# -- evaluations stored before the covariance was recorded ---------------------------------------------------
def test_a_stored_comparison_without_the_covariance_loads_and_falls_back_to_the_policy_rho():
    y, cand, parent = _decorrelated()
    r = _one(y, cand, parent, "Hernia")
    stored = asdict(r.comparison)
    assert {"var_candidate", "var_parent", "covariance"} <= set(stored)
    old = {k: v for k, v in stored.items() if k not in ("var_candidate", "var_parent", "covariance")}
    c = ParentComparison(**old)  # an older stored JSON row still builds
    assert (c.correlation, c.se_delta) == (None, None)
    assert [f.name for f in fields(ParentComparison)][-3:] == ["var_candidate", "var_parent", "covariance"]
    pe = PathologyEval(**{**asdict(r), "comparison": c})
    check = noninferiority_check(pe, load_policy())
    # Δ's interval is the same, but power is judged on the policy's ρ 0.95: "powered", so the lower bound fails
    assert not check.passed and check.flag is None
    assert check.detail.endswith("(power judged with the policy's ρ 0.95: no measured covariance)")
    few = PathologyEval(**{**asdict(r), "n_pos": 5, "comparison": c})  # underpowered even at ρ 0.95
    weak = noninferiority_check(few, load_policy())
    assert weak.flag == "underpowered" and "at the policy's ρ 0.95: no measured covariance)" in weak.detail


# -- the search and the words, at their edges ---------------------------------------------------------------
def _scan(a, n_pos, n_neg, rho, stop=10_000):
    """First n ≥ max(n_pos, 1) with z·√(2 V_HM(n, n0)(1 - ρ)) ≤ margin, n0 = max(1, round(n·n_neg/n_pos))
    (n0 = n without positives), by a linear scan."""
    ratio = n_neg / n_pos if n_pos else 1.0
    for n in range(max(n_pos, 1), stop):
        if Z * math.sqrt(2 * _hm(a, n, max(1, round(n * ratio))) * (1 - rho)) <= MARGIN:
            return n
    return None


def test_positives_needed_at_its_edges_matches_a_linear_scan():
    assert positives_needed(0.8, 0, 300, MARGIN, 0.05, 0.9) == _scan(0.8, 0, 300, 0.9)  # no positives: n0 = n
    assert positives_needed(1.0, 1, 50, MARGIN, 0.05, 0.95) == 1  # a perfect parent: no variance at all
    # one negative per 20 positives: below 30 positives the scaled count rounds to a single negative
    assert positives_needed(0.8, 20, 1, MARGIN, 0.05, 0.998) == _scan(0.8, 20, 1, 0.998) == 30
    need = _scan(0.7, 5, 400, 0.98)
    assert 20 < need <= 40 and type(need) is int
    # the search doubles 5 → 10 → 20 → 40: a cap of exactly 40 still allows 40, one below does not
    assert positives_needed(0.7, 5, 400, MARGIN, 0.05, 0.98, cap=40) == need
    assert positives_needed(0.7, 5, 400, MARGIN, 0.05, 0.98, cap=39) is None
    p = assess_power(0.7, 5, 400, MARGIN, 0.05, 0.9, measured_se=0.05, measured_rho=0.9)
    assert type(p.needed_positives) is int


def test_z_se_exactly_at_the_margin_is_not_underpowered():
    z = NormalDist().inv_cdf(0.975)  # the code's own z, so that the product is exactly the margin
    se = MARGIN / z
    while z * se != MARGIN:  # the neighbouring float where z·se rounds to the margin exactly
        se = math.nextafter(se, 0.0 if z * se > MARGIN else 1.0)
    p = assess_power(0.8, 400, 1600, MARGIN, 0.05, 0.95, measured_se=se, measured_rho=0.99)
    assert not p.underpowered and p.needed_positives == 400  # "shown" includes equality, and nothing more needed
    assert p.power_if_unchanged == pytest.approx(0.5, abs=1e-12)


def test_the_power_sentence_says_where_se_and_rho_came_from():
    base = dict(underpowered=True, design_se=0.01, power_if_unchanged=0.125, needed_positives=None, n_pos=5,
                n_neg=400, se=0.03125, rho=0.95)
    assumed = PowerAssessment(**base)
    assert assumed.sentence("Hernia", MARGIN) == (
        "Hernia: 5 positives; the margin -0.020 needs more than 10,000,000 (P(pass | unchanged) 0.12; "
        "design SE 0.0312 at the policy's ρ 0.95: no measured covariance)")
    se_only = PowerAssessment(**(base | dict(needed_positives=1234, measured=True)))
    assert se_only.sentence("Hernia", MARGIN) == (
        "Hernia: 5 positives; the margin -0.020 needs about 1,234 (P(pass | unchanged) 0.12; "
        "measured SE 0.0312, ρ 0.95 from the policy: not measurable)")
    both = PowerAssessment(**(base | dict(needed_positives=1234, measured=True, rho_measured=True, rho=0.5)))
    assert both.sentence("Hernia", MARGIN).endswith("; measured SE 0.0312, ρ 0.50)")
    # a measured SE with no measurable correlation (a parent with no variance): the policy's ρ in the design
    p = assess_power(1.0, 5, 400, MARGIN, 0.05, 0.95, measured_se=0.03, measured_rho=None)
    assert p.measured and not p.rho_measured and p.rho == 0.95 and p.underpowered


def test_the_measured_se_sets_the_count_when_it_is_the_larger_requirement():
    # rho 0.95 makes the design SE small; a measured SE of 0.05 then needs far more positives than the design
    a, n_pos, n_neg, se = 0.8, 25, 1975, 0.05
    p = assess_power(a, n_pos, n_neg, MARGIN, 0.05, 0.95, measured_se=se, measured_rho=0.95)
    design_only = assess_power(a, n_pos, n_neg, MARGIN, 0.05, 0.95, measured_rho=0.95).needed_positives
    assert p.needed_positives > design_only
    n = p.needed_positives  # the first count at which the scaled SE reaches the margin, and not one before
    assert Z * se * math.sqrt(_hm(a, n, round(n * 79)) / _hm(a, n_pos, n_neg)) <= MARGIN
    assert Z * se * math.sqrt(_hm(a, n - 1, round((n - 1) * 79)) / _hm(a, n_pos, n_neg)) > MARGIN


@pytest.mark.parametrize("auc", [None, math.nan, math.inf])
def test_an_unknown_auroc_is_read_as_the_typical_0_75(auc):
    got = assess_power(auc, 30, 900, MARGIN, 0.05, 0.9)
    assert got == assess_power(0.75, 30, 900, MARGIN, 0.05, 0.9)
    assert got.design_se == pytest.approx(math.sqrt(2 * _hm(0.75, 30, 900) * 0.1), rel=1e-12)


def test_a_measured_correlation_outside_minus_one_to_one_is_clamped():
    hi = assess_power(0.8, 30, 900, MARGIN, 0.05, 0.5, measured_rho=1.7)
    lo = assess_power(0.8, 30, 900, MARGIN, 0.05, 0.5, measured_rho=-3.0)
    assert (hi.rho, hi.design_se) == (1.0, 0.0) and hi.rho_measured
    assert lo.rho == -1.0 and lo.design_se == pytest.approx(math.sqrt(4 * _hm(0.8, 30, 900)), rel=1e-12)


def test_a_measured_se_of_zero_is_power_one_and_a_missing_class_is_power_zero():
    exact = assess_power(0.8, 30, 900, MARGIN, 0.05, 0.9, measured_se=0.0)
    assert (exact.power_if_unchanged, exact.underpowered, exact.se, exact.measured) == (1.0, False, 0.0, True)
    for n_pos, n_neg in ((0, 900), (30, 0)):
        none = assess_power(0.8, n_pos, n_neg, MARGIN, 0.05, 0.9)
        assert none.power_if_unchanged == 0.0 and none.underpowered and none.needed_positives is None
        assert (none.n_pos, none.n_neg) == (n_pos, n_neg) and math.isinf(none.se)
    # an infinite measured SE is no measurement: the design SE decides
    inf = assess_power(0.8, 30, 900, MARGIN, 0.05, 0.9, measured_se=math.inf)
    assert not inf.measured and inf.se == inf.design_se


def test_hanley_mcneil_clamps_the_auroc_and_needs_one_case_of_each_class():
    # (20 positives, 2 negatives: an AUROC of 1.5 would give a positive numerator; clamped, the variance is 0)
    assert hanley_mcneil_variance(1.5, 20, 2) == hanley_mcneil_variance(1.0, 20, 2) == 0.0
    assert hanley_mcneil_variance(-0.5, 10, 20) == hanley_mcneil_variance(0.0, 10, 20)
    assert math.isinf(hanley_mcneil_variance(0.8, 10, 0)) and math.isinf(hanley_mcneil_variance(0.8, 0, 10))
    # one negative and one positive: A(1 - A) / 1, by the formula with no (n - 1) terms
    assert hanley_mcneil_variance(0.8, 1, 1) == pytest.approx(0.8 * 0.2)
    assert hanley_mcneil_variance(0.8, 3, 1) == pytest.approx(_hm(0.8, 3, 1))


def test_a_measured_se_no_count_can_shrink_to_the_margin_needs_none():
    # SE 50 at 25 positives: z·SE falls as 1/√n, so it would take about (50·1.96/0.02)²·25 ≈ 6·10⁸ positives,
    # past the 10⁷ the search allows: no count is promised
    p = assess_power(0.8, 25, 1975, MARGIN, 0.05, 0.95, measured_se=50.0)
    assert p.underpowered and p.needed_positives is None
