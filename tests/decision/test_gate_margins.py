"""The gate near its margins, with every expected verdict computed independently of the code under test.

The clear-cut cases of `test_gate.py` pass whatever statistic the gate uses. Here the candidate's
harm to another pathology is tuned (by bisection on an independent O(m*n) DeLong, DeLong et al.
1988, with scipy's normal quantile) until the 95 % lower bound of its AUROC change sits just either
side of -margin, while the point estimate and the 50 % lower bound stay above it: a gate judging
the point estimate, or fed 50 % intervals, accepts a candidate it must reject. Exact boundary cases
(a bound equal to -margin, rates equal to their limits) pin every comparison's direction.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from decision.evaluate import evaluate_scores
from decision.gate import gate, other_site_checks
from decision.planner import ReportView
from policies import load_policy, parse_policy

NAMES = ["Cardiomegaly", "Edema"]
MARGIN = load_policy().gate.noninferiority_margin  # 0.02


# -- the independent reference ------------------------------------------------------------------------
def _psi(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """DeLong's kernel over every (positive, negative) pair: 1 if the positive outranks, 1/2 on a tie."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def brute_delong(y, s, alpha=0.05) -> tuple[float, float, float]:
    """AUROC with its DeLong (1 - alpha) interval from the O(m*n) structural components, not clipped."""
    y = np.asarray(y, bool)
    k = _psi(s[y], s[~y])
    v10, v01 = k.mean(1), k.mean(0)
    half = norm.ppf(1 - alpha / 2) * np.sqrt(v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size)
    return k.mean(), k.mean() - half, k.mean() + half


def brute_paired(y, a, b, alpha=0.05) -> tuple[float, float, float]:
    """Paired DeLong: delta = AUROC(a) - AUROC(b) with its (1 - alpha) interval, from the differenced kernel."""
    y = np.asarray(y, bool)
    d = _psi(a[y], a[~y]) - _psi(b[y], b[~y])
    v10, v01 = d.mean(1), d.mean(0)
    half = norm.ppf(1 - alpha / 2) * np.sqrt(v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size)
    return d.mean(), d.mean() - half, d.mean() + half


# -- the cohort: the target (Cardiomegaly) is fixed by the candidate; Edema is harmed by a tuned amount ------
def _cohort(seed=0, n=1600):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 2)) < 0.25).astype(float)
    pos = labels[:, 0] == 1
    card = np.where(pos, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.5, n))  # separable at 0.55: FPR 0, recall 1
    edema_logit = rng.normal(size=n) + 1.5 * labels[:, 1]
    return labels, card, edema_logit, rng.normal(size=n)


def _probs(card, edema_logit, noise, sigma):
    return np.column_stack([card, expit(edema_logit + sigma * noise)])


def _report(**kw) -> ReportView:
    base = dict(id=1, model="cxr", version=1, pathology="Cardiomegaly", kind="false_positives", metric="fpr",
                value=0.3, target=0.1, site="site-a", has_case_evidence=False, n_cases=0)  # fmt: skip
    base.update(kw)
    return ReportView(**base)


def _evaluate(labels, cand, parent, *, alpha=0.05, thr=(0.55, 0.5), parent_thr=(0.55, 0.5)):
    return evaluate_scores(labels, cand, parent, list(thr), NAMES, parent_thresholds=list(parent_thr), alpha=alpha)


def _policy(**gate_kw):
    raw = load_policy().model_dump(mode="json")
    raw["gate"].update(gate_kw)
    return parse_policy(raw)


def _straddle(labels, card, logit, noise, margin=MARGIN):
    """Bisect the harm `sigma` until the independent 95 % lower bound of Edema's change crosses -margin.

    Returns (sigma_pass, sigma_fail): lo95 >= -margin at the first, < -margin at the second, 1e-4 apart.
    """
    y, parent = labels[:, 1].astype(bool), expit(logit)

    def lo(sigma):
        return brute_paired(y, expit(logit + sigma * noise), parent)[1]

    good, bad = 0.0, 1.5
    assert lo(good) >= -margin > lo(bad)
    while bad - good > 1e-4:
        mid = (good + bad) / 2
        good, bad = (mid, bad) if lo(mid) >= -margin else (good, mid)
    return good, bad


@pytest.fixture(scope="module")
def near_margin():
    labels, card, logit, noise = _cohort()
    s_pass, s_fail = _straddle(labels, card, logit, noise)
    parent = _probs(card, logit, noise, 0.0)
    return labels, parent, _probs(card, logit, noise, s_pass), _probs(card, logit, noise, s_fail)


def test_a_point_estimate_inside_the_margin_with_a_95_lower_bound_outside_is_rejected(near_margin):
    labels, parent, _, cand = near_margin
    y = labels[:, 1]
    delta, lo95, _ = brute_paired(y, cand[:, 1], parent[:, 1])
    lo50 = brute_paired(y, cand[:, 1], parent[:, 1], alpha=0.5)[1]
    # the case is what it claims to be: only the 95 % lower bound is past the margin
    assert delta == pytest.approx(roc_auc_score(y, cand[:, 1]) - roc_auc_score(y, parent[:, 1]), abs=1e-12)
    assert delta > -MARGIN + 0.005 and lo50 > -MARGIN and -MARGIN - 1e-3 < lo95 < -MARGIN
    result = gate(_report(), _evaluate(labels, cand, parent), load_policy())
    assert not result.passed
    assert [c.name for c in result.failed()] == ["noninferiority[Edema]"]
    check = result.failed()[0]
    assert check.value == pytest.approx(lo95, abs=1e-9) and check.limit == -MARGIN
    assert "lower bound <" in check.detail and result.summary.startswith("Rejected: 1 of ")


def test_a_95_lower_bound_just_inside_the_margin_is_accepted(near_margin):
    labels, parent, cand, _ = near_margin
    delta, lo95, _ = brute_paired(labels[:, 1], cand[:, 1], parent[:, 1])
    assert -MARGIN <= lo95 < -MARGIN + 1e-3 and delta < 0  # a real, small loss, still demonstrably within the margin
    result = gate(_report(), _evaluate(labels, cand, parent), load_policy())
    assert result.passed, result.summary
    check = next(c for c in result.checks if c.name == "noninferiority[Edema]")
    assert check.passed and check.value == pytest.approx(lo95, abs=1e-9)
    assert f"worst other AUROC lower bound {lo95:+.4f} (Edema)" in result.summary


def test_the_50_percent_interval_would_pass_what_the_95_percent_interval_fails(near_margin):
    labels, parent, _, cand = near_margin
    at50 = _evaluate(labels, cand, parent, alpha=0.5)
    assert at50["Edema"].comparison.delta_lo == pytest.approx(
        brute_paired(labels[:, 1], cand[:, 1], parent[:, 1], alpha=0.5)[1], abs=1e-9
    )
    assert gate(_report(), at50, _policy(alpha=0.5)).passed  # a policy that asked for 50 % intervals
    assert not gate(_report(), _evaluate(labels, cand, parent), load_policy()).passed  # the default: 95 %
    # 50 % intervals under a 95 % policy are refused outright, whatever they show
    wrong_level = gate(_report(), at50, load_policy())
    assert [c.name for c in wrong_level.failed()] == ["interval_level"]


def test_evaluation_numbers_match_an_independent_delong(near_margin):
    labels, parent, _, cand = near_margin
    for alpha in (0.05, 0.2):
        ev = _evaluate(labels, cand, parent, alpha=alpha)
        for j, name in enumerate(NAMES):
            y = labels[:, j].astype(bool)
            r, c = ev[name], ev[name].comparison
            auc, lo, hi = brute_delong(y, cand[:, j], alpha)
            assert (r.auroc, r.auroc_lo, r.auroc_hi) == pytest.approx((auc, max(lo, 0.0), min(hi, 1.0)), abs=1e-9)
            assert c.parent_auroc == pytest.approx(roc_auc_score(y, parent[:, j]), abs=1e-12)
            delta, dlo, dhi = brute_paired(y, cand[:, j], parent[:, j], alpha)
            if name == "Cardiomegaly":  # identical scores: exactly no change, no variance
                assert (c.delta, c.delta_lo, c.delta_hi, c.p_value) == (0.0, 0.0, 0.0, 1.0)
                continue
            assert (c.delta, c.delta_lo, c.delta_hi) == pytest.approx((delta, dlo, dhi), abs=1e-9)
            z = delta / ((dhi - dlo) / (2 * norm.ppf(1 - alpha / 2)))
            assert c.p_value == pytest.approx(2 * norm.sf(abs(z)), rel=1e-6)


def test_a_lower_bound_exactly_at_minus_the_margin_passes_and_one_ulp_below_fails(near_margin):
    labels, parent, cand, _ = near_margin
    ev = _evaluate(labels, cand, parent)
    lo = ev["Edema"].comparison.delta_lo
    assert lo < 0
    at = gate(_report(), ev, _policy(noninferiority_margin=-lo))  # the rule: lo >= -margin
    assert at.passed, at.summary
    below = gate(_report(), ev, _policy(noninferiority_margin=float(np.nextafter(-lo, 0.0))))
    assert [c.name for c in below.failed()] == ["noninferiority[Edema]"]


def test_without_an_interval_the_point_estimate_is_held_to_the_margin_exactly():
    # one Edema positive: no DeLong variance, so the gate compares the point estimate; AUROC steps are 1/64
    n_neg = 64
    labels = np.column_stack([np.r_[np.ones(20), np.zeros(n_neg - 19)], np.r_[1.0, np.zeros(n_neg)]])
    card = np.r_[np.full(20, 0.9), np.full(n_neg - 19, 0.1)]
    edema_neg = np.linspace(0.0, 0.5, n_neg)
    parent = np.column_stack([card, np.r_[0.99, edema_neg]])  # the positive outranks all 64 negatives
    margin = 1 / 64
    for passed_negatives, expected in ((1, True), (2, False)):
        score = (edema_neg[-passed_negatives] + edema_neg[-passed_negatives - 1]) / 2  # falls below k negatives
        cand = np.column_stack([card, np.r_[score, edema_neg]])
        ev = _evaluate(labels, cand, parent)
        delta = roc_auc_score(labels[:, 1], cand[:, 1]) - roc_auc_score(labels[:, 1], parent[:, 1])
        assert delta == -passed_negatives / 64 and ev["Edema"].comparison.delta_lo is None
        result = gate(_report(), ev, _policy(noninferiority_margin=margin))
        check = next(c for c in result.checks if c.name == "noninferiority[Edema]")
        assert (check.passed, check.value, check.limit) == (expected, delta, -margin)
        assert "too few cases for an interval" in check.detail


def test_other_sites_are_held_to_the_same_95_lower_bound_target_included(near_margin):
    labels, parent, ok, harmed = near_margin
    report = _report(pathology="Edema", kind="auroc_drop", metric="auroc", value=0.6, target=0.7)
    for cand, expected in ((ok, True), (harmed, False)):
        checks = other_site_checks(report, _evaluate(labels, cand, parent), load_policy())
        by_name = {c.name: c for c in checks}
        assert by_name["noninferiority[Edema]"].passed is expected
        assert by_name["noninferiority[Cardiomegaly]"].passed
        lo95 = brute_paired(labels[:, 1], cand[:, 1], parent[:, 1])[1]
        assert by_name["noninferiority[Edema]"].value == pytest.approx(lo95, abs=1e-9)
