"""The gate of a site group (`decision.gate.judge_group`): every grouped report's target is judged at the site,
on top of everything the lead report's gate judges; a missed second target rejects the candidate."""

from __future__ import annotations

import numpy as np

from decision.evaluate import evaluate_scores
from decision.gate import SiteEvaluation, judge_group, judge_sites
from decision.planner import ReportView
from policies import load_policy, parse_policy

NAMES = ["Cardiomegaly", "Edema", "Effusion", "Hernia"]


def _policy():
    raw = load_policy().model_dump(mode="json")
    raw["gate"]["recall_floor"] = 0.5
    return parse_policy(raw)


def _cohort(seed=0, n=800):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 4)) < 0.2).astype(float)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, 4)) + 2.0 * labels - 1.5)))
    pos = labels[:, 0] == 1
    probs[pos, 0] = rng.uniform(0.7, 1.0, pos.sum())
    probs[~pos, 0] = np.where(rng.random((~pos).sum()) < 0.75, rng.uniform(0, 0.3, (~pos).sum()),
                              rng.uniform(0.3, 0.55, (~pos).sum()))
    labels[:, 3] = 0.0
    return labels, probs


def _report(rid, pathology, target=0.1):
    return ReportView(rid, "cxr", 1, pathology, "false_positives", "fpr", 0.4, target, "site-b", True, 5)


def _sets(edema_threshold):
    labels, probs = _cohort()
    ev_b = evaluate_scores(labels, probs, probs.copy(), [0.6, edema_threshold, 0.5, 0.5], NAMES,
                           parent_thresholds=[0.3, 0.5, 0.5, 0.5])
    labels_a, probs_a = _cohort(seed=1)
    ev_a = evaluate_scores(labels_a, probs_a, probs_a.copy(), [0.6, edema_threshold, 0.5, 0.5], NAMES,
                           parent_thresholds=[0.3, 0.5, 0.5, 0.5])
    return [SiteEvaluation("eval-b", "site-b", ev_b), SiteEvaluation("eval-a", "site-a", ev_a)], ev_b


def test_every_grouped_target_is_judged_at_the_site_and_the_group_passes_when_all_are_met():
    sets, ev_b = _sets(0.5)
    assert ev_b["Edema"].fpr <= 0.1  # the second report's target is met at the candidate's Edema threshold
    result = judge_group([_report(1, "Cardiomegaly"), _report(2, "Edema")], sets, _policy())
    assert result.passed, result.summary
    names = {c.name for c in result.checks}
    assert {"target_fixed@eval-b", "target_fixed[Edema]@eval-b", "tp_loss[Edema]@eval-b",
            "recall_floor[Edema]@eval-b"} <= names
    edema = next(c for c in result.checks if c.name == "target_fixed[Edema]@eval-b")
    assert edema.value == ev_b["Edema"].fpr and edema.limit == 0.1
    lead_alone = judge_sites(_report(1, "Cardiomegaly"), sets, _policy())
    assert set(lead_alone.checks) <= set(result.checks)  # everything judged today is still judged
    assert "group at site-b (Cardiomegaly, Edema)" in result.summary


def test_a_missed_second_target_rejects_what_the_lead_alone_would_accept():
    sets, ev_b = _sets(0.2)
    assert ev_b["Edema"].fpr > 0.1  # near the boundary it is not: a lower Edema threshold lets negatives through
    lead_alone = judge_sites(_report(1, "Cardiomegaly"), sets, _policy())
    assert lead_alone.passed, lead_alone.summary
    result = judge_group([_report(1, "Cardiomegaly"), _report(2, "Edema")], sets, _policy())
    assert not result.passed
    assert [c.name for c in result.failed()] == ["target_fixed[Edema]@eval-b"]
    assert "target_fixed[Edema]@eval-b" in result.summary


def test_a_group_of_one_is_judged_as_today():
    sets, _ = _sets(0.5)
    one = judge_group([_report(1, "Cardiomegaly")], sets, _policy())
    assert one == judge_sites(_report(1, "Cardiomegaly"), sets, _policy())
