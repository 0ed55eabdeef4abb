"""Feasibility before climbing: the exact search over a version's operating points, checked against numbers
worked out by hand and against a brute force over every threshold between the scores; and the planner
skipping threshold calibration for a target no operating point reaches (reachable: it does not)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from decision.feasibility import Bounds, bounds_for, operating_feasibility, target_of
from decision.planner import ReportView, TreatmentInfo, plan
from policies import ISSUE_KINDS, load_policy, parse_policy

# 5 positives, 10 negatives; the parent calls s >= 0.5 positive: 5 true positives, FPR 4/10
POS = [0.9, 0.8, 0.7, 0.6, 0.5]
NEG = [0.85, 0.75, 0.65, 0.55, 0.45, 0.35, 0.25, 0.15, 0.05, 0.02]
Y = np.array([1] * len(POS) + [0] * len(NEG))
S = np.array(POS + NEG)


def test_the_best_fpr_within_the_bounds_is_the_one_worked_out_by_hand():
    # recall >= 0.8 keeps 4 of 5 positives: the highest such threshold is 0.6 (1 true positive lost, 20 %),
    # where the negatives at or above it are 0.85, 0.75, 0.65: FPR 3/10.
    f = operating_feasibility(Y, S, 0.5, "fpr", 0.2, Bounds(0.8, None, 0.2), version="cxr:3", site="site-b")
    assert not f.feasible
    assert f.best == pytest.approx(0.3) and f.best_threshold == pytest.approx(0.6)
    assert f.recall_at_best == pytest.approx(0.8) and f.tp_loss_at_best == 1 and f.parent_tp == 5
    assert f.parent_value == pytest.approx(0.4) and (f.n_pos, f.n_neg) == (5, 10)
    assert f.n_thresholds == 16  # 15 distinct scores and one above them all
    assert f.sentence.startswith("no operating point of cxr:3's scores at site-b meets FPR ≤ 0.20 within the "
                                 "TP-loss bound: best FPR at recall ≥ 0.80 (≤ 20% of true positives lost) is 0.30")


def test_a_target_exactly_on_the_frontier_is_met_and_one_just_below_it_is_not():
    # recall >= 0.6 and 40 % loss allow threshold 0.7 (2 positives lost): negatives 0.85, 0.75 -> FPR 0.2
    loose = Bounds(0.6, None, 0.4)
    assert operating_feasibility(Y, S, 0.5, "fpr", 0.2, loose).feasible
    near = operating_feasibility(Y, S, 0.5, "fpr", 0.19, loose)
    assert not near.feasible and near.best == pytest.approx(0.2)
    # the absolute cap binds before the fraction: at most 1 lost true positive -> back to 0.3
    capped = operating_feasibility(Y, S, 0.5, "fpr", 0.2, Bounds(0.6, 1, 0.4))
    assert not capped.feasible and capped.best == pytest.approx(0.3) and capped.tp_loss_at_best == 1


def test_improve_rules_judge_against_the_parents_value_at_its_threshold():
    # best 0.3 misses 0.2, but improves on the parent's 0.4 by 0.1
    bounds = dict(recall_floor=0.8, max_tp_loss=None, max_tp_loss_fraction=0.2)
    assert operating_feasibility(Y, S, 0.5, "fpr", 0.2, Bounds(**bounds, rule="meet_or_improve")).feasible
    assert operating_feasibility(Y, S, 0.5, "fpr", 0.2, Bounds(**bounds, rule="improve")).feasible
    assert not operating_feasibility(Y, S, 0.5, "fpr", 0.2,
                                     Bounds(**bounds, rule="improve", min_improvement=0.15)).feasible


def test_false_negative_targets_are_reachable_whenever_there_is_a_positive():
    f = operating_feasibility(Y, S, 0.75, "recall", 0.95, Bounds(0.8, 0, 0.0))
    assert f.feasible and f.best == 1.0 and f.tp_loss_at_best == 0 and f.best_threshold == pytest.approx(0.5)
    none = operating_feasibility(np.zeros(4, int), np.array([0.1, 0.2, 0.3, 0.4]), 0.25, "recall", 0.5,
                                 Bounds(0.8, None, 0.1))
    assert not none.feasible and none.best is None and "no operating point" in none.sentence


def _brute_force(y, s, t0, metric, bounds: Bounds, parent=None):
    """Best admissible value over thresholds below, between and above the sorted scores, by plain counting
    (`parent`: the parent's scores on the same rows, whose hits at `t0` are the true positives to keep)."""
    values = sorted(set(s.tolist()))
    cuts = [values[0] - 1.0] + [(a + b) / 2 for a, b in itertools.pairwise(values)] + [values[-1] + 1.0]
    pos = [v for v, lab in zip(s, y, strict=True) if lab == 1]
    neg = [v for v, lab in zip(s, y, strict=True) if lab == 0]
    parent_hits = ([v for v in pos if v >= t0] if parent is None else
                   [v for v, p, lab in zip(s, parent, y, strict=True) if lab == 1 and p >= t0])
    best = None
    for t in cuts:
        tp = sum(v >= t for v in pos)
        recall = tp / len(pos)
        lost = sum(v < t for v in parent_hits)
        if bounds.max_tp_loss is not None and lost > bounds.max_tp_loss:
            continue
        if bounds.max_tp_loss_fraction is not None and parent_hits and lost / len(parent_hits) > \
                bounds.max_tp_loss_fraction + 1e-12:
            continue
        if bounds.recall_floor is not None and recall < bounds.recall_floor:
            continue
        value = sum(v >= t for v in neg) / len(neg) if metric == "fpr" else recall
        if best is None or (value < best if metric == "fpr" else value > best):
            best = value
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_search_agrees_with_a_brute_force_over_every_threshold(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 80))
    y = (rng.random(n) < 0.35).astype(int)
    y[:2] = [0, 1]
    s = np.round(rng.normal(y * rng.uniform(0.2, 1.5), 1.0), 1)  # rounded: many ties
    t0 = float(rng.choice(s))
    for floor, cap, frac in [(0.8, None, 0.2), (0.5, 2, None), (None, None, 0.1), (0.9, 0, 0.0)]:
        bounds = Bounds(floor, cap, frac)
        for metric in ("fpr", "recall"):
            f = operating_feasibility(y, s, t0, metric, 0.3, bounds)
            expected = _brute_force(y, s, t0, metric, bounds)
            assert (f.best is None) == (expected is None)
            if expected is not None:
                assert f.best == pytest.approx(expected)
                assert f.feasible == (expected <= 0.3 + 1e-12 if metric == "fpr" else expected >= 0.3 - 1e-12)


def test_targets_and_bounds_are_read_as_the_gate_reads_them():
    assert target_of("false_positives", "fpr", 0.5, 0.3, 0.8) == ("fpr", 0.5)
    assert target_of("false_positives", "specificity", 0.7, 0.3, 0.8) == ("fpr", pytest.approx(0.3))
    assert target_of("false_negatives", "fnr", 0.1, 0.3, 0.8) == ("recall", 0.8)  # not an evaluated metric: SLO
    assert target_of("auroc_drop", "auroc", 0.8, 0.3, 0.8) is None
    policy = load_policy()
    b = bounds_for(policy, "Atelectasis")
    assert (b.recall_floor, b.max_tp_loss, b.max_tp_loss_fraction) == (
        policy.slos.for_pathology("Atelectasis").min_recall, policy.gate.max_tp_loss, policy.gate.max_tp_loss_fraction)
    raw = policy.model_dump(mode="json")
    raw["gate"]["recall_floor"] = 0.65  # (not any SLO's value: the gate's own floor wins)
    assert bounds_for(parse_policy(raw), "Atelectasis").recall_floor == 0.65


# -- the planner ------------------------------------------------------------------------------------------
def _report() -> ReportView:
    return ReportView("r7", "cxr", 3, "Atelectasis", "false_positives", "fpr", 0.71, 0.5, "site-b", True, 40)


def _infos(policy, calibration: TreatmentInfo) -> list[TreatmentInfo]:
    kinds = frozenset(ISSUE_KINDS)
    return [calibration if n == "threshold_calibration" else TreatmentInfo(n, kinds) for n in policy.treatments]


def test_an_unreachable_target_skips_calibration_with_the_numbers_in_the_rationale():
    policy = load_policy()
    f = operating_feasibility(Y, S, 0.5, "fpr", 0.2, Bounds(0.8, None, 0.2), version="cxr:3", site="site-b")
    info = TreatmentInfo("threshold_calibration", frozenset(ISSUE_KINDS), skipped=f.sentence,
                         evidence={"calibration_feasibility": f.to_json()})
    p = plan(_report(), _infos(policy, info), policy, [])
    cal = next(c for c in p.candidates if c.treatment == "threshold_calibration")
    assert not cal.applicable and p.chosen is not None and p.chosen.treatment != "threshold_calibration"
    assert "Skipped on the evidence: threshold_calibration: no operating point of cxr:3's scores" in p.rationale
    assert "best FPR at recall ≥ 0.80 (≤ 20% of true positives lost) is 0.30" in p.rationale
    assert "threshold_calibration (" not in p.rationale  # skipped on the evidence, not listed as inapplicable


def test_a_reachable_target_leaves_calibration_first():
    policy = load_policy()
    f = operating_feasibility(Y, S, 0.5, "fpr", 0.35, Bounds(0.8, None, 0.2))
    assert f.feasible and f.best == pytest.approx(0.3)
    info = TreatmentInfo("threshold_calibration", frozenset(ISSUE_KINDS), evidence={"calibration_feasibility": {}})
    p = plan(_report(), _infos(policy, info), policy, [])
    assert p.chosen.treatment == "threshold_calibration" and "Skipped on the evidence" not in p.rationale


@pytest.mark.parametrize("seed", range(8))
def test_a_candidates_own_scores_are_searched_against_the_parents_true_positives(seed):
    """A re-trained candidate: its scores differ from the parent's, and the TP loss counts the parent's hits."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(30, 90))
    y = (rng.random(n) < 0.35).astype(int)
    y[:2] = [0, 1]
    parent = np.round(rng.normal(y * 0.8, 1.0), 1)
    cand = np.round(0.5 * parent + rng.normal(y * 0.9, 0.8), 1)  # correlated with the parent, not equal to it
    t0 = float(np.median(parent))
    for floor, cap, frac in [(0.6, None, 0.2), (0.5, 3, None), (None, None, 0.1)]:
        bounds = Bounds(floor, cap, frac)
        for metric in ("fpr", "recall"):
            f = operating_feasibility(y, cand, t0, metric, 0.3, bounds, parent=parent)
            expected = _brute_force(y, cand, t0, metric, bounds, parent=parent)
            assert (f.best is None) == (expected is None)
            if expected is not None:
                assert f.best == pytest.approx(expected)
            assert f.parent_tp == int(((y == 1) & (parent >= t0)).sum())
            want = ((y == 0) & (parent >= t0)).sum() / (y == 0).sum() if metric == "fpr" else \
                ((y == 1) & (parent >= t0)).sum() / (y == 1).sum()
            assert f.parent_value == pytest.approx(want)


@pytest.mark.parametrize(("kind", "metric", "target", "slo_fpr", "slo_recall", "want"), [
    # a false-positives report's own rate, or its specificity read as 1 - FPR
    ("false_positives", "FPR ", 0.5, 0.3, 0.8, ("fpr", 0.5)),
    ("false_positives", "specificity", 0.75, None, None, ("fpr", 0.25)),
    # its own metric without a target, or one the evaluation does not compute: the pathology's SLO, else nothing
    ("false_positives", "fpr", None, 0.3, 0.8, ("fpr", 0.3)),
    ("false_positives", "ppv", 0.9, 0.3, 0.8, ("fpr", 0.3)),
    ("false_positives", "ppv", 0.9, None, 0.8, None),
    # a false-negatives report: recall, sensitivity and TPR are one rate
    ("false_negatives", "recall", 0.7, 0.3, 0.8, ("recall", 0.7)),
    ("false_negatives", "sensitivity", 0.65, None, None, ("recall", 0.65)),
    ("false_negatives", "tpr", 0.55, None, None, ("recall", 0.55)),
    ("false_negatives", "recall", None, 0.3, 0.8, ("recall", 0.8)),
    ("false_negatives", "fnr", 0.1, 0.3, None, None),
])
def test_each_metric_and_fallback_of_a_report_target(kind, metric, target, slo_fpr, slo_recall, want):
    got = target_of(kind, metric, target, slo_fpr, slo_recall)
    if want is None:
        assert got is None
    else:
        assert got[0] == want[0] and got[1] == pytest.approx(want[1]) and isinstance(got[1], float)


def test_bounds_carry_every_gate_setting_and_the_pathologys_own_floor():
    raw = load_policy().model_dump(mode="json")
    raw["gate"].update(max_tp_loss=7, max_tp_loss_fraction=0.15, target_rule="meet_or_improve", min_improvement=0.02,
                       recall_floor=None)
    raw["slos"]["pathologies"]["Effusion"] = {"min_recall": 0.72, "max_fpr": None, "min_auroc": None}
    policy = parse_policy(raw)
    b = bounds_for(policy, "Effusion")
    assert b == Bounds(0.72, 7, 0.15, "meet_or_improve", 0.02)
    assert bounds_for(policy, "Nodule").recall_floor == policy.slos.for_pathology("Nodule").min_recall != 0.72
    assert b.describe() == "recall ≥ 0.72 (≤ 15% of and at most 7 of true positives lost)"
    assert Bounds(None, None, None).describe() == "no recall floor (no TP-loss bound)"


def test_the_sentence_names_the_version_the_site_and_the_numbers():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.6, 0.7, 0.9, 0.5, 0.65, 0.8, 0.95])
    f = operating_feasibility(y, s, 0.5, "fpr", 0.2, Bounds(0.75, None, 0.25), version="cxr:3", site="site-b")
    # thresholds keeping recall >= 0.75 and <= 1 of the 4 true positives lost: t <= 0.65, best FPR 2/4 at t = 0.65
    assert (f.best, f.best_threshold, f.recall_at_best, f.tp_loss_at_best, f.parent_tp) == (0.5, 0.65, 0.75, 1, 4)
    assert not f.feasible and f.parent_value == 0.75
    assert f.sentence == ("no operating point of cxr:3's scores at site-b meets FPR ≤ 0.20 within the TP-loss bound: "
                          "best FPR at recall ≥ 0.75 (≤ 25% of true positives lost) is 0.50 (threshold 0.650, recall "
                          "0.750, 1 of 4 true positives lost; 4 positives, 4 negatives, 9 operating points)")
    ok = operating_feasibility(y, s, 0.5, "fpr", 0.6, Bounds(0.75, None, 0.25))
    assert ok.feasible and ok.sentence.startswith("an operating point of the current scores meets FPR ≤ 0.60: ")
    with pytest.raises(ValueError, match="fpr or recall, not 'auroc'"):
        operating_feasibility(y, s, 0.5, "auroc", 0.6, Bounds(0.75, None, 0.25))
    with pytest.raises(ValueError, match="8 labels but 7 scores"):
        operating_feasibility(y, s[:7], 0.5, "fpr", 0.6, Bounds(0.75, None, 0.25))


def test_rows_without_one_class_and_a_best_above_every_score():
    none = Bounds(None, None, None)
    pos_only = operating_feasibility([1, 1, 1], [0.2, 0.5, 0.9], 0.5, "fpr", 0.3, none)
    assert pos_only.best is None and pos_only.parent_value is None and pos_only.feasible is False  # no FPR at all
    rec = operating_feasibility([1, 1, 1], [0.2, 0.5, 0.9], 0.5, "recall", 0.5, none)
    assert (rec.best, rec.best_threshold, rec.parent_value) == (1.0, 0.2, pytest.approx(2 / 3))
    neg_only = operating_feasibility([0, 0, 0], [0.2, 0.5, 0.9], 0.5, "fpr", 0.3, Bounds(0.5, None, None))
    assert neg_only.best is None  # a recall floor on rows without positives: undefined recall fails it
    above = operating_feasibility([0, 0, 0], [0.2, 0.5, 0.9], 0.5, "fpr", -0.1, none)
    assert (above.best, above.best_threshold, above.recall_at_best, above.parent_value) == (0.0, None, None, 2 / 3)
    assert not above.feasible and "(threshold above every score," in above.sentence
    assert (above.parent_threshold, above.parent_tp) == (0.5, 0)


def test_the_improve_rules_count_a_gain_from_the_parents_value():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.6, 0.7, 0.9, 0.5, 0.65, 0.8, 0.95])
    # FPR: the parent's 0.75 at t0 = 0.5, best 0.5 within the bounds: a gain of exactly 0.25
    for rule, min_gain, feasible in [("improve", 0.25, True), ("improve", 0.2501, False),
                                     ("meet_or_improve", 0.3, False), ("meet_target", 0.0, False)]:
        f = operating_feasibility(y, s, 0.5, "fpr", 0.2, Bounds(0.75, None, 0.25, rule, min_gain))
        assert (f.best, f.parent_value, f.feasible) == (0.5, 0.75, feasible), (rule, min_gain)
    # recall: the parent's 0.5 at t0 = 0.7, best 1.0: a gain of 0.5; the target 0.9 is met as well
    up = operating_feasibility(y, s, 0.7, "recall", 0.99, Bounds(None, None, None, "improve", 0.5))
    assert (up.best, up.parent_value, up.feasible) == (1.0, 0.5, True)
    assert not operating_feasibility(y, s, 0.7, "recall", 0.99, Bounds(None, None, None, "improve", 0.51)).feasible
    # no gain at all (the parent already at the best): not an improvement, even with no minimum
    flat = operating_feasibility(y, s, 0.5, "recall", 0.99, Bounds(None, None, None, "improve", 0.0))
    assert (flat.best, flat.parent_value, flat.feasible) == (1.0, 1.0, False)


def test_a_candidates_scores_on_rows_without_one_class():
    none = Bounds(None, None, None)
    pos_only = operating_feasibility([1, 1], [0.2, 0.9], 0.5, "recall", 0.5, none, parent=[0.3, 0.8])
    assert (pos_only.parent_value, pos_only.parent_tp, pos_only.best) == (0.5, 1, 1.0)
    assert operating_feasibility([1, 1], [0.2, 0.9], 0.5, "fpr", 0.3, none, parent=[0.3, 0.8]).parent_value is None
    neg_only = operating_feasibility([0, 0], [0.2, 0.9], 0.5, "fpr", 0.3, none, parent=[0.3, 0.8])
    assert (neg_only.parent_value, neg_only.parent_tp, neg_only.best) == (0.5, 0, 0.0)
    assert operating_feasibility([0, 0], [0.2, 0.9], 0.5, "recall", 0.3, none, parent=[0.3, 0.8]).parent_value is None
    with pytest.raises(ValueError, match="2 scores but 3 parent scores"):
        operating_feasibility([0, 1], [0.2, 0.9], 0.5, "fpr", 0.3, none, parent=[0.3, 0.8, 0.1])
