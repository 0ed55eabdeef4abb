"""Coverage of the thresholds' promises on new data, by simulation from known score distributions.

`choose_for_false_positives(..., fpr_delta=d)` promises P_cal[FPR on new data <= max_fpr] >= 1 - d and
`choose_for_false_negatives` promises P_cal[recall on new data >= min_recall] >= 1 - delta. Negatives
score N(0, 1) and positives N(MU, 1), so the population FPR and recall of any threshold are exact normal
tails: "new data" is the whole population, with no test-set noise. Over DRAWS calibration sets the
number of violations is Binomial(DRAWS, p) with p the true violation probability; for continuous scores
p is exactly P(Binomial(n, rate) <= k - 1) at the order statistic k the documented rule picks (derived
here with scipy, not read from the module), and with ties it can only be smaller. Every band is that
binomial's central 1 - 2e-5 range (a correct implementation fails it with probability 2e-5 per
check; the seeds are fixed). The plain empirical quantile, the threshold that only meets the target on
the calibration data, violates the FPR target in about half the draws and fails the same check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from cxr.thresholds import choose_for_false_negatives, choose_for_false_positives

DRAWS = 1000
N_NEG, N_POS, MU = 60, 40, 5.0
MAX_FPR, FPR_DELTA = 0.1, 0.1
MIN_RECALL, DELTA = 0.8, 0.05
STEP = 0.25  # the tied variant rounds every score to this grid
FALSE_ALARM = 1e-5


def _k(n: int, rate: float, delta: float) -> int:
    """The order statistic of the documented rule: largest k with P(Binomial(n, rate) <= k - 1) <= delta."""
    return max(k for k in range(n + 1) if k == 0 or binom.cdf(k - 1, n, rate) <= delta)


def _band(p: float) -> tuple[float, float]:
    return binom.ppf(FALSE_ALARM, DRAWS, p), binom.ppf(1 - FALSE_ALARM, DRAWS, p)


def _tail_at_or_above(t: np.ndarray, mean: float, tied: bool) -> np.ndarray:
    """Population P(score >= t) for N(mean, 1) scores, rounded to the STEP grid when `tied`."""
    if not tied:
        return norm.sf(t - mean)
    first = np.ceil(t / STEP) * STEP  # the lowest grid value that is >= t
    return norm.sf(first - STEP / 2 - mean)  # round(X / STEP) * STEP >= first  <=>  X >= first - STEP / 2


@pytest.fixture(scope="module", params=[False, True], ids=["continuous", "tied"])
def draws(request):
    """DRAWS calibration sets; the thresholds both choosers pick on each, and a plain empirical quantile."""
    tied = request.param
    rng = np.random.default_rng(20 + tied)
    neg = rng.normal(size=(DRAWS, N_NEG))
    pos = rng.normal(size=(DRAWS, N_POS)) + MU
    if tied:
        neg, pos = np.round(neg / STEP) * STEP, np.round(pos / STEP) * STEP
    y = np.r_[np.ones(N_POS), np.zeros(N_NEG)]
    t_fp, t_fn = np.empty(DRAWS), np.empty(DRAWS)
    for i in range(DRAWS):
        s = np.r_[pos[i], neg[i]]
        fp = choose_for_false_positives(y, s, MAX_FPR, MIN_RECALL, DELTA, fpr_delta=FPR_DELTA)
        fn = choose_for_false_negatives(y, s, MIN_RECALL, DELTA)
        assert fp.feasible and fn.feasible, (fp.reason, fn.reason)
        t_fp[i], t_fn[i] = fp.threshold, fn.threshold
    # the plain empirical quantile: the lowest threshold with calibration FPR <= MAX_FPR
    k0 = math.floor(MAX_FPR * N_NEG)
    desc = -np.sort(-neg, axis=1)
    t_naive = np.nextafter(desc[:, k0], np.inf)
    return tied, neg, pos, t_fp, t_fn, t_naive


def test_the_fpr_guarantee_holds_in_at_least_1_minus_delta_of_draws(draws):
    tied, neg, _, t_fp, _, t_naive = draws
    fpr = _tail_at_or_above(t_fp, 0.0, tied)
    violations = int(np.count_nonzero(fpr > MAX_FPR))
    p_exact = binom.cdf(_k(N_NEG, MAX_FPR, FPR_DELTA) - 1, N_NEG, MAX_FPR)  # 0.053 here, <= FPR_DELTA
    lo, hi = _band(p_exact)
    assert violations <= hi and violations <= _band(FPR_DELTA)[1]
    if not tied:  # continuous scores: exactly the rule's violation probability, not a vacuous bound
        assert lo <= violations
    # each threshold does what it says on its own calibration data too
    assert np.all((neg >= t_fp[:, None]).mean(axis=1) <= MAX_FPR)
    # a plain empirical quantile meets the target on the calibration data and misses it on new data
    naive = int(np.count_nonzero(_tail_at_or_above(t_naive, 0.0, tied) > MAX_FPR))
    assert np.all((neg >= t_naive[:, None]).mean(axis=1) <= MAX_FPR)
    assert naive > _band(FPR_DELTA)[1] and naive > 0.3 * DRAWS


def test_the_recall_floor_holds_in_at_least_1_minus_delta_of_draws(draws):
    tied, _, pos, t_fp, t_fn, _ = draws
    recall = _tail_at_or_above(t_fn, MU, tied)
    violations = int(np.count_nonzero(recall < MIN_RECALL))
    p_exact = binom.cdf(_k(N_POS, 1 - MIN_RECALL, DELTA) - 1, N_POS, 1 - MIN_RECALL)  # 0.043 here
    lo, hi = _band(p_exact)
    assert violations <= hi and violations <= _band(DELTA)[1]
    if not tied:
        assert lo <= violations
    # the false-positive chooser never goes above the recall floor's threshold: its recall is covered too
    assert np.all(t_fp <= t_fn)
    assert np.all((pos >= t_fn[:, None]).mean(axis=1) >= MIN_RECALL)
