"""DeLong AUROC statistics and confusion metrics, cross-checked against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cxr.errors import InvalidInput
from cxr.stats import auroc, binary_metrics, delong_ci, delong_paired, paired_bootstrap


def _binormal(rng, m, n, mu=1.0, rho=None):
    """m positives, n negatives; with rho, a second correlated score of the same separation."""
    y = np.r_[np.ones(m), np.zeros(n)]
    z1 = rng.normal(size=m + n)
    s1 = z1 + mu * y
    if rho is None:
        return y, s1
    z2 = rho * z1 + math.sqrt(1 - rho**2) * rng.normal(size=m + n)
    return y, s1, z2 + mu * y


def _brute_components(y, s):
    """O(m*n) placement values (DeLong 1988): psi = 1 if x > y, 1/2 if tied."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def _brute_var(y, s):
    v10, v01 = _brute_components(y, s)
    return np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size


@pytest.mark.parametrize("decimals", [None, 1])
def test_auroc_matches_sklearn_with_and_without_ties(decimals):
    rng = np.random.default_rng(1)
    y, s = _binormal(rng, 70, 230, mu=0.8)
    if decimals is not None:
        s = np.round(s, decimals)  # heavy ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert delong_ci(y, s).auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 1])
def test_delong_variance_matches_brute_force_structural_components(decimals):
    rng = np.random.default_rng(2)
    y, s = _binormal(rng, 40, 90)
    if decimals is not None:
        s = np.round(s, decimals)
    auc, lo, hi, var = delong_ci(y, s)
    assert var == pytest.approx(_brute_var(y, s), rel=1e-10)
    half = norm.ppf(0.975) * math.sqrt(var)
    assert (lo, hi) == pytest.approx((auc - half, auc + half))


def test_paired_variance_matches_brute_force_and_a_large_bootstrap():
    rng = np.random.default_rng(3)
    y, a, b = _binormal(rng, 120, 260, mu=1.0, rho=0.6)
    b = b * 0.7 + 0.3 * rng.normal(size=y.size)  # a weaker second reader
    r = delong_paired(y, a, b)
    va10, va01 = _brute_components(y, a)
    vb10, vb01 = _brute_components(y, b)
    brute = np.var(va10 - vb10, ddof=1) / va10.size + np.var(va01 - vb01, ddof=1) / va01.size
    assert r.var == pytest.approx(brute, rel=1e-10)
    assert r.delta == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    assert r.z == pytest.approx(r.delta / math.sqrt(r.var))
    assert r.p_value == pytest.approx(2 * norm.sf(abs(r.z)))

    boot = paired_bootstrap(y, a, b, n_boot=6000, seed=7)
    assert boot.auc_a == pytest.approx(r.auc_a) and boot.delta == pytest.approx(r.delta)
    assert boot.var_delta == pytest.approx(r.var, rel=0.12)
    assert boot.var_a == pytest.approx(delong_ci(y, a).var, rel=0.12)
    assert boot.lo == pytest.approx(r.lo, abs=0.02) and boot.hi == pytest.approx(r.hi, abs=0.02)


def test_bootstrap_is_seeded_and_single_score_mode_works():
    rng = np.random.default_rng(4)
    y, s = _binormal(rng, 30, 60)
    one = paired_bootstrap(y, s, n_boot=500, seed=11)
    two = paired_bootstrap(y, s, n_boot=500, seed=11)
    assert one == two
    assert math.isnan(one.delta) and one.lo < one.auc_a < one.hi
    with pytest.raises(InvalidInput):
        paired_bootstrap(np.zeros(5), np.arange(5.0))


def test_identical_scores_give_exactly_zero_difference():
    rng = np.random.default_rng(5)
    y, s = _binormal(rng, 25, 75)
    r = delong_paired(y, s, s.copy())
    assert (r.delta, r.var, r.z, r.p_value, r.lo, r.hi) == (0.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    assert r.reason is None


def test_perfect_separation_has_zero_width_interval():
    y = np.r_[np.ones(5), np.zeros(5)]
    s = np.r_[np.arange(5) + 10.0, np.arange(5.0)]
    assert tuple(delong_ci(y, s)) == (1.0, 1.0, 1.0, 0.0)
    flat = delong_paired(y, s, np.zeros(10))  # a constant scorer: AUROC 1/2, no variance either
    assert flat.delta == 0.5 and flat.p_value == 0.0 and flat.z == math.inf


@pytest.mark.parametrize("labels, reason", [(np.zeros(6), "no positive cases"), (np.ones(6), "no negative cases")])
def test_degenerate_labels_are_nan_with_a_reason(labels, reason):
    s = np.linspace(0, 1, 6)
    assert math.isnan(auroc(labels, s))
    ci = delong_ci(labels, s)
    assert all(math.isnan(v) for v in ci) and ci.reason == reason
    pr = delong_paired(labels, s, s[::-1])
    assert math.isnan(pr.delta) and math.isnan(pr.p_value) and pr.reason == reason


def test_a_single_positive_has_an_auroc_but_no_variance():
    y = np.array([1, 0, 0, 0])
    ci = delong_ci(y, [0.9, 0.1, 0.95, 0.2])
    assert ci.auc == pytest.approx(2 / 3) and math.isnan(ci.var) and "fewer than two" in ci.reason


def test_delong_interval_covers_the_true_auc_about_95_percent():
    rng = np.random.default_rng(6)
    mu = 1.0
    true_auc = norm.cdf(mu / math.sqrt(2))
    hits = 0
    for _ in range(400):
        y, s = _binormal(rng, 60, 120, mu=mu)
        ci = delong_ci(y, s)
        hits += ci.lo <= true_auc <= ci.hi
    assert 0.91 <= hits / 400 <= 0.985


def test_paired_test_holds_its_level_when_both_readers_are_equally_good():
    rng = np.random.default_rng(8)
    rejections = sum(delong_paired(*_binormal(rng, 60, 140, mu=1.0, rho=0.5)).p_value < 0.05 for _ in range(400))
    assert 0.015 <= rejections / 400 <= 0.09


def test_binary_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.6])
    m = binary_metrics(y, s, 0.6)  # >= 0.6: three called positive (0.9, 0.6 true; 0.7, 0.6 false) -> 4
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n_pos"], m["n_neg"]) == (2, 2, 2, 1, 3, 4)
    assert m["sensitivity"] == m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(0.5) and m["fpr"] == pytest.approx(0.5)
    assert m["ppv"] == m["precision"] == pytest.approx(0.5)
    assert m["npv"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))


def test_binary_metrics_undefined_rates_are_none():
    m = binary_metrics([1, 0, 0], [0.1, 0.2, 0.3], 0.5)  # nothing called positive
    assert m["ppv"] is None and m["tp"] == 0 and m["f1"] == 0.0
    neg_only = binary_metrics([0, 0], [0.1, 0.9], 0.5)
    assert neg_only["sensitivity"] is None and neg_only["f1"] == 0.0 and neg_only["fpr"] == 0.5
    nothing = binary_metrics([0, 0], [0.1, 0.2], 0.5)  # no positives and none called: F1 is 0/0
    assert nothing["f1"] is None and nothing["ppv"] is None and nothing["npv"] == 1.0


@pytest.mark.parametrize(
    "y, s, field",
    [([0, 2, 1], [0.1, 0.2, 0.3], "labels"), ([0, np.nan, 1], [0.1, 0.2, 0.3], "labels"),
     ([0, 1], [0.1, 0.2, 0.3], "scores"), ([0, 1, 1], [0.1, np.inf, 0.3], "scores")],
)  # fmt: skip
def test_bad_input_is_invalid_input_naming_the_field(y, s, field):
    with pytest.raises(InvalidInput) as err:
        delong_ci(y, s)
    assert err.value.field == field and err.value.exit_code == 2
