"""Operating points: the optimisers against brute force, the floors' guarantees against simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import norm

from cxr.errors import InvalidInput
from cxr.stats import binary_metrics
from cxr.thresholds import (
    GOALS,
    choose_for_false_negatives,
    choose_for_false_positives,
    choose_operating_point,
    f1_optimal,
    precision_floor,
    recall_floor,
    tradeoff_table,
    youden,
)
from policies import CALIBRATION_METHODS


def _binormal(rng, m, n, mu=1.5):
    y = np.r_[np.ones(m), np.zeros(n)]
    return y, rng.normal(size=m + n) + mu * y


def _slack(p, n):
    return 3 * math.sqrt(p * (1 - p) / n)


def test_youden_and_f1_match_brute_force_over_every_threshold():
    rng = np.random.default_rng(0)
    y, s = _binormal(rng, 50, 150, mu=1.0)
    s = np.round(s, 1)  # ties
    rows = [binary_metrics(y, s, t) for t in np.unique(s)]
    best_j = max(r["recall"] + r["specificity"] - 1 for r in rows)
    best_f1 = max(r["f1"] for r in rows)
    yj, f1 = youden(y, s), f1_optimal(y, s)
    assert yj.recall + yj.specificity - 1 == pytest.approx(best_j)
    assert f1.f1 == pytest.approx(best_f1)
    # ties broken towards the highest threshold
    assert yj.threshold == max(r["threshold"] for r in rows if r["recall"] + r["specificity"] - 1 == best_j)
    assert yj.guarantee is None and yj.feasible and f1.n_pos == 50 and f1.n_neg == 150


def test_optimisers_are_infeasible_not_crashing_on_one_class():
    assert not youden(np.zeros(5), np.arange(5.0)).feasible
    op = f1_optimal(np.zeros(5), np.arange(5.0))
    assert not op.feasible and op.threshold is None and op.reason == "no positive cases"


def test_recall_floor_is_the_binomial_order_statistic():
    rng = np.random.default_rng(1)
    y, s = _binormal(rng, 100, 100)
    op = recall_floor(y, s, 0.9, 0.05)
    pos = np.sort(s[y == 1])
    k = int(np.flatnonzero(pos == op.threshold)[0]) + 1
    # k is the largest order statistic whose miss probability is controlled at delta
    from scipy.stats import binom

    assert binom.cdf(k - 1, 100, 0.1) <= 0.05 < binom.cdf(k, 100, 0.1)
    assert op.recall == pytest.approx(1 - (k - 1) / 100)
    assert "0.95" in op.guarantee and op.feasible


def test_recall_floor_needs_enough_positives_and_says_how_many():
    y = np.r_[np.ones(28), np.zeros(10)]
    op = recall_floor(y, np.arange(38.0), 0.9, 0.05)
    assert not op.feasible and "need at least 29" in op.reason  # 0.9**29 < 0.05 < 0.9**28
    assert recall_floor(np.r_[np.ones(29), np.zeros(3)], np.arange(32.0), 0.9, 0.05).feasible


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5])
def test_recall_floor_rejects_rates_outside_the_open_unit_interval(bad):
    with pytest.raises(InvalidInput) as err:
        recall_floor([1, 0], [0.5, 0.1], bad, 0.05)
    assert err.value.field == "min_recall"


@pytest.mark.parametrize("discrete", [False, True])
def test_recall_floor_guarantee_holds_over_500_calibration_draws(discrete):
    """P(population recall < floor) <= delta (+ sampling slack), for continuous and heavily tied scores."""
    rng = np.random.default_rng(2 + discrete)
    floor, delta, mu, splits = 0.9, 0.1, 1.5, 500
    population, on_test = [], []
    for _ in range(splits):
        y, s = _binormal(rng, 80, 240, mu)
        test = rng.normal(size=4000) + mu
        if discrete:
            s, test = np.round(s), np.round(test)
        t = recall_floor(y, s, floor, delta).threshold
        # exact recall of `score >= t` on the score distribution of positives
        population.append(norm.sf((t - 0.5 if discrete else t) - mu))
        on_test.append(np.mean(test >= t))
    population, on_test = np.array(population), np.array(on_test)
    assert np.mean(population < floor) <= delta + _slack(delta, splits)
    assert np.mean(on_test < floor) <= delta + _slack(delta, splits) + 0.02  # 4,000 test positives add a little noise
    if not discrete:  # the bound is tight, not vacuous: violations do happen, and recall sits near the floor
        assert np.mean(population < floor) >= 0.03
        assert np.median(population) < floor + 0.06


def _population_precision(t, prevalence, mu):
    z = logit(t)
    tp, fp = prevalence * norm.sf(z - mu), (1 - prevalence) * norm.sf(z)
    return tp / (tp + fp)


def test_precision_floor_guarantee_holds_over_300_calibration_draws():
    rng = np.random.default_rng(4)
    floor, delta, prevalence, mu, splits = 0.7, 0.1, 0.2, 2.0, 300
    achieved = []
    for _ in range(splits):
        y = (rng.random(500) < prevalence).astype(float)
        s = expit(rng.normal(size=500) + mu * y)
        op = precision_floor(y, s, floor, delta)
        if op.feasible:
            assert op.precision >= floor  # certified points also look fine on the calibration data
            achieved.append(_population_precision(op.threshold, prevalence, mu))
    assert len(achieved) >= splits // 2  # usually feasible: the fallback is not stuck at the sparse top
    assert np.mean(np.array(achieved) < floor) <= delta + _slack(delta, splits)


def test_precision_floor_is_infeasible_with_a_reason_when_nothing_certifies():
    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.1).astype(float)
    s = rng.random(300)  # a useless scorer: precision ~ prevalence everywhere
    op = precision_floor(y, s, 0.8, 0.05)
    assert not op.feasible and op.threshold is None and "no threshold certified" in op.reason


def test_precision_floor_needs_a_grid_for_scores_that_are_not_probabilities():
    y = np.r_[np.ones(50), np.zeros(50)]
    s = np.r_[np.full(50, 5.0), np.full(50, -5.0)]
    with pytest.raises(InvalidInput) as err:
        precision_floor(y, s, 0.8, 0.05)
    assert err.value.field == "grid"
    op = precision_floor(y, s, 0.8, 0.05, grid=[10.0, 0.0, -10.0])
    assert op.threshold == 0.0 and op.precision == 1.0


def test_false_positive_chooser_meets_the_fpr_target_within_the_recall_guarantee():
    rng = np.random.default_rng(6)
    y, s = _binormal(rng, 150, 600, mu=3.0)
    op = choose_for_false_positives(y, s, max_fpr=0.1, min_recall=0.8, delta=0.05)
    assert op.feasible and op.fpr <= 0.1
    assert op.threshold <= recall_floor(y, s, 0.8, 0.05).threshold  # so the recall guarantee still holds
    # it is the lowest such threshold: one step lower breaks the FPR target
    lower = np.max(s[s < op.threshold])
    assert binary_metrics(y, s, lower)["fpr"] > 0.1
    certified = choose_for_false_positives(y, s, 0.1, 0.8, 0.05, fpr_delta=0.05)
    assert certified.threshold >= op.threshold and "FPR on new i.i.d. data" in certified.guarantee


def test_false_positive_chooser_is_infeasible_with_the_numbers_when_the_classes_overlap():
    rng = np.random.default_rng(7)
    y, s = _binormal(rng, 150, 600, mu=0.8)
    op = choose_for_false_positives(y, s, max_fpr=0.05, min_recall=0.9, delta=0.05)
    assert not op.feasible and op.threshold is None
    assert "FPR <= 0.05 needs threshold >=" in op.reason and "allows at most" in op.reason


def test_false_negative_chooser_keeps_recall_and_a_certified_precision_floor():
    rng = np.random.default_rng(8)
    y = np.r_[np.ones(200), np.zeros(400)]
    s = expit(rng.normal(size=600) + 3.0 * y - 1.0)
    op = choose_for_false_negatives(y, s, min_recall=0.8, delta=0.05, min_precision=0.6)
    t_rec = recall_floor(y, s, 0.8, 0.05).threshold
    assert op.feasible and op.threshold <= t_rec and op.precision >= 0.6
    assert "recall" in op.guarantee and "precision" in op.guarantee
    plain = choose_for_false_negatives(y, s, min_recall=0.8, delta=0.05)
    assert plain.threshold == t_rec
    hopeless = choose_for_false_negatives(y, s, min_recall=0.8, delta=0.05, min_precision=0.99)
    assert not hopeless.feasible and "precision >= 0.99 is certified for" in hopeless.reason


def _cardiomegaly(rng):
    """Rare finding, confident model: at 0.5 only sure cases are called (precision 1.0)."""
    y = np.r_[np.ones(40), np.zeros(1500)]
    s = np.r_[expit(rng.normal(0.0, 1.5, 40)), expit(rng.normal(-3.0, 1.0, 1500))]
    s[y == 0] = np.minimum(s[y == 0], 0.45)
    return y, s


def test_youden_on_a_rare_finding_is_flagged_not_silent():
    rng = np.random.default_rng(9)
    y, s = _cardiomegaly(rng)
    assert binary_metrics(y, s, 0.5)["precision"] == 1.0
    op, warnings = choose_operating_point(y, s, 0.5, "youden", max_precision_drop=0.2)
    assert op.precision < 0.5
    assert len(warnings) == 1 and "precision falls 1.00 ->" in warnings[0] and "allowed drop 0.20" in warnings[0]
    _, quiet = choose_operating_point(y, s, 0.5, "youden", max_precision_drop=1.0)
    assert quiet == []


def test_choose_operating_point_routes_goals_and_names_missing_parameters():
    rng = np.random.default_rng(10)
    y, s = _cardiomegaly(rng)
    op, _ = choose_operating_point(y, s, 0.5, "recall_floor", min_recall=0.7, delta=0.1)
    assert op.method == "recall_floor" and op.feasible
    op, warnings = choose_operating_point(y, s, 0.5, "false_positives", max_fpr=0.001, min_recall=0.95)
    assert not op.feasible and warnings[0].startswith("false_positives: infeasible")
    with pytest.raises(InvalidInput) as err:
        choose_operating_point(y, s, 0.5, "precision_floor")
    assert err.value.field == "min_precision"
    with pytest.raises(InvalidInput) as err:
        choose_operating_point(y, s, 0.5, "magic")
    assert err.value.field == "goal"


def test_tradeoff_table_reports_changes_against_the_current_threshold():
    rng = np.random.default_rng(11)
    y, s = _cardiomegaly(rng)
    yj = youden(y, s)
    rows = tradeoff_table(y, s, {"current": 0.5, "youden": yj, "f1": f1_optimal(y, s), "none": None})
    assert [r["method"] for r in rows] == ["current", "youden", "f1", "none"]
    assert rows[0]["precision_change"] == 0.0
    assert rows[1]["threshold"] == yj.threshold
    assert rows[1]["precision_change"] == pytest.approx(yj.precision - 1.0)
    assert rows[1]["recall_change"] > 0
    assert rows[3]["precision"] is None and rows[3]["recall_change"] is None


def test_the_policy_lists_exactly_the_goals_this_module_implements():
    assert set(CALIBRATION_METHODS) == set(GOALS)
