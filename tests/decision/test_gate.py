"""The gate: accepts a real fix, rejects harm elsewhere, lost true positives, a missed target, missing evidence."""

from __future__ import annotations

import numpy as np
import pytest

from decision.evaluate import evaluate_scores
from decision.gate import gate
from decision.planner import ReportView
from policies import load_policy, parse_policy

NAMES = ["Cardiomegaly", "Edema", "Effusion", "Hernia"]


def _cohort(seed=0, n=800):
    """Labels and parent probabilities; Cardiomegaly well separated but with borderline negatives."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 4)) < 0.2).astype(float)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, 4)) + 2.0 * labels - 1.5)))
    pos = labels[:, 0] == 1
    probs[pos, 0] = rng.uniform(0.7, 1.0, pos.sum())
    neg = ~pos
    probs[neg, 0] = np.where(rng.random(neg.sum()) < 0.75, rng.uniform(0, 0.3, neg.sum()),
                             rng.uniform(0.3, 0.55, neg.sum()))  # fmt: skip
    labels[:, 3] = 0.0  # Hernia: no positives in this split
    return labels, probs


def _report(**kw) -> ReportView:
    base = dict(id=7, model="chexnet", version=2, pathology="Cardiomegaly", kind="false_positives", metric="fpr",
                value=0.25, target=0.1, has_case_evidence=True, n_cases=12)  # fmt: skip
    base.update(kw)
    return ReportView(**base)


def _evaluate(labels, cand, parent, cand_thr, parent_thr=0.3):
    thr = [cand_thr, 0.5, 0.5, 0.5]
    return evaluate_scores(labels, cand, parent, thr, NAMES, parent_thresholds=[parent_thr, 0.5, 0.5, 0.5])


def test_threshold_fix_that_meets_the_target_is_accepted():
    labels, probs = _cohort()
    ev = _evaluate(labels, probs, probs.copy(), cand_thr=0.6)
    assert ev["Cardiomegaly"].comparison.parent_fpr > 0.2  # the parent shows the reported problem
    result = gate(_report(), ev, load_policy())
    assert result.passed, result.summary
    names = [c.name for c in result.checks]
    assert names == ["target_fixed", "noninferiority[Edema]", "noninferiority[Effusion]", "noninferiority[Hernia]",
                     "tp_loss", "recall_floor"]  # fmt: skip
    target = result.checks[0]
    assert target.value == ev["Cardiomegaly"].fpr and target.limit == 0.1
    assert result.checks[1].value == 0.0  # identical scores: the interval is exactly [0, 0]
    assert "not checked" in result.checks[3].detail and result.checks[3].passed
    assert result.summary.startswith("Accepted: all 6 checks passed")


def test_harm_to_another_pathology_beyond_the_margin_is_rejected():
    labels, probs = _cohort()
    cand = probs.copy()
    cand[:, 1] = np.random.default_rng(9).random(len(cand))  # Edema ruined
    result = gate(_report(), _evaluate(labels, cand, probs, cand_thr=0.6), load_policy())
    assert not result.passed
    assert [c.name for c in result.failed()] == ["noninferiority[Edema]"]
    edema = result.failed()[0]
    # random scores are decorrelated from the parent's: the measured paired interval is too wide to ever show
    # the margin (underpowered), so the check is judged on harm, and its whole interval lies below zero
    assert edema.flag == "underpowered" and edema.limit == 0.0 and edema.value < -0.02
    assert "significant harm: the interval excludes zero" in edema.detail
    assert result.summary.startswith("Rejected: 1 of 6 checks failed") and "Edema" in result.summary


def test_losing_true_positives_and_recall_is_rejected():
    labels, probs = _cohort()
    result = gate(_report(), _evaluate(labels, probs, probs.copy(), cand_thr=0.8), load_policy())
    failed = {c.name: c for c in result.failed()}
    assert set(failed) == {"tp_loss", "recall_floor"}
    assert failed["tp_loss"].value > 0 and failed["tp_loss"].limit == load_policy().gate.max_tp_loss_fraction
    assert failed["recall_floor"].value < 0.8 == failed["recall_floor"].limit


def test_absolute_tp_loss_cap_applies_too():
    labels, probs = _cohort()
    data = load_policy().model_dump()
    data["gate"].update(max_tp_loss=0, max_tp_loss_fraction=None)
    ev = _evaluate(labels, probs, probs.copy(), cand_thr=0.72)
    lost = ev["Cardiomegaly"].comparison.tp_loss
    assert lost > 0
    check = next(c for c in gate(_report(), ev, parse_policy(data)).checks if c.name == "tp_loss")
    assert not check.passed and check.value == lost and check.limit == 0


def test_a_missed_target_fails_unless_the_policy_accepts_an_improvement():
    labels, probs = _cohort()
    ev = _evaluate(labels, probs, probs.copy(), cand_thr=0.4)  # FPR about 0.15: better, not good enough
    strict = gate(_report(), ev, load_policy())
    assert [c.name for c in strict.failed()] == ["target_fixed"]
    assert "missed" in strict.failed()[0].detail
    data = load_policy().model_dump()
    data["gate"].update(target_rule="improve", min_improvement=0.05)
    lenient = gate(_report(), ev, parse_policy(data))
    assert lenient.passed, lenient.summary
    parent_fpr = ev["Cardiomegaly"].comparison.parent_fpr
    assert lenient.checks[0].limit == pytest.approx(parent_fpr - 0.05)


def test_without_a_parent_the_gate_fails_closed():
    labels, probs = _cohort()
    ev = evaluate_scores(labels, probs, None, [0.6, 0.5, 0.5, 0.5], NAMES)
    result = gate(_report(), ev, load_policy())
    failed = {c.name for c in result.failed()}
    assert {"noninferiority", "tp_loss", "noninferiority[Edema]"} <= failed and not result.passed


def test_false_negative_report_is_judged_on_recall_against_the_slo():
    labels, probs = _cohort()
    ev = _evaluate(labels, probs, probs.copy(), cand_thr=0.6)
    report = _report(kind="false_negatives", metric="missed_cases", value=0.5, target=None)
    target = gate(report, ev, load_policy()).checks[0]
    assert target.passed and target.limit == 0.8 and target.value == ev["Cardiomegaly"].sensitivity
    assert "recall" in target.detail


def test_metrics_from_outside_the_evaluation_come_through_measured():
    labels, probs = _cohort()
    ev = _evaluate(labels, probs, probs.copy(), cand_thr=0.3, parent_thr=0.3)
    footprint = _report(kind="footprint", metric="parameters", value=6_966_034, target=4_000_000)
    ok = gate(footprint, ev, load_policy(), measured={"parameters": 3_383_248})
    assert ok.checks[0].passed and ok.checks[0].value == 3_383_248
    unknown = gate(_report(kind="calibration_drift", metric="ece", value=0.12, target=0.05), ev, load_policy())
    assert not unknown.checks[0].passed and "cannot be computed" in unknown.checks[0].detail


def test_intervals_at_another_level_than_the_policy_fail():
    labels, probs = _cohort()
    thr = [0.6, 0.5, 0.5, 0.5]
    ev = evaluate_scores(labels, probs, probs.copy(), thr, NAMES, parent_thresholds=[0.3, 0.5, 0.5, 0.5], alpha=0.2)
    assert [c.name for c in gate(_report(), ev, load_policy()).failed()] == ["interval_level"]


def test_a_target_missing_from_the_evaluation_fails():
    labels, probs = _cohort()
    ev = _evaluate(labels, probs, probs.copy(), cand_thr=0.6)
    result = gate(_report(pathology="Pneumothorax"), ev, load_policy())
    assert {"target_fixed", "tp_loss", "recall_floor"} <= {c.name for c in result.failed()}
