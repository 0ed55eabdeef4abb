"""Every check of the gate on hand-built evaluations: each rule at its boundary, each direction, the
exact words an auditor reads, and failing closed on missing evidence.

The evaluations are built field by field (`PathologyEval`, `ParentComparison`), so each number the
gate sees is written here and each expected verdict follows from the rule in the gate's docstring,
not from running the evaluation code.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from decision.evaluate import EvaluationReport, ParentComparison, PathologyEval
from decision.gate import SiteEvaluation, gate, judge_sites, noninferiority_check, other_site_checks
from decision.planner import ReportView
from policies import load_policy, parse_policy


def _cmp(**kw) -> ParentComparison:
    base = dict(parent_auroc=0.85, delta=0.0, delta_lo=-0.005, delta_hi=0.005, p_value=1.0, parent_threshold=0.5,
                parent_sensitivity=0.9, parent_specificity=0.75, parent_ppv=0.5, parent_f1=0.6, parent_fpr=0.25,
                parent_tp=90, tp_loss=0, tp_loss_fraction=0.0)  # fmt: skip
    base.update(kw)
    return ParentComparison(**base)


def _pe(name="Cardiomegaly", **kw) -> PathologyEval:
    base = dict(pathology=name, evaluable=True, reason=None, n_pos=100, n_neg=400, n_unlabelled=0, auroc=0.85,
                auroc_lo=0.8, auroc_hi=0.9, threshold=0.6, sensitivity=0.9, specificity=0.9, ppv=0.7, npv=0.97,
                f1=0.79, fpr=0.1, tp=90, fp=40, comparison=_cmp())  # fmt: skip
    base.update(kw)
    return PathologyEval(**base)


def _ev(*results, parent=True, alpha=0.05) -> EvaluationReport:
    return EvaluationReport(500, tuple(r.pathology for r in results), tuple(results), parent, alpha)


def _report(**kw) -> ReportView:
    base = dict(id=1, model="cxr", version=1, pathology="Cardiomegaly", kind="false_positives", metric="fpr",
                value=0.3, target=0.1, site="site-b")  # fmt: skip
    base.update(kw)
    return ReportView(**base)


def _policy(slos=None, **gate_kw):
    raw = load_policy().model_dump(mode="json")
    raw["gate"].update(gate_kw)
    for name, limits in (slos or {}).items():
        (raw["slos"] if name == "default" else raw["slos"]["pathologies"]).setdefault(name, {}).update(limits)
    return parse_policy(raw)


def _target(report, r, policy=None, measured=None):
    return gate(report, _ev(r), policy or load_policy(), measured=measured).checks[0]


# -- target_fixed --------------------------------------------------------------------------------------
def test_a_rate_exactly_at_its_target_meets_it_in_either_direction():
    at = _target(_report(), _pe(fpr=0.1))
    assert (at.name, at.passed, at.value, at.limit) == ("target_fixed", True, 0.1, 0.1)
    assert at.detail == "Cardiomegaly fpr 0.100: target <= 0.100 met, change -0.150 vs parent 0.250 (rule meet_target)"
    over = _target(_report(), _pe(fpr=0.1001))
    assert over.passed is False and "target <= 0.100 missed" in over.detail
    fn = _report(kind="false_negatives", metric="recall", value=0.7, target=0.85)
    at = _target(fn, _pe(sensitivity=0.85, comparison=_cmp(parent_sensitivity=0.7)))
    assert (at.passed, at.value, at.limit) == (True, 0.85, 0.85)
    assert at.detail == ("Cardiomegaly recall 0.850: target >= 0.850 met, change +0.150 vs parent 0.700 "
                         "(rule meet_target)")
    assert _target(fn, _pe(sensitivity=0.8499)).passed is False


def test_improve_needs_a_gain_of_at_least_the_minimum_and_more_than_zero():
    fp = _report()
    parent = _cmp(parent_fpr=0.5)  # binary fractions: 0.5 - 0.25 is exactly 0.25
    exact = _target(fp, _pe(fpr=0.25, comparison=parent), _policy(target_rule="improve", min_improvement=0.25))
    assert exact.passed and exact.limit == 0.25  # the parent's 0.5 less the minimum gain
    short = _target(fp, _pe(fpr=0.2501, comparison=parent), _policy(target_rule="improve", min_improvement=0.25))
    assert short.passed is False
    same = _target(fp, _pe(fpr=0.5, comparison=parent), _policy(target_rule="improve", min_improvement=0.0))
    assert same.passed is False  # no change is no improvement, even with a zero minimum
    fn = _report(kind="false_negatives", metric="recall", value=0.7, target=0.9)
    up = _target(fn, _pe(sensitivity=0.8, comparison=_cmp(parent_sensitivity=0.7)),
                 _policy(target_rule="improve", min_improvement=0.05))  # fmt: skip
    assert up.passed and up.limit == pytest.approx(0.75)  # higher is better: the parent's 0.7 plus the minimum
    unknown = _target(_report(value=None), _pe(fpr=0.05, comparison=None), _policy(target_rule="improve"))
    assert unknown.passed is False and unknown.detail == (
        "Cardiomegaly fpr 0.050: target <= 0.100 met (rule improve)")  # no baseline: no improvement to show


def test_meet_or_improve_accepts_either():
    policy = _policy(target_rule="meet_or_improve", min_improvement=0.05)
    improved_only = _target(_report(), _pe(fpr=0.15, comparison=_cmp(parent_fpr=0.25)), policy)
    assert improved_only.passed and "target <= 0.100 missed, change -0.100 vs parent 0.250" in improved_only.detail
    neither = _target(_report(), _pe(fpr=0.24, comparison=_cmp(parent_fpr=0.25)), policy)
    assert neither.passed is False


def test_the_baseline_falls_back_to_the_reported_value():
    check = _target(_report(value=0.3), _pe(fpr=0.1, comparison=None))
    assert check.detail == ("Cardiomegaly fpr 0.100: target <= 0.100 met, change -0.200 vs parent 0.300 "
                            "(rule meet_target)")


def test_a_metric_without_a_target_or_slo_cannot_be_met():
    check = _target(_report(metric="ppv", target=None, value=0.4), _pe(ppv=0.5, comparison=_cmp(parent_ppv=0.4)))
    assert (check.passed, check.limit) == (False, None)
    assert check.detail == "Cardiomegaly ppv 0.500: no target, change +0.100 vs parent 0.400 (rule meet_target)"


@pytest.mark.parametrize("metric, attr, slo", [("fpr", "fpr", "max_fpr"), ("recall", "sensitivity", "min_recall"),
                                               ("sensitivity", "sensitivity", "min_recall"),
                                               ("tpr", "sensitivity", "min_recall"), ("auroc", "auroc", "min_auroc")])
def test_without_its_own_target_a_report_is_held_to_the_pathology_slo(metric, attr, slo):
    policy = load_policy()
    limit = getattr(policy.slos.for_pathology("Cardiomegaly"), slo)
    check = _target(_report(metric=metric, target=None), _pe(**{attr: 0.5}), policy)
    assert check.limit == limit and check.value == 0.5


def test_a_target_in_other_units_than_the_metric_judged_is_not_used():
    # "missed_cases" cannot be computed: the gate judges the kind's metric (recall) against the SLO, not the 3
    report = _report(kind="false_negatives", metric="missed_cases", value=12, target=3)
    check = _target(report, _pe(sensitivity=0.85))
    assert (check.passed, check.limit, check.value) == (True, 0.8, 0.85)


def test_which_way_is_better_follows_the_metric_then_the_kind():
    # specificity is higher-better, even in a false-positive report
    spec = _target(_report(metric="specificity", target=0.9), _pe(specificity=0.95))
    assert spec.passed and "target >= 0.900 met" in spec.detail
    # a measured metric the evaluation does not know takes the kind's direction
    drift = _report(kind="calibration_drift", metric="mce", value=0.2, target=0.1)
    assert _target(drift, _pe(), measured={"mce": 0.05}).passed
    assert _target(drift, _pe(), measured={"mce": 0.15}).passed is False
    gain = _report(kind="auroc_drop", metric="auprc", value=0.4, target=0.5)
    assert _target(gain, _pe(), measured={"auprc": 0.6}).passed


def test_missing_evidence_fails_the_target_with_the_reason():
    uncomputable = _target(_report(kind="calibration_drift", metric="ece", value=0.1, target=0.05), _pe())
    assert (uncomputable.name, uncomputable.passed) == ("target_fixed", False)
    assert uncomputable.detail == "metric 'ece' cannot be computed from the evaluation"
    absent = gate(_report(pathology="Pneumothorax"), _ev(_pe()), load_policy()).checks[0]
    assert (absent.name, absent.passed, absent.detail, absent.value, absent.limit) == (
        "target_fixed", False, "Pneumothorax is not in the evaluation", None, 0.1)  # fmt: skip
    no_threshold = _target(_report(), _pe(fpr=None))
    assert (no_threshold.name, no_threshold.passed, no_threshold.value, no_threshold.limit) == (
        "target_fixed", False, None, 0.1)  # fmt: skip
    assert no_threshold.detail == "fpr of Cardiomegaly is undefined (no threshold or no cases)"
    no_negatives = _target(_report(), _pe(fpr=None, evaluable=False, reason="no negative cases"))
    assert no_negatives.detail == "fpr of Cardiomegaly is undefined (no negative cases)"


# -- tp_loss, recall_floor -----------------------------------------------------------------------------
def _named(result, name):
    return next(c for c in result.checks if c.name == name)


def test_true_positive_loss_exactly_at_its_bounds_passes():
    r = _pe(comparison=_cmp(parent_tp=10, tp_loss=2, tp_loss_fraction=0.2))
    check = _named(gate(_report(), _ev(r), _policy(max_tp_loss=2, max_tp_loss_fraction=0.2)), "tp_loss")
    assert (check.passed, check.value, check.limit) == (True, 2.0, 2.0)
    assert check.detail == "2 of the parent's 10 true positives lost (20.0%, bound <= 2 and <= 20%)"
    over = _named(gate(_report(), _ev(r), _policy(max_tp_loss=1, max_tp_loss_fraction=None)), "tp_loss")
    assert over.passed is False and over.detail.endswith("(20.0%, bound <= 1)")
    frac = _named(gate(_report(), _ev(r), _policy(max_tp_loss=None, max_tp_loss_fraction=0.19)), "tp_loss")
    assert (frac.passed, frac.limit) == (False, 0.19) and frac.detail.endswith("(20.0%, bound <= 19%)")


def test_no_parent_true_positives_is_no_loss():
    r = _pe(comparison=_cmp(parent_tp=0, tp_loss=0, tp_loss_fraction=None))
    check = _named(gate(_report(), _ev(r), _policy(max_tp_loss_fraction=0.1)), "tp_loss")
    assert check.passed and check.detail == "0 of the parent's 0 true positives lost (0.0%, bound <= 10%)"


def test_true_positive_loss_unbounded_or_unmeasured():
    free = _named(gate(_report(), _ev(_pe()), _policy(max_tp_loss=None, max_tp_loss_fraction=None)), "tp_loss")
    assert (free.passed, free.detail) == (True, "no true-positive loss bound configured")
    blind = _named(gate(_report(), _ev(_pe(comparison=_cmp(tp_loss=None))), load_policy()), "tp_loss")
    assert (blind.passed, blind.detail) == (False, "no true-positive loss measured (needs the parent and both "
                                                   "thresholds)")  # fmt: skip


def test_the_recall_floor_at_its_value_passes_and_says_so():
    policy = _policy(recall_floor=0.8)
    at = _named(gate(_report(), _ev(_pe(sensitivity=0.8)), policy), "recall_floor")
    assert (at.passed, at.value, at.limit, at.detail) == (True, 0.8, 0.8, "Cardiomegaly recall 0.800 >= floor 0.800")
    below = _named(gate(_report(), _ev(_pe(sensitivity=0.7999)), policy), "recall_floor")
    assert (below.passed, below.detail) == (False, "Cardiomegaly recall 0.800 < floor 0.800")
    undefined = _named(gate(_report(), _ev(_pe(sensitivity=None)), policy), "recall_floor")
    assert (undefined.passed, undefined.detail, undefined.value, undefined.limit) == (
        False, "recall of Cardiomegaly is undefined", None, 0.8)  # fmt: skip
    none = _policy(slos={"default": {"min_recall": None}, "Cardiomegaly": {"min_recall": None}}, recall_floor=None)
    free = _named(gate(_report(), _ev(_pe(sensitivity=0.1)), none), "recall_floor")
    assert (free.passed, free.detail) == (True, "no recall floor configured")


# -- the whole gate --------------------------------------------------------------------------------------
def test_the_summary_leads_with_the_target_and_names_only_what_exists():
    alone = gate(_report(), _ev(_pe()), load_policy())
    t, tp, rf = alone.checks
    assert alone.passed and alone.summary == f"Accepted: all 3 checks passed. {t.detail}; {tp.detail}; {rf.detail}."
    with_other = gate(_report(), _ev(_pe(), _pe("Edema", comparison=_cmp(delta_lo=-0.004))), load_policy())
    assert "; worst other AUROC lower bound -0.0040 (Edema); " in with_other.summary


def test_without_a_parent_or_at_another_level_the_gate_fails_closed():
    orphan = gate(_report(), _ev(_pe(), parent=False), load_policy())
    check = _named(orphan, "noninferiority")
    assert (check.passed, check.detail) == (False, "the evaluation has no parent to compare with")
    level = _named(gate(_report(), _ev(_pe(), alpha=0.2), load_policy()), "interval_level")
    assert (level.passed, level.detail, level.value, level.limit) == (
        False, "evaluated at alpha 0.2, the policy asks for 0.05", 0.2, 0.05)  # fmt: skip


def test_noninferiority_without_a_comparison_or_with_identical_scores():
    missing = noninferiority_check(_pe("Edema", comparison=None), load_policy())
    assert (missing.passed, missing.detail, missing.value, missing.limit) == (
        False, "Edema: no paired comparison with the parent", None, -0.02)  # fmt: skip
    same = noninferiority_check(_pe("Edema", comparison=_cmp(identical=True)), load_policy())
    assert (same.passed, same.value, same.limit, same.flag) == (True, 0.0, -0.02, "unchanged")


def test_noninferiority_details_say_which_bound_was_judged():
    policy = load_policy()
    shown = noninferiority_check(_pe("Edema", comparison=_cmp(delta=-0.01, delta_lo=-0.015, delta_hi=-0.005)), policy)
    assert (shown.passed, shown.value, shown.limit) == (True, -0.015, -0.02)
    assert shown.detail == "Edema: AUROC change -0.0100 [-0.0150, -0.0050], lower bound >= -0.020"
    harmed = noninferiority_check(_pe("Edema", comparison=_cmp(delta=-0.03, delta_lo=-0.035, delta_hi=-0.025)), policy)
    assert (harmed.passed, harmed.value, harmed.limit, harmed.flag) == (False, -0.035, -0.02, None)
    # built without the DeLong (co)variances, as evaluations stored before them: the power rule fell back
    assert harmed.detail == ("Edema: AUROC change -0.0300 [-0.0350, -0.0250], lower bound < -0.020 "
                             "(power judged with the policy's ρ 0.95: no measured covariance)")
    # with them (v1 = v2 = 1e-4, cov 0.99e-4: SE of the change √2e-6 = 0.0014, z·SE 0.0028 < margin) it is plain
    measured = _cmp(delta=-0.03, delta_lo=-0.035, delta_hi=-0.025, var_candidate=1e-4, var_parent=1e-4,
                    covariance=0.99e-4)
    harmed = noninferiority_check(_pe("Edema", comparison=measured), policy)
    assert (harmed.passed, harmed.value, harmed.flag) == (False, -0.035, None)
    assert harmed.detail == "Edema: AUROC change -0.0300 [-0.0350, -0.0250], lower bound < -0.020"
    # a perfect parent (design variance 0) with one positive: no interval, the point estimate is judged
    point = _pe("Edema", n_pos=1, comparison=_cmp(parent_auroc=1.0, delta=-0.01, delta_lo=None, delta_hi=None))
    check = noninferiority_check(point, policy)
    assert (check.passed, check.value) == (True, -0.01)
    assert check.detail == "Edema: AUROC change -0.0100 (too few cases for an interval), point estimate >= -0.020"


def _weak(name="Hernia", delta_hi=0.03):
    """Five positives: no interval can show the margin; the interval still contains zero unless told not to."""
    return _pe(name, n_pos=5, n_neg=400, comparison=_cmp(delta=-0.01, delta_lo=-0.05, delta_hi=delta_hi))


def test_an_underpowered_check_is_judged_on_harm_alone_or_blocked_as_the_policy_says():
    lenient = noninferiority_check(_weak("Hernia", delta_hi=0.0), load_policy())  # zero still in the interval
    assert (lenient.passed, lenient.value, lenient.limit, lenient.flag) == (True, 0.0, 0.0, "underpowered")
    assert lenient.detail.startswith("Hernia: AUROC change -0.0100 [-0.0500, +0.0000]; underpowered, no significant "
                                     "harm (Hernia: 5 positives; the margin -0.020 needs about ")  # fmt: skip
    harmful = noninferiority_check(_weak("Hernia", delta_hi=-0.001), load_policy())
    assert (harmful.passed, harmful.value, harmful.flag) == (False, -0.001, "underpowered")
    assert "; underpowered, significant harm: the interval excludes zero (Hernia: 5 positives;" in harmful.detail
    blocked = noninferiority_check(_weak("Hernia"), _policy(underpowered="block"))
    assert (blocked.passed, blocked.value, blocked.limit, blocked.flag) == (False, -0.05, -0.02, "underpowered")
    assert blocked.detail.startswith("Hernia: AUROC change -0.0100 [-0.0500, +0.0300], lower bound < -0.020; "
                                     "underpowered (Hernia: 5 positives; the margin -0.020 needs about ")  # fmt: skip
    assert blocked.detail.endswith("); the policy blocks")
    # one positive, no interval: neither safety nor harm can be shown, so a person must judge it
    lone = _pe("Hernia", n_pos=1, comparison=_cmp(delta=-0.03, delta_lo=None, delta_hi=None))
    alone = noninferiority_check(lone, load_policy())
    assert (alone.passed, alone.value, alone.limit, alone.flag) == (True, -0.03, 0.0, "underpowered")
    assert alone.detail.startswith("Hernia: AUROC change -0.0300 (too few cases for an interval); underpowered, "
                                   "too few cases to judge harm (Hernia: 1 positives;")  # fmt: skip
    assert gate(_report(), _ev(_pe(), lone), load_policy()).needs_approval


def test_flagged_lists_the_binding_underpowered_checks():
    result = gate(_report(), _ev(_pe(), _weak()), load_policy())
    assert result.passed and result.needs_approval
    assert [c.name for c in result.flagged()] == ["noninferiority[Hernia]"]
    assert result.flagged("unchanged") == [] and "; underpowered, no significant harm: Hernia; " in result.summary
    two = gate(_report(), _ev(_pe(), _weak("Hernia"), _weak("Fibrosis")), load_policy())
    assert "; underpowered, no significant harm: Hernia, Fibrosis; " in two.summary


def test_a_rejection_lists_every_failed_check_in_order():
    result = gate(_report(), _ev(_pe(fpr=0.3, sensitivity=0.5)), load_policy())
    failed = result.failed()
    assert [c.name for c in failed] == ["target_fixed", "recall_floor"]
    assert result.summary == (f"Rejected: 2 of 3 checks failed. target_fixed: {failed[0].detail}; "
                              f"recall_floor: {failed[1].detail}.")  # fmt: skip


# -- another site's evaluation ---------------------------------------------------------------------------
def _slo_checks(report, r, policy=None):
    return {c.name: c for c in other_site_checks(report, _ev(r), policy or load_policy())}


def test_another_site_may_not_be_pushed_past_its_slo_by_this_fix():
    fp = _report()  # Cardiomegaly: recall >= 0.8, FPR <= 0.2
    broken = _slo_checks(fp, _pe(sensitivity=0.75, fpr=0.1, comparison=_cmp(parent_sensitivity=0.85, parent_fpr=0.15)))
    recall, fpr = broken["slo_kept[Cardiomegaly.recall]"], broken["slo_kept[Cardiomegaly.fpr]"]
    assert (recall.passed, recall.value, recall.limit) == (False, 0.75, 0.8)
    assert recall.detail == "Cardiomegaly recall 0.750 (parent 0.850); SLO >= 0.8 newly breached"
    assert (fpr.passed, fpr.value, fpr.limit) == (True, 0.1, 0.2)
    assert fpr.detail == "Cardiomegaly fpr 0.100 (parent 0.150); SLO <= 0.2 kept"
    worse_fpr = _slo_checks(fp, _pe(fpr=0.25, comparison=_cmp(parent_fpr=0.2)))["slo_kept[Cardiomegaly.fpr]"]
    assert (worse_fpr.passed, worse_fpr.detail) == (False, "Cardiomegaly fpr 0.250 (parent 0.200); SLO <= 0.2 "
                                                           "newly breached")  # fmt: skip
    assert broken["noninferiority[Cardiomegaly]"].passed  # the target itself is judged for non-inferiority too


def test_exactly_at_the_slo_counts_as_meeting_it_for_parent_and_candidate():
    checks = _slo_checks(_report(), _pe(sensitivity=0.8, fpr=0.2, comparison=_cmp(parent_sensitivity=0.8,
                                                                                   parent_fpr=0.2)))  # fmt: skip
    assert checks["slo_kept[Cardiomegaly.recall]"].passed and checks["slo_kept[Cardiomegaly.fpr]"].passed
    below = _slo_checks(_report(), _pe(sensitivity=0.79, fpr=0.21, comparison=_cmp(parent_sensitivity=0.8,
                                                                                    parent_fpr=0.2)))  # fmt: skip
    assert not below["slo_kept[Cardiomegaly.recall]"].passed and not below["slo_kept[Cardiomegaly.fpr]"].passed


def test_a_site_already_breaching_its_slo_is_not_blamed_on_this_fix():
    checks = _slo_checks(_report(), _pe(sensitivity=0.5, fpr=0.5, comparison=_cmp(parent_sensitivity=0.6,
                                                                                   parent_fpr=0.4)))  # fmt: skip
    assert checks["slo_kept[Cardiomegaly.recall]"].passed and checks["slo_kept[Cardiomegaly.fpr]"].passed
    assert checks["slo_kept[Cardiomegaly.recall]"].detail.endswith("; SLO >= 0.8 kept")


def test_a_rate_without_an_slo_or_without_a_measurement_is_skipped_not_the_others():
    no_recall_slo = _policy(slos={"Cardiomegaly": {"min_recall": None}, "default": {"min_recall": None}})
    checks = _slo_checks(_report(), _pe(fpr=0.3, comparison=_cmp(parent_fpr=0.1)), no_recall_slo)
    assert "slo_kept[Cardiomegaly.recall]" not in checks and checks["slo_kept[Cardiomegaly.fpr]"].passed is False
    for r in (_pe(sensitivity=None, comparison=_cmp(parent_fpr=0.1)), _pe(comparison=_cmp(parent_sensitivity=None))):
        checks = _slo_checks(_report(), r)
        assert "slo_kept[Cardiomegaly.recall]" not in checks and "slo_kept[Cardiomegaly.fpr]" in checks
    for r in (_pe(fpr=None), _pe(comparison=_cmp(parent_fpr=None))):
        checks = _slo_checks(_report(), r)
        assert "slo_kept[Cardiomegaly.fpr]" not in checks and "slo_kept[Cardiomegaly.recall]" in checks


def test_without_the_target_or_its_parent_only_noninferiority_is_checked_elsewhere():
    absent = other_site_checks(_report(pathology="Pneumothorax"), _ev(_pe()), load_policy())
    assert [c.name for c in absent] == ["noninferiority[Cardiomegaly]"]
    orphan = other_site_checks(_report(), _ev(_pe(comparison=None)), load_policy())
    assert [c.name for c in orphan] == ["noninferiority[Cardiomegaly]"]


# -- judge_sites: the verdict over every site -------------------------------------------------------------
A_OK = _pe(comparison=_cmp(parent_sensitivity=0.9, parent_fpr=0.1))
A_BROKEN = _pe(sensitivity=0.7, comparison=_cmp(parent_sensitivity=0.9, parent_fpr=0.1))  # recall SLO newly breached


def _sites(a=A_OK, b=None):
    return [SiteEvaluation("eval-a", "site-a", _ev(a)), SiteEvaluation("eval-b", "site-b", _ev(b or _pe()))]


def test_no_evaluation_set_is_a_rejection():
    result = judge_sites(_report(), [], load_policy())
    assert result.passed is False and result.summary == "rejected: nothing to evaluate on"
    (check,) = result.checks
    assert (check.name, check.passed, check.detail) == ("evaluation", False, "the version has no evaluation data set")


def test_a_fix_good_everywhere_covers_every_site_and_keeps_each_check():
    result = judge_sites(_report(), _sites(), load_policy())
    assert (result.passed, result.scope, result.site, result.needs_approval) == (True, "all_sites", "", False)
    here = gate(_report(), _ev(_pe()), load_policy()).checks
    there = other_site_checks(_report(), _ev(A_OK), load_policy())
    assert [c.name for c in result.checks] == [f"{c.name}@eval-b" for c in here] + [f"{c.name}@eval-a" for c in there]
    for tagged, plain in zip(result.checks, here + tuple(there), strict=True):
        assert (tagged.passed, tagged.detail, tagged.value, tagged.limit, tagged.flag, tagged.binding) == (
            plain.passed, plain.detail, plain.value, plain.limit, plain.flag, True)  # fmt: skip
    assert result.summary == f"accepted (target_fixed@eval-b: {here[0].detail})"


def test_a_fix_that_breaks_another_site_is_promoted_for_its_own_site_only_or_rejected():
    result = judge_sites(_report(), _sites(a=A_BROKEN), load_policy())
    assert (result.passed, result.scope, result.site) == (True, "site", "site-b")
    broken = next(c for c in result.checks if c.name == "slo_kept[Cardiomegaly.recall]@eval-a")
    plain = next(c for c in other_site_checks(_report(), _ev(A_BROKEN), load_policy())
                 if c.name == "slo_kept[Cardiomegaly.recall]")  # fmt: skip
    note = " (not binding: promoted for site-b only; other sites keep their production)"
    assert (broken.passed, broken.binding, broken.detail) == (False, False, plain.detail + note)
    assert (broken.value, broken.limit, broken.flag) == (plain.value, plain.limit, plain.flag)
    assert result.summary == (f"accepted for site-b only (production@site-b) (target_fixed@eval-b: "
                              f"{result.checks[0].detail}; elsewhere {broken.name}: {broken.detail})")  # fmt: skip
    strict = judge_sites(_report(), _sites(a=A_BROKEN), _policy(site_scoped_promotion=False))
    assert (strict.passed, strict.scope, strict.site, strict.needs_approval) == (False, "all_sites", "", False)
    assert strict.summary == f"rejected: 1 check(s) failed (slo_kept[Cardiomegaly.recall]@eval-a: {plain.detail})"
    assert [c.name for c in strict.failed()] == ["slo_kept[Cardiomegaly.recall]@eval-a"]


def test_a_site_with_its_own_production_is_recorded_not_binding():
    result = judge_sites(_report(), _sites(a=A_BROKEN), _policy(site_scoped_promotion=False),
                         own_alias_sites=frozenset({"site-a"}))  # fmt: skip
    assert (result.passed, result.scope, result.site) == (True, "all_sites", "")
    there = [c for c in result.checks if c.name.endswith("@eval-a")]
    assert there and all(not c.binding and c.detail.endswith(" (not binding: site-a has its own production version)")
                         for c in there)  # fmt: skip
    assert all(c.binding and "not binding" not in c.detail for c in result.checks if c.name.endswith("@eval-b"))
    assert "; elsewhere slo_kept[Cardiomegaly.recall]@eval-a: " in result.summary


def test_a_report_from_a_site_with_its_own_production_moves_that_site_only():
    result = judge_sites(_report(), _sites(), load_policy(), own_alias_sites=frozenset({"site-b"}))
    assert (result.passed, result.scope, result.site) == (True, "site", "site-b")
    assert result.summary.startswith("accepted for site-b only (production@site-b) (target_fixed@eval-b: ")


def test_a_report_without_a_matching_site_is_judged_in_full_on_every_set():
    result = judge_sites(_report(site="site-z"), _sites(), load_policy())
    assert {c.name for c in result.checks} >= {"target_fixed@eval-a", "target_fixed@eval-b"}
    nowhere = judge_sites(_report(site=None), _sites(), load_policy())
    assert (nowhere.passed, nowhere.scope, nowhere.site) == (True, "all_sites", "")
    # a report without a site belongs with the evaluation sets without one; the sited ones are other sites
    unsited = [SiteEvaluation("eval-x", "", _ev(_pe())), SiteEvaluation("eval-a", "site-a", _ev(A_OK))]
    names = [c.name for c in judge_sites(_report(site=None), unsited, load_policy()).checks]
    assert "target_fixed@eval-x" in names and "target_fixed@eval-a" not in names
    assert "slo_kept[Cardiomegaly.recall]@eval-a" in names


def test_underpowered_checks_hold_the_verdict_for_a_person_and_are_named():
    b = _ev(_pe(), _weak("Hernia"), _weak("Fibrosis"))
    sites = [SiteEvaluation("eval-a", "site-a", _ev(A_OK, _weak("Mass"))), SiteEvaluation("eval-b", "site-b", b)]
    result = judge_sites(_report(), sites, load_policy(), own_alias_sites=frozenset({"site-a"}))
    assert result.passed and result.needs_approval
    assert result.summary.startswith(
        "accepted; held for approval: underpowered with no significant harm (Fibrosis, Hernia) (")  # Mass: not binding
    relaxed = judge_sites(_report(), sites, _policy(underpowered_needs_approval=False))
    assert relaxed.passed and not relaxed.needs_approval and "held for approval" not in relaxed.summary


def test_the_rejection_summary_names_the_first_three_failures():
    bad = _pe(sensitivity=0.1, fpr=0.9, comparison=_cmp(tp_loss=50, tp_loss_fraction=0.5))
    result = judge_sites(_report(), _sites(a=A_BROKEN, b=bad), _policy(site_scoped_promotion=False))
    failed = result.failed()
    assert len(failed) == 4 and [c.binding for c in failed] == [True] * 4
    assert result.summary == ("rejected: 4 check(s) failed ("
                              + "; ".join(f"{c.name}: {c.detail}" for c in failed[:3]) + ")")  # fmt: skip


def test_measured_metrics_reach_the_gate_at_the_report_site():
    report = _report(kind="footprint", metric="parameters", value=7_000_000, target=4_000_000)
    result = judge_sites(report, _sites(), load_policy(), measured={"parameters": 3_000_000})
    assert next(c for c in result.checks if c.name == "target_fixed@eval-b").passed


def test_a_failing_check_elsewhere_that_does_not_bind_is_shown_at_most_twice():
    broken_twice = _pe(sensitivity=0.7, fpr=0.3, comparison=_cmp(parent_sensitivity=0.9, parent_fpr=0.1))
    sites = [SiteEvaluation("eval-a", "site-a", _ev(broken_twice)),
             SiteEvaluation("eval-c", "site-c", _ev(replace(broken_twice))),
             SiteEvaluation("eval-b", "site-b", _ev(_pe()))]  # fmt: skip
    result = judge_sites(_report(), sites, load_policy())
    assert result.scope == "site" and result.summary.count("slo_kept[") == 2
    elsewhere = [c for c in result.checks if not c.passed and not c.binding]
    assert {c.name.split("@")[1] for c in elsewhere} == {"eval-a", "eval-c"}  # every other site is judged
    shown = "; ".join(f"{c.name}: {c.detail}" for c in elsewhere[:2])
    assert result.summary.endswith(f"; elsewhere {shown})")


def test_a_site_scoped_promotion_keeps_flags_and_notes_each_check_once():
    unchanged = _pe("Edema", comparison=_cmp(identical=True))
    sites = [SiteEvaluation("eval-a", "site-a", _ev(A_OK)),
             SiteEvaluation("eval-c", "site-c", _ev(A_BROKEN, unchanged)),
             SiteEvaluation("eval-b", "site-b", _ev(_pe()))]  # fmt: skip
    result = judge_sites(_report(), sites, load_policy(), own_alias_sites=frozenset({"site-a"}))
    assert (result.passed, result.scope) == (True, "site")
    own = [c for c in result.checks if c.name.endswith("@eval-a")]
    assert own and all(c.detail.endswith(" (not binding: site-a has its own production version)") for c in own)
    assert not any("promoted for site-b only" in c.detail for c in own)  # noted once, for its own reason
    edema = next(c for c in result.checks if c.name == "noninferiority[Edema]@eval-c")
    assert (edema.flag, edema.binding) == ("unchanged", False)
    assert edema.detail.endswith(" (not binding: promoted for site-b only; other sites keep their production)")
