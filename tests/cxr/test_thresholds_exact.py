"""Operating points on small hand-built cases: exact binomial p-values, order statistics at their
boundaries, the fallback procedure's carried level, the router and every message a user reads.

Expected numbers come from the documented rules worked by hand or with scipy's binomial (never from
`cxr.thresholds` itself). Several cases sit exactly on a boundary (a p-value equal to its level, a
binomial tail equal to delta, a precision drop equal to its bound), where `<` and `<=` part ways.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import binom, binomtest

from cxr.errors import InvalidInput
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


def _data(pos, neg):
    """Labels and scores: the given positive scores, then the negative ones."""
    return np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[np.asarray(pos, float), np.asarray(neg, float)]


def _binormal(seed=0, m=150, n=600, mu=2.5):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(m), np.zeros(n)]
    return y, expit(rng.normal(size=m + n) + mu * y - 1.0)


# -- the router -------------------------------------------------------------------------------------
def test_every_goal_reaches_its_chooser_with_every_parameter():
    y, s = _binormal()
    grid = np.linspace(0.95, 0.05, 19)  # not the default grid, and a delta that is not the default either
    kw = dict(min_precision=0.6, min_recall=0.8, max_fpr=0.2, delta=0.1, grid=grid)
    direct = {
        "youden": youden(y, s),
        "f1": f1_optimal(y, s),
        "precision_floor": precision_floor(y, s, 0.6, 0.1, grid=grid),
        "recall_floor": recall_floor(y, s, 0.8, 0.1),
        "false_positives": choose_for_false_positives(y, s, 0.2, 0.8, 0.1),
        "false_negatives": choose_for_false_negatives(y, s, 0.8, 0.1, min_precision=0.6, grid=grid),
    }
    assert set(direct) == set(GOALS)
    for goal, expected in direct.items():
        point, _ = choose_operating_point(y, s, None, goal, **kw)
        assert point == expected and point.method == goal and point.feasible, goal
    assert choose_operating_point(y, s, None)[0] == direct["f1"]  # the default goal
    # the parameters matter: each of these differs from the call with the defaults
    assert direct["precision_floor"] != precision_floor(y, s, 0.6, 0.05)
    assert direct["false_negatives"] != choose_for_false_negatives(y, s, 0.8, 0.1)
    assert direct["recall_floor"] != recall_floor(y, s, 0.8, 0.05)


@pytest.mark.parametrize(
    "goal, given, missing",
    [
        ("precision_floor", {}, "min_precision"),
        ("recall_floor", {}, "min_recall"),
        ("false_positives", {"min_recall": 0.8}, "max_fpr"),
        ("false_positives", {"max_fpr": 0.2}, "min_recall"),
        ("false_negatives", {"min_precision": 0.5}, "min_recall"),
    ],
)
def test_a_missing_parameter_is_named(goal, given, missing):
    y, s = _binormal()
    with pytest.raises(InvalidInput) as err:
        choose_operating_point(y, s, None, goal, **given)
    assert err.value.field == missing and str(err.value) == f"{missing}: goal {goal!r} needs {missing}"


def test_an_unknown_goal_lists_the_known_ones():
    y, s = _binormal()
    with pytest.raises(InvalidInput) as err:
        choose_operating_point(y, s, None, "magic")
    assert str(err.value) == "goal: unknown goal 'magic'; expected one of " + ", ".join(GOALS)


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda y, s: recall_floor(y, s, 1.5, 0.05), "min_recall"),
        (lambda y, s: recall_floor(y, s, 0.8, 1.5), "delta"),
        (lambda y, s: precision_floor(y, s, 1.5, 0.05), "min_precision"),
        (lambda y, s: precision_floor(y, s, 0.5, 1.5), "delta"),
        (lambda y, s: choose_for_false_positives(y, s, 1.5, 0.8, 0.05), "max_fpr"),
        (lambda y, s: choose_for_false_positives(y, s, 0.2, 0.8, 0.05, fpr_delta=1.5), "fpr_delta"),
        (lambda y, s: choose_for_false_negatives(y, s, 0.8, 0.05, min_precision=1.5), "min_precision"),
    ],
)
def test_a_rate_outside_the_open_unit_interval_is_named(call, field):
    y, s = _binormal()
    with pytest.raises(InvalidInput) as err:
        call(y, s)
    assert err.value.field == field and str(err.value) == f"{field}: must be strictly between 0 and 1, got 1.5"


# -- the optimisers ---------------------------------------------------------------------------------
def test_youden_weighs_the_false_positive_rate_by_the_negatives():
    # 0.8: recall 3/5, FPR 0 (J 0.6); 0.35: recall 1, FPR 5/10 (J 0.5). The best J is at 0.8.
    y, s = _data([0.9, 0.85, 0.8, 0.4, 0.35], [0.5] * 5 + [0.1] * 5)
    point = youden(y, s)
    assert (point.method, point.threshold, point.recall, point.fpr) == ("youden", 0.8, 0.6, 0.0)


def test_f1_can_be_best_at_the_lowest_score():
    # calling all four positive: F1 = 6/7; the next best (0.8): 4/5
    y, s = _data([0.9, 0.8, 0.1], [0.7])
    point = f1_optimal(y, s)
    assert (point.method, point.threshold, point.f1) == ("f1", 0.1, pytest.approx(6 / 7))


def test_infeasible_points_say_which_method_and_why_with_their_counts():
    only_neg = youden(np.zeros(5), np.arange(5.0))
    assert (only_neg.method, only_neg.feasible, only_neg.threshold) == ("youden", False, None)
    assert (only_neg.reason, only_neg.n_pos, only_neg.n_neg) == ("needs positive and negative cases", 0, 5)
    no_pos = f1_optimal(np.zeros(3), np.arange(3.0))
    assert (no_pos.method, no_pos.feasible, no_pos.reason, no_pos.n_neg) == ("f1", False, "no positive cases", 3)
    too_few = recall_floor(*_data([0.9] * 3, [0.1] * 4), 0.9, 0.05)
    assert (too_few.method, too_few.feasible, too_few.n_pos, too_few.n_neg) == ("recall_floor", False, 3, 4)


def test_tradeoff_table_without_a_current_entry_reports_no_changes():
    y, s = _binormal()
    rows = tradeoff_table(y, s, {"a": 0.5, "b": 0.7})
    assert [r["method"] for r in rows] == ["a", "b"] and all(r["precision_change"] is None for r in rows)


def test_an_operating_point_as_a_dict():
    y, s = _binormal()
    point = recall_floor(y, s, 0.8, 0.05)
    d = point.as_dict()
    assert d["method"] == "recall_floor" and d["threshold"] == point.threshold and d["feasible"] is True
    assert set(d) == {"method", "threshold", "precision", "recall", "specificity", "f1", "fpr", "n_pos", "n_neg",
                      "guarantee", "feasible", "reason"}  # fmt: skip


# -- the recall floor's order statistic -------------------------------------------------------------
def test_a_binomial_tail_exactly_at_delta_certifies_its_order_statistic():
    # 10 positives, recall 0.5: P(Binomial(10, 0.5) <= 2) = 56/1024. With delta exactly that, k = 3.
    delta = float(binom.cdf(2, 10, 0.5))
    assert delta == 56 / 1024
    y, s = _data(np.arange(1, 11) / 10, [0.05] * 5)
    point = recall_floor(y, s, 0.5, delta)
    assert point.threshold == 0.3 and point.recall == 0.8  # the 3rd smallest positive score
    confidence = 1 - 56 / 1024
    assert point.guarantee == (
        f"P_cal[recall on new i.i.d. data >= 0.5] >= {1 - delta:g} (achieved {confidence:.4f}); "
        "threshold = 3-th smallest of 10 calibration positive scores, exact binomial order-statistic bound"
    )
    assert recall_floor(y, s, 0.5, np.nextafter(delta, 0)).threshold == 0.2  # a hair less: k = 2


def test_one_positive_certifies_a_recall_at_most_delta_and_none_certifies_nothing():
    y, s = _data([0.7], [0.1, 0.2])
    assert recall_floor(y, s, 0.04, 0.05).threshold == 0.7  # P(Binomial(1, 0.96) <= 0) = 0.04 <= delta: k = 1
    assert not recall_floor(y, s, 0.06, 0.05).feasible
    none = recall_floor(np.zeros(3), np.arange(3.0), 0.9, 0.05)
    need = math.ceil(math.log(0.05) / math.log(0.9))  # 0.9 ** need <= 0.05
    assert none.reason == f"0 calibration positives cannot certify recall >= 0.9 at delta=0.05: need at least {need}"


# -- the precision floor: exact p-values and the fallback procedure ---------------------------------
def test_a_p_value_just_above_delta_is_not_certified_and_the_reason_gives_it():
    # 10 cases above 0.5, 8 positives: P(Binomial(10, 0.5) >= 8) = 56/1024 > 0.05
    y, s = _data([0.8] * 8, [0.8] * 2 + [0.2] * 5)
    p = binomtest(8, 10, 0.5, alternative="greater").pvalue
    assert p == pytest.approx(0.0546875)
    point = precision_floor(y, s, 0.5, 0.05, grid=[0.5])
    assert (point.method, point.feasible) == ("precision_floor", False)
    assert point.reason == (f"no threshold certified precision >= 0.5 at delta=0.05 "
                            f"(smallest p-value {p:.3g} over 1 thresholds, 8 positives)")  # fmt: skip
    assert precision_floor(y, s, 0.5, 0.06, grid=[0.5]).threshold == 0.5  # a level above the p-value certifies


def test_a_p_value_exactly_at_its_level_is_certified():
    y, s = _data([0.8] * 10, [0.2] * 5)  # 10 of 10 above 0.5: p = 2 ** -10
    assert binom.sf(9, 10, 0.5) == 2.0**-10
    point = precision_floor(y, s, 0.5, 2.0**-10, grid=[0.5])
    assert point.feasible and point.threshold == 0.5 and point.precision == 1.0


def test_a_single_case_above_the_threshold_has_the_exact_one_case_p_value():
    y, s = _data([0.9, 0.3], [0.2] * 4)  # one case above 0.8, a positive: p = P(Bernoulli(0.03) = 1) = 0.03
    assert precision_floor(y, s, 0.03, 0.05, grid=[0.8]).threshold == 0.8
    assert not precision_floor(y, s, 0.06, 0.05, grid=[0.8]).feasible


def test_a_grid_above_every_score_certifies_nothing_with_p_value_one():
    y, s = _data([0.9], [0.1])
    point = precision_floor(y, s, 0.5, 0.05, grid=[2.0])
    assert point.reason.endswith("(smallest p-value 1 over 1 thresholds, 1 positives)")


def _fallback_case():
    """Thresholds 0.9, 0.7, 0.5, 0.3 (delta 0.4: 0.1 each) with exact p-values 0.0625, 0.145, 0.387, 0.132."""
    pos = [0.95] * 4 + [0.8] * 2 + [0.6] * 1 + [0.4] * 6
    neg = [0.8] * 2 + [0.6] * 3 + [0.4] * 2 + [0.1] * 10
    return _data(pos, neg)


def test_the_fallback_procedure_carries_a_certified_level_on_and_drops_it_after_a_failure():
    y, s = _fallback_case()
    p = [binomtest(k, n, 0.5, alternative="greater").pvalue for k, n in ((4, 4), (6, 8), (7, 12), (13, 20))]
    # 0.9: p <= 0.1, certified; 0.7: 0.1 < p <= 0.1 + 0.1 (the carried level), certified;
    # 0.5: p > 0.1 + 0.2, not; 0.3: p > 0.1 (nothing carried after a failure), not
    assert p[0] <= 0.1 < p[1] <= 0.2 < 0.3 < p[2] and 0.1 < p[3] <= 0.4
    for grid in ([0.9, 0.7, 0.5, 0.3], [0.3, 0.5, 0.7, 0.9]):  # tested high to low whatever the order given
        point = precision_floor(y, s, 0.5, 0.4, grid=grid)
        assert point.threshold == 0.7 and point.method == "precision_floor"
        assert point.guarantee == (
            "P_cal[precision P(Y=1 | score >= t) on new i.i.d. data >= 0.5] >= 0.6; "
            "Learn-then-Test, fallback fixed-sequence over 4 thresholds high to low, exact binomial p-values"
        )


@pytest.mark.parametrize("grid", [[], [0.5, float("nan")], [float("inf")], [0.5, None]])
def test_a_bad_grid_is_refused(grid):
    y, s = _fallback_case()
    with pytest.raises(InvalidInput) as err:
        precision_floor(y, s, 0.5, 0.05, grid=grid)
    assert str(err.value) == "grid: the threshold grid must be a non-empty list of finite numbers"


def test_the_default_grid_takes_scores_in_the_closed_unit_interval_only():
    y, s = _data([1.0, 0.9, 0.8], [0.0, 0.1])
    assert precision_floor(y, s, 0.5, 0.05).n_pos == 3  # 0 and 1 themselves are probabilities
    for bad in ([1.5, 0.9, 0.8], [-0.5, 0.9, 0.8]):
        y, s = _data(bad, [0.0, 0.1])
        with pytest.raises(InvalidInput) as err:
            precision_floor(y, s, 0.5, 0.05)
        assert str(err.value) == "grid: scores outside [0, 1]: pass an explicit threshold grid"


# -- the false-positive chooser ---------------------------------------------------------------------
def test_the_certified_fpr_needs_enough_negatives_and_says_how_many():
    need = math.ceil(math.log(0.05) / math.log(0.9))  # 29: 0.9 ** 29 <= 0.05 < 0.9 ** 28
    pos = list(np.linspace(0.6, 0.99, 30))
    for n_neg, feasible in ((0, False), (need - 1, False), (need, True)):
        neg = list(np.linspace(0.0, 0.5, n_neg))
        point = choose_for_false_positives(*_data(pos, neg), 0.1, 0.8, 0.05, fpr_delta=0.05)
        assert point.method == "false_positives" and point.feasible is feasible, n_neg
        if not feasible:
            assert point.reason == f"{n_neg} negatives cannot certify FPR <= 0.1: need {need}"
        else:  # k = 1: every negative must be excluded, so the threshold sits just above the largest one
            assert point.threshold == np.nextafter(0.5, 1.0) and point.fpr == 0.0
            rec = recall_floor(*_data(pos, neg), 0.8, 0.05)
            assert point.guarantee == rec.guarantee + "; P_cal[FPR on new i.i.d. data <= 0.1] >= 0.95"


def test_a_negative_above_every_positive_makes_the_calibration_fpr_target_infeasible():
    # one negative, scored highest: FPR 0.5 allows half a false positive, so only a threshold above it works
    pos = list(np.linspace(0.5, 0.9, 30))
    y, s = _data(pos, [0.99])
    rec = recall_floor(y, s, 0.8, 0.05)
    point = choose_for_false_positives(y, s, 0.5, 0.8, 0.05)
    assert (point.method, point.feasible) == ("false_positives", False)
    assert point.reason == (
        "FPR <= 0.5 needs threshold >= 0.99 (calibration recall 0.000 there), but recall >= 0.8 with confidence "
        f"0.95 allows at most {rec.threshold:.4g} (calibration FPR 1.000 there)"
    )
    ok = choose_for_false_positives(y, s, 0.5, 0.8, 0.05, fpr_delta=None)
    assert ok == point  # the calibration-only mode is the default
    fine = choose_for_false_positives(*_data(pos, [0.1]), 0.5, 0.8, 0.05)
    assert fine.feasible and fine.threshold == 0.5 and fine.guarantee == (
        recall_floor(*_data(pos, [0.1]), 0.8, 0.05).guarantee + "; calibration FPR <= 0.5 (no guarantee on new data)")


def test_without_a_recall_floor_there_is_no_false_positive_fix_and_it_says_why():
    few = _data([0.9] * 5, [0.1] * 50)
    point = choose_for_false_positives(*few, 0.1, 0.8, 0.05)
    assert (point.method, point.feasible, point.reason) == ("false_positives", False,
                                                            recall_floor(*few, 0.8, 0.05).reason)  # fmt: skip


def test_the_fpr_threshold_may_coincide_with_the_recall_threshold():
    # every positive ties at 0.99, one negative below: 0.99 meets both, and the top score is usable as such
    y, s = _data([0.99] * 30, [0.9])
    assert recall_floor(y, s, 0.8, 0.05).threshold == 0.99
    point = choose_for_false_positives(y, s, 0.5, 0.8, 0.05)
    assert point.feasible and point.threshold == 0.99 and (point.recall, point.fpr) == (1.0, 0.0)


# -- the false-negative chooser ---------------------------------------------------------------------
def test_the_false_negative_chooser_passes_the_recall_floor_through():
    y, s = _binormal()
    rec = recall_floor(y, s, 0.8, 0.05)
    plain = choose_for_false_negatives(y, s, 0.8, 0.05)
    assert (plain.method, plain.threshold, plain.guarantee) == ("false_negatives", rec.threshold, rec.guarantee)
    few = _data([0.9] * 5, [0.1] * 5)
    short = choose_for_false_negatives(*few, 0.8, 0.05)
    expected = ("false_negatives", False, recall_floor(*few, 0.8, 0.05).reason)
    assert (short.method, short.feasible, short.reason) == expected


def test_a_grid_point_exactly_at_the_recall_threshold_is_usable():
    # 20 positives at 0.5 and above: recall 0.8 at delta 0.05 needs the k-th smallest, here 0.5 itself
    y, s = _data([0.5] * 10 + [0.9] * 10, [0.1] * 10)
    assert recall_floor(y, s, 0.8, 0.05).threshold == 0.5
    point = choose_for_false_negatives(y, s, 0.8, 0.05, min_precision=0.5, grid=[0.9, 0.5, 0.3])
    assert point.threshold == 0.5 and point.guarantee.endswith("over 3 thresholds high to low, exact binomial p-values")


def test_when_no_certified_precision_reaches_the_recall_threshold_the_reason_says_where_it_stops():
    # 40 positives alone above 0.7 (p = 0.9 ** 40 = 0.015 <= 0.05 / 3); at 0.5, 50 of 60; the recall floor
    # (50 positives, recall 0.8, delta 0.05: the 6th smallest positive) is 0.5
    y, s = _data([0.9] * 40 + [0.5] * 10, [0.5] * 10 + [0.1] * 10)
    assert 0.9**40 <= 0.05 / 3 and recall_floor(y, s, 0.8, 0.05).threshold == 0.5
    point = choose_for_false_negatives(y, s, 0.8, 0.05, min_precision=0.9, grid=[0.7, 0.5, 0.3])
    assert (point.method, point.feasible) == ("false_negatives", False)
    assert point.reason == ("recall >= 0.8 with confidence 0.95 needs threshold <= 0.5 (calibration precision 0.833 "
                            "there), but precision >= 0.9 is certified for thresholds >= 0.7 only")  # fmt: skip
    hopeless = choose_for_false_negatives(y, s, 0.8, 0.05, min_precision=0.99, grid=[0.7, 0.5, 0.3])
    assert hopeless.reason.endswith("but precision >= 0.99 is certified for no threshold")


# -- the warnings of choose_operating_point ---------------------------------------------------------
def test_a_precision_drop_exactly_at_the_bound_is_not_flagged_and_the_default_bound_is_0_2():
    # at 0.5: 3 called, all positives (precision 1); at 0.3, Youden's pick (J = 1 - 2/12): 6 of 8 (0.75)
    y, s = _data([0.9, 0.8, 0.7, 0.3, 0.3, 0.3], [0.4, 0.35] + [0.1] * 10)
    assert youden(y, s).threshold == 0.3
    _, at_bound = choose_operating_point(y, s, 0.5, "youden", max_precision_drop=0.25)
    assert at_bound == []
    _, warned = choose_operating_point(y, s, 0.5, "youden")  # the default bound, 0.2
    assert warned == ["youden: precision falls 1.00 -> 0.75 (-0.25) when the threshold moves 0.5 -> 0.3, more than "
                      "the allowed drop 0.20"]  # fmt: skip
    _, recall_warned = choose_operating_point(y, s, 0.3, "recall_floor", min_recall=0.05, delta=0.5,
                                              max_precision_drop=None, max_recall_drop=0.5)  # fmt: skip
    assert recall_warned == ["recall_floor: recall falls 1.00 -> 0.17 (-0.83) when the threshold moves 0.3 -> 0.9, "
                             "more than the allowed drop 0.50"]  # fmt: skip


def test_rates_in_messages_read_n_a_when_undefined():
    """The infeasibility messages quote rates with `_fmt`: three decimals, "n/a" for an undefined rate
    (not a crash on None)."""
    from cxr.thresholds import _fmt

    assert (_fmt(None), _fmt(0.12345), _fmt(1.0)) == ("n/a", "0.123", "1.000")
