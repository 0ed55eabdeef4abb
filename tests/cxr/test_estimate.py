"""Label-free performance estimates (`cxr.estimate`), each checked against an independent computation.

* The formula E[TP]/E[P] and its kin against a brute-force Monte Carlo of the same probabilities, and
  against a two-point world small enough to do by hand.
* The interval and the contradiction p-value against the exact distribution of the realised recall and
  FPR, enumerated from two binomials (the map's error switched off: n_boot=0), with a case on each side
  of alpha, where a wrong statistic would flip the verdict.
* Coverage by simulation: negatives score Beta(2, 6), positives Beta(5, 2.5); at the calibration prevalence
  0.15, P(y | s) is known in closed form. Windows draw their scores from another mix (positive-component
  share 0.05–0.40) and their labels from the SAME P(y | s): covariate shift without concept shift. The
  realised values and their Clopper–Pearson intervals are computed here (scipy's `binomtest`), never read
  from the module. With concept shift (labels from logit P(y | s) ± 1.5: readers calling the finding more
  or less often) the comparison must say the estimate cannot be trusted.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import beta as beta_dist
from scipy.stats import binom, binomtest
from sklearn.isotonic import IsotonicRegression

from cxr.errors import InvalidInput
from cxr.estimate import (
    CalibrationMap,
    EstimateLimits,
    check_against_labels,
    estimate,
    estimate_window,
    fit_calibration_map,
)

NEG, POS, PI0, T = (2.0, 6.0), (5.0, 2.5), 0.15, 0.5


def _p_true(s, shift=0.0):
    f1, f0 = beta_dist.pdf(s, *POS), beta_dist.pdf(s, *NEG)
    p = PI0 * f1 / (PI0 * f1 + (1 - PI0) * f0)
    return 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) + shift)))


def _scores(rng, n, mix):
    comp = rng.random(n) < mix
    return np.where(comp, rng.beta(*POS, n), rng.beta(*NEG, n))


def _world(rng, n, mix, shift=0.0):
    s = _scores(rng, n, mix)
    return s, (rng.random(n) < _p_true(s, shift)).astype(float)


def _two_point(n_boot=0):
    """Calibration: 8 studies at 0.2 (2 positive), 8 at 0.8 (6 positive): m = 0.25 and 0.75 there."""
    s = np.r_[np.full(8, 0.2), np.full(8, 0.8)]
    y = np.r_[[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]].astype(float)
    return fit_calibration_map(s, y, n_boot=n_boot, seed=0)


# ---------------------------------------------------------------- the formula, by hand and by brute force


def test_hand_computed_two_point_example():
    cmap = _two_point()
    assert cmap([0.1, 0.2, 0.5, 0.8, 0.9]) == pytest.approx([0.25, 0.25, 0.5, 0.75, 0.75])
    s = np.r_[np.full(8, 0.2), np.full(12, 0.8)]  # p = 0.25 (not called) and 0.75 (called at t = 0.5)
    e = estimate(cmap, s, 0.5)
    # E[P] = 8(0.25) + 12(0.75) = 11, E[TP] = 9; E[N] = 6 + 3 = 9, E[FP] = 3
    assert e.valid and e.reason is None
    assert e.recall == pytest.approx(9 / 11)
    assert e.fpr == pytest.approx(3 / 9)
    assert e.prevalence == pytest.approx(11 / 20)
    assert e.positive_rate == pytest.approx(12 / 20)
    assert (e.expected_positives, e.expected_negatives) == pytest.approx((11.0, 9.0))


def test_expected_counts_match_brute_force_monte_carlo():
    rng = np.random.default_rng(3)
    cal_s, cal_y = _world(rng, 2000, PI0)
    cmap = fit_calibration_map(cal_s, cal_y, n_boot=0)
    s = _scores(rng, 150, 0.3)
    e = estimate(cmap, s, T)
    p, called = cmap(s), s >= T
    y = rng.random((200_000, s.size)) < p  # labels drawn here, from the same p_i
    tp, pos = (y & called).sum(1), y.sum(1)
    fp, neg = (~y & called).sum(1), s.size - pos
    se = 4 * np.sqrt(p.sum()) / 200_000**0.5  # generous: |mean - E| of counts in units of counts
    assert e.recall == pytest.approx(tp.mean() / pos.mean(), abs=se / pos.mean())
    assert e.fpr == pytest.approx(fp.mean() / neg.mean(), abs=se / neg.mean())
    assert e.prevalence == pytest.approx(pos.mean() / s.size, abs=se / s.size)
    assert e.positive_rate == called.mean()


# ----------------------------------------------------- interval and p-value against the exact distribution

N_CALLED, N_NOT = 24, 16  # window: 24 studies at 0.8 (p = 0.75, called), 16 at 0.2 (p = 0.25, not called)
EXACT_DRAWS = 40_000


def _exact():
    """Joint law of (TP, FN) = (Bin(24, .75), Bin(16, .25)); recall and FPR on their defined support."""
    k1, k0 = np.meshgrid(np.arange(N_CALLED + 1), np.arange(N_NOT + 1), indexing="ij")
    w = binom.pmf(k1, N_CALLED, 0.75) * binom.pmf(k0, N_NOT, 0.25)
    pos, neg = k1 + k0, (N_CALLED - k1) + (N_NOT - k0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall, fpr = k1 / pos, (N_CALLED - k1) / neg
    return k1, k0, w, {"recall": (recall, pos > 0), "fpr": (fpr, neg > 0)}


def _law(values, ok, w):
    v, p = values[ok], w[ok] / w[ok].sum()
    return v, p


def _exact_p(values, ok, w, r):
    v, p = _law(values, ok, w)
    return min(1.0, 2 * min(p[v <= r + 1e-12].sum(), p[v >= r - 1e-12].sum()))


def _window_two_point():
    return np.r_[np.full(N_CALLED, 0.8), np.full(N_NOT, 0.2)]


def test_interval_endpoints_are_exact_quantiles_without_map_error():
    e = estimate(_two_point(), _window_two_point(), 0.5, n_draws=EXACT_DRAWS)
    assert e.n_boot == 0 and e.n_draws == EXACT_DRAWS
    _, _, w, laws = _exact()
    tol = 4 * np.sqrt(0.025 * 0.975 / EXACT_DRAWS)
    for metric, ci in (("recall", e.recall_ci), ("fpr", e.fpr_ci)):
        v, p = _law(*laws[metric], w)
        for q, end in ((0.025, ci[0]), (0.975, ci[1])):
            # inverted CDF: `end` is a value the metric takes, with P(R < end) <= q <= P(R <= end)
            assert np.isclose(v, end).any(), (metric, end)
            assert p[v < end - 1e-12].sum() <= q + tol, (metric, q, end)
            assert p[v <= end + 1e-12].sum() >= q - tol, (metric, q, end)


def _labels(k1, k0):
    return np.r_[np.ones(k1), np.zeros(N_CALLED - k1), np.ones(k0), np.zeros(N_NOT - k0)]


def test_contradiction_verdict_matches_exact_test_on_both_sides_of_alpha():
    k1, k0, w, laws = _exact()
    adj = np.ones_like(w)
    for i in np.ndindex(w.shape):
        pr = _exact_p(*laws["recall"], w, laws["recall"][0][i]) if laws["recall"][1][i] else 1.0
        pf = _exact_p(*laws["fpr"], w, laws["fpr"][0][i]) if laws["fpr"][1][i] else 1.0
        adj[i] = min(1.0, 2 * min(pr, pf))
    below = np.argwhere((adj > 0.02) & (adj < 0.045))  # contradicted at alpha = 0.05, not by much
    above = np.argwhere((adj > 0.055) & (adj < 0.09))  # consistent, not by much
    assert below.size and above.size
    cmap = _two_point()
    for cells, expect in ((below[:3], True), (above[:3], False)):
        for i, j in cells:
            c = check_against_labels(cmap, _window_two_point(), _labels(k1[i, j], k0[i, j]), 0.5,
                                     n_draws=EXACT_DRAWS)
            assert c.p_value == pytest.approx(adj[i, j], abs=0.01)
            assert c.contradicted is expect, (k1[i, j], k0[i, j], adj[i, j], c.p_value)
            assert c.recall.realised == pytest.approx(k1[i, j] / (k1[i, j] + k0[i, j]))
            assert c.recall.error == pytest.approx(c.recall.estimate - c.recall.realised)


# ------------------------------------------------------------------------------- coverage by simulation

N_SETS, PER_SET, N_WIN = 6, 50, 200


@pytest.fixture(scope="module")
def coverage():
    """Per (calibration set, window): realised recall/FPR in the estimate's interval, estimate in CP interval."""
    rng = np.random.default_rng(20240)
    out = {"in_est": {"recall": [], "fpr": []}, "in_cp": {"recall": [], "fpr": []}, "contradicted": [], "n": 0}
    for k in range(N_SETS):
        cal_s, cal_y = _world(rng, 3000, PI0)
        cmap = fit_calibration_map(cal_s, cal_y, seed=k)
        for w in range(PER_SET):
            s, y = _world(rng, N_WIN, rng.uniform(0.05, 0.40))
            out["n"] += 1
            c = check_against_labels(cmap, s, y, T, seed=w)
            if not c.estimate.valid:
                continue
            out["contradicted"].append(c.contradicted)
            called, pos = s >= T, y == 1
            for metric, k_, n_ in (("recall", (called & pos).sum(), pos.sum()),
                                   ("fpr", (called & ~pos).sum(), (~pos).sum())):
                est, ci = getattr(c.estimate, metric), getattr(c.estimate, f"{metric}_ci")
                realised = k_ / n_
                cp = binomtest(int(k_), int(n_)).proportion_ci(0.95, method="exact")
                out["in_est"][metric].append(ci[0] <= realised <= ci[1])
                out["in_cp"][metric].append(cp.low <= est <= cp.high)
    return out


@pytest.mark.parametrize("metric", ["recall", "fpr"])
def test_realised_value_falls_in_the_estimates_interval(coverage, metric):
    hits = coverage["in_est"][metric]
    assert len(hits) >= 0.95 * coverage["n"]  # almost every window is valid: this is not bought by refusing
    assert np.mean(hits) >= 0.90


@pytest.mark.parametrize("metric", ["recall", "fpr"])
def test_estimate_falls_in_the_realised_clopper_pearson_interval(coverage, metric):
    assert np.mean(coverage["in_cp"][metric]) >= 0.90  # the acceptance criterion


def test_no_concept_shift_is_rarely_called_contradicted(coverage):
    assert np.mean(coverage["contradicted"]) <= 0.10


@pytest.mark.parametrize("shift", [1.5, -1.5])
def test_concept_shift_is_called_contradicted_in_most_windows(shift):
    rng = np.random.default_rng(77)
    cal_s, cal_y = _world(rng, 3000, PI0)
    cmap = fit_calibration_map(cal_s, cal_y, seed=1)
    verdicts = []
    for w in range(60):
        s, y = _world(rng, N_WIN, rng.uniform(0.05, 0.40), shift=shift)
        c = check_against_labels(cmap, s, y, T, seed=w)
        assert c.estimate.valid  # the scores look like home: only the labels can tell
        verdicts.append(c.contradicted)
    assert np.mean(verdicts) >= 0.75  # measured 0.82–0.98 over seeds 1–6 at ±1.5


# --------------------------------------------------------------------------------------------- validity


@pytest.fixture(scope="module")
def world_map():
    rng = np.random.default_rng(5)
    cal_s, cal_y = _world(rng, 3000, PI0)
    return fit_calibration_map(cal_s, cal_y, n_boot=10, seed=0), rng


def test_ood_share_over_the_limit_is_not_valid(world_map):
    cmap, rng = world_map
    s = _scores(rng, 200, 0.3)
    ood = np.zeros(200, bool)
    ood[:30] = True  # 15 % > 10 %
    e = estimate(cmap, s, T, ood=ood)
    assert not e.valid and "out of distribution" in e.reason
    assert e.recall is None and e.fpr_ci is None and e.ood_share == pytest.approx(0.15)
    assert estimate(cmap, s, T, ood=ood, limits=EstimateLimits(max_ood_share=0.2)).valid
    ood[20:] = False  # 10 %: not over the limit
    assert estimate(cmap, s, T, ood=ood).valid


def test_scores_outside_the_calibration_range_are_not_valid():
    rng = np.random.default_rng(8)
    cal_s = rng.uniform(0.0, 0.6, 2000)
    cmap = fit_calibration_map(cal_s, (rng.random(2000) < cal_s).astype(float), n_boot=0)
    s = np.r_[rng.uniform(0.1, 0.5, 150), np.full(50, 0.9)]  # a quarter above the calibration maximum
    e = estimate(cmap, s, 0.3)
    assert not e.valid and "outside the calibration support" in e.reason
    assert e.unsupported_share == pytest.approx(0.25)


def test_scores_in_a_sparse_region_count_as_unsupported():
    rng = np.random.default_rng(9)
    cal_s = np.r_[rng.uniform(0.0, 0.3, 1000), rng.uniform(0.7, 1.0, 1000), 0.5, 0.51]  # a gap with two studies
    cmap = fit_calibration_map(cal_s, (rng.random(cal_s.size) < cal_s).astype(float), n_boot=0)
    s = np.r_[rng.uniform(0.05, 0.25, 80), rng.uniform(0.75, 0.95, 80), rng.uniform(0.45, 0.55, 40)]
    e = estimate(cmap, s, 0.6)
    h = 0.02 * (cal_s.max() - cal_s.min())
    brute = np.array([np.sum(np.abs(cal_s - x) <= h) < 5 for x in s])  # counted by hand, study by study
    assert e.unsupported_share == pytest.approx(brute.mean())
    assert brute[-40:].all() and not brute[:160].any()
    assert not e.valid and "outside the calibration support" in e.reason


def test_too_few_expected_positives_is_not_valid(world_map):
    cmap, rng = world_map
    s = rng.beta(*NEG, 60) * 0.5  # low scores: a handful of expected positives
    e = estimate(cmap, s, T)
    assert e.expected_positives < 5 and not e.valid and "expected positives" in e.reason
    assert e.positive_rate == 0.0  # the facts that explain the refusal are still given


def test_every_failing_rule_is_named(world_map):
    cmap, rng = world_map
    s = rng.beta(*NEG, 40) * 0.5
    e = estimate(cmap, s, T, ood=np.ones(40, bool))
    assert "out of distribution" in e.reason and "expected positives" in e.reason


def test_empty_window_is_not_valid(world_map):
    e = estimate(world_map[0], [], T)
    assert not e.valid and e.n == 0 and "no studies" in e.reason and e.positive_rate is None


# ------------------------------------------------------------------------------------ degenerate inputs


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_calibration_labels_of_one_class_are_refused(label):
    with pytest.raises(InvalidInput, match=r"all (negative|positive)"):
        fit_calibration_map([0.1, 0.5, 0.9], [label, label, np.nan])


def test_unknown_calibration_labels_are_ignored():
    rng = np.random.default_rng(11)
    s, y = _world(rng, 500, PI0)
    y_unknown = y.copy()
    y_unknown[::7] = np.nan
    s_nan = s.copy()
    s_nan[::14] = np.nan  # a score with no label is dropped with its label, NaN or not
    a = fit_calibration_map(s_nan, y_unknown, n_boot=3, seed=2)
    keep = ~np.isnan(y_unknown)
    b = fit_calibration_map(s[keep], y[keep], n_boot=3, seed=2)
    assert np.array_equal(a.knots_x, b.knots_x) and np.array_equal(a.knots_y, b.knots_y)
    assert (a.n_pos, a.n_neg) == (int(y[keep].sum()), int((y[keep] == 0).sum()))


@pytest.mark.parametrize("scores, labels, field", [
    ([0.1, np.nan, 0.9], [0, 1, 1], "scores"),
    ([0.1, 0.5, 0.9], [0, 2, 1], "labels"),
    ([0.1, 0.5], [0, 1, 1], "labels"),
])
def test_bad_calibration_input_names_the_field(scores, labels, field):
    with pytest.raises(InvalidInput) as err:
        fit_calibration_map(scores, labels)
    assert err.value.field == field


def test_nan_window_scores_and_bad_flags_are_refused(world_map):
    cmap = world_map[0]
    with pytest.raises(InvalidInput) as err:
        estimate(cmap, [0.2, np.nan, 0.7], T)
    assert err.value.field == "scores"
    with pytest.raises(InvalidInput) as err:
        estimate(cmap, [0.2, 0.7], T, ood=[True])
    assert err.value.field == "ood"
    with pytest.raises(InvalidInput):
        estimate(cmap, [0.2, 0.7], float("nan"))
    with pytest.raises(InvalidInput) as err:
        check_against_labels(cmap, [0.2, 0.7], [0, 0.5], T)
    assert err.value.field == "labels"


# ------------------------------------------------------------------------------ serialisation, API shape


def test_map_round_trips_through_plain_arrays_and_npz(world_map):
    cmap = world_map[0]
    arrays = cmap.to_arrays()
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # what a blob store holds
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        back = CalibrationMap.from_arrays(dict(npz))
    grid = np.linspace(-0.1, 1.1, 301)
    assert np.array_equal(back(grid), cmap(grid))
    assert len(back.boot) == len(cmap.boot) == 10
    s = np.random.default_rng(1).beta(*POS, 100)
    assert estimate(back, s, T, seed=4) == estimate(cmap, s, T, seed=4)
    broken = dict(arrays, boot_offsets=arrays["boot_offsets"][:-1])
    with pytest.raises(InvalidInput):
        CalibrationMap.from_arrays(broken)
    with pytest.raises(InvalidInput):
        CalibrationMap.from_arrays({k: v for k, v in arrays.items() if k != "support"})
    with pytest.raises(InvalidInput):  # np.interp needs increasing knots: a shuffled blob must not load
        CalibrationMap.from_arrays(dict(arrays, knots_x=arrays["knots_x"][::-1].copy()))


def test_knots_reproduce_the_fitted_isotonic_predictions():
    rng = np.random.default_rng(12)
    s, y = _world(rng, 800, PI0)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(s, y)
    grid = np.linspace(-0.2, 1.2, 500)
    assert fit_calibration_map(s, y, n_boot=0)(grid) == pytest.approx(iso.predict(grid), abs=1e-12)


def test_window_is_worst_first_and_each_pathology_keeps_its_own_stream(world_map):
    cmap, rng = world_map
    s = {"A": _scores(rng, 200, 0.3), "B": _scores(rng, 200, 0.3), "C": _scores(rng, 200, 0.3),
         "D": rng.beta(*NEG, 50) * 0.4}
    thresholds = {"A": 0.5, "B": 0.7, "C": 0.4, "D": 0.5}  # B: higher threshold, lower recall
    targets = {"A": SimpleNamespace(min_recall=0.8, max_fpr=0.2), "B": SimpleNamespace(min_recall=0.8, max_fpr=None),
               "D": SimpleNamespace(min_recall=0.8, max_fpr=0.2)}
    out = estimate_window({k: cmap for k in s}, s, thresholds, targets=targets, seed=3)
    by = {e.pathology: e for e in out}
    assert [e.pathology for e in out][-1] == "D" and not by["D"].valid  # not valid: last
    assert by["A"].shortfall == pytest.approx(max(0.8 - by["A"].recall, by["A"].fpr - 0.2))
    assert by["B"].shortfall == pytest.approx(0.8 - by["B"].recall) and by["C"].shortfall is None
    with_target = sorted(["A", "B"], key=lambda k: -by[k].shortfall)
    assert [e.pathology for e in out] == [*with_target, "C", "D"]
    alone = estimate(cmap, s["B"], 0.7, pathology="B", target=targets["B"], seed=3)
    assert alone == by["B"]
    with pytest.raises(InvalidInput) as err:
        estimate_window({"A": cmap}, s, thresholds)
    assert err.value.field == "B"


def test_check_uses_only_the_labelled_studies(world_map):
    cmap, rng = world_map
    s, y = _world(rng, 300, 0.3)
    y_part = y.copy()
    y_part[::3] = np.nan
    c = check_against_labels(cmap, s, y_part, T, pathology="X", seed=2)
    known = ~np.isnan(y_part)
    assert c.n_labelled == known.sum()
    assert c.estimate == estimate(cmap, s[known], T, pathology="X", seed=2)
    pos, called = y_part[known] == 1, s[known] >= T
    assert (c.recall.k, c.recall.n) == ((pos & called).sum(), pos.sum())
    assert (c.fpr.k, c.fpr.n) == ((~pos & called).sum(), (~pos).sum())
    cp = binomtest(int(c.fpr.k), int(c.fpr.n)).proportion_ci(0.95, method="exact")
    assert c.fpr.realised_ci == pytest.approx((cp.low, cp.high))


def test_check_without_positive_labels_says_so(world_map):
    cmap, rng = world_map
    s = _scores(rng, 200, 0.3)
    c = check_against_labels(cmap, s, np.zeros(200), T)
    assert c.recall is None and c.fpr is not None and "no realised recall" in c.reason
    assert c.p_value == pytest.approx(min(1.0, c.fpr.p_value))  # one metric: no Bonferroni factor
