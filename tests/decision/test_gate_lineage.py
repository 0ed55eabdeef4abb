"""No margin creep: a chain of promotions, each within the margin against its parent, is stopped by the
comparison with the site's authorised baseline once the cumulative margin is passed.

The chain is synthetic scores (no training): Edema's scores get noisier at every step, each noise level
found by bisection on scikit-learn's AUROC so that every step loses 0.015 (within the -0.02 margin against
its parent, whose interval is narrow because consecutive versions are highly correlated). The expected
verdict at every step comes from the independent O(m*n) paired DeLong of `test_gate_margins`.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from decision.evaluate import evaluate_scores
from decision.gate import SiteEvaluation, judge_sites
from decision.gate_lineage import BaselineComparison, Sequestration, patient_digests, sequestration_check
from decision.planner import ReportView
from policies import load_policy
from tests.decision.test_gate_margins import brute_paired

NAMES = ["Cardiomegaly", "Edema"]
STEP = 0.015
BASELINE = "cxr:1 (override by alice: baseline)"


@pytest.fixture(scope="module")
def chain():
    """Labels and the scores of the baseline (step 0) and of seven candidates, each 0.015 worse on Edema."""
    rng = np.random.default_rng(0)
    n = 6000
    labels = (rng.random((n, 2)) < 0.25).astype(float)
    card = np.where(labels[:, 0] == 1, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.5, n))  # FPR 0 at 0.55
    edema, noise = rng.normal(size=n) + 1.5 * labels[:, 1], rng.normal(size=n)
    y = labels[:, 1] == 1

    def auc(sigma):
        return roc_auc_score(y, expit(edema + sigma * noise))

    sigmas = [0.0]
    for k in range(1, 8):
        lo, hi = sigmas[-1], 5.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if auc(0.0) - auc(mid) < STEP * k else (lo, mid)
        sigmas.append(lo)
    scores = [np.column_stack([card, expit(edema + s * noise)]) for s in sigmas]
    return labels, scores


def _report() -> ReportView:
    return ReportView(id=1, model="cxr", version=1, pathology="Cardiomegaly", kind="false_positives", metric="fpr",
                      value=0.3, target=0.1, site="site-a", has_case_evidence=False, n_cases=0)


def _evaluate(labels, cand, other):
    return evaluate_scores(labels, cand, other, [0.55, 0.5], NAMES, parent_thresholds=[0.55, 0.5])


def test_a_chain_each_within_the_margin_is_stopped_once_the_cumulative_margin_is_passed(chain):
    labels, scores = chain
    policy = load_policy()
    margin, cumulative = policy.gate.noninferiority_margin, policy.gate.cumulative_margin
    assert (margin, cumulative) == (0.02, 0.05)
    y = labels[:, 1] == 1
    parent, verdicts = 0, []
    for k in range(1, len(scores)):
        cand = scores[k]
        site = SiteEvaluation("eval-a", "site-a", _evaluate(labels, cand, scores[parent]),
                              baseline=BaselineComparison(BASELINE, _evaluate(labels, cand, scores[0])))
        verdict = judge_sites(_report(), [site], policy)
        checks = {c.name: c for c in verdict.checks}
        verdicts.append((k, verdict, checks))
        # the independent reference: every step is within the margin against its parent ...
        _, step_lo, _ = brute_paired(y, cand[:, 1], scores[parent][:, 1])
        assert step_lo >= -margin and checks["noninferiority[Edema]@eval-a"].passed
        # ... and the authorised-baseline check agrees with the brute-force interval against step 0
        drift, base_lo, _ = brute_paired(y, cand[:, 1], scores[0][:, 1])
        assert drift == pytest.approx(-STEP * k, abs=1e-3)
        base = checks["baseline_noninferiority[Edema]@eval-a"]
        assert base.value == pytest.approx(base_lo, abs=1e-9) and base.limit == -cumulative
        assert base.passed == bool(base_lo >= -cumulative)
        assert BASELINE in base.detail
        if not verdict.passed:
            break
        parent = k  # promoted: the next candidate is made from it
    stopped, verdict, checks = verdicts[-1]
    # Two steps (-0.030) stay within -0.05; the third (-0.045, lower bound about -0.052) is refused, by the
    # baseline check alone: against its parent it lost only 0.015, like every step before it.
    assert stopped == 3
    assert [c.name for c in verdict.failed()] == ["baseline_noninferiority[Edema]@eval-a"]
    assert "baseline_noninferiority[Edema]" in verdict.summary and BASELINE in verdict.summary
    assert all(v.passed for _, v, _ in verdicts[:-1])


def test_without_the_baseline_comparison_the_same_chain_walks_on(chain):
    """What the check prevents: judged against the parent alone, every step of the chain is promoted."""
    labels, scores = chain
    policy = load_policy()
    for k in range(1, len(scores)):
        verdict = judge_sites(_report(), [SiteEvaluation("eval-a", "site-a", _evaluate(labels, scores[k],
                                                                                           scores[k - 1]))], policy)
        assert verdict.passed, verdict.summary
    drift = roc_auc_score(labels[:, 1], scores[-1][:, 1]) - roc_auc_score(labels[:, 1], scores[0][:, 1])
    assert drift == pytest.approx(-STEP * (len(scores) - 1), abs=1e-3)


def test_a_baseline_without_the_pathology_fails_closed(chain):
    labels, scores = chain
    base = scores[0].copy()
    base[:, 1] = np.nan  # the authorised version has no Edema output
    site = SiteEvaluation("eval-a", "site-a", _evaluate(labels, scores[1], scores[0]),
                          baseline=BaselineComparison(BASELINE, _evaluate(labels, scores[1], base)))
    verdict = judge_sites(_report(), [site], load_policy())
    [failed] = verdict.failed()
    assert failed.name == "baseline_noninferiority[Edema]@eval-a" and "no output of the baseline" in failed.detail


def test_sequestration_counts_shared_patients_by_digest():
    training = patient_digests(["p1", "p2", "p3", "p4"])
    evaluation = patient_digests(["p3", "p4", "p5"])
    assert all(len(d) == 64 and d not in ("p3", "p4") for d in evaluation)
    s = Sequestration.of(training, evaluation)
    assert (s.training_patients, s.evaluation_patients, s.overlap) == (4, 3, 2)
    check = sequestration_check(s)
    assert (check.name, check.passed, check.value, check.limit) == ("sequestration", False, 2.0, 0.0)
    assert check.detail.startswith("2 of the evaluation set's 3 patients")
    clean = sequestration_check(Sequestration.of(training, patient_digests(["p5", "p6"])))
    assert clean.passed and clean.value == 0.0


def test_a_sequestration_failure_elsewhere_is_binding_like_any_other_site_check(chain):
    labels, scores = chain
    here = SiteEvaluation("eval-a", "site-a", _evaluate(labels, scores[1], scores[0]),
                          sequestration=Sequestration(100, 50, 0))
    there = SiteEvaluation("eval-b", "site-b", _evaluate(labels, scores[1], scores[0]),
                           sequestration=Sequestration(100, 40, 7))
    policy = load_policy().model_copy(update={"gate": load_policy().gate.model_copy(
        update={"site_scoped_promotion": False})})
    verdict = judge_sites(_report(), [here, there], policy)
    assert not verdict.passed
    assert [c.name for c in verdict.failed()] == ["sequestration@eval-b"]
    assert "7 of the evaluation set's 40 patients" in verdict.summary
