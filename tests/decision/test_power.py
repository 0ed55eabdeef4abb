"""The gate's power rule: Hanley–McNeil checked by simulation, underpowered checks under both policies,
and the per-site verdict (site-scoped promotion, sites with their own production)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from decision.evaluate import evaluate_scores
from decision.gate import SiteEvaluation, gate, judge_sites
from decision.planner import ReportView
from decision.power import assess_power, hanley_mcneil_variance, positives_needed
from policies import load_policy, parse_policy

NAMES = ["Cardiomegaly", "Effusion", "Hernia"]


def _policy(**gate):
    """The bundled policy, with the target's own rules (recall floor, lost true positives) out of the way."""
    raw = load_policy().model_dump(mode="json")
    raw["gate"].update({"recall_floor": 0.01, "max_tp_loss_fraction": None, **gate})
    return parse_policy(raw)


def test_hanley_mcneil_matches_a_simulation_of_exponential_scores():
    # Hanley & McNeil derived Q1, Q2 for negative-exponential score distributions: there the formula
    # is exact up to O(1/n). Positives ~ Exp(rate a), negatives ~ Exp(rate b): AUROC = b / (a + b).
    rng = np.random.default_rng(0)
    n1, n0, a, b = 12, 300, 1.0, 3.0
    auc = b / (a + b)
    reps = 4000
    pos = rng.exponential(1 / a, (reps, n1))
    neg = rng.exponential(1 / b, (reps, n0))
    est = (pos[:, :, None] > neg[:, None, :]).mean(axis=(1, 2))
    simulated = est.var(ddof=1)
    assert hanley_mcneil_variance(auc, n1, n0) == pytest.approx(simulated, rel=0.1)
    assert math.isinf(hanley_mcneil_variance(auc, 0, n0))


def test_positives_needed_is_the_first_count_that_shows_the_margin():
    auc, n_pos, n_neg, margin, alpha, rho = 0.7, 5, 1995, 0.02, 0.05, 0.95
    z = NormalDist().inv_cdf(1 - alpha / 2)
    need = positives_needed(auc, n_pos, n_neg, margin, alpha, rho)

    def half(n):  # independent: the same closed form written out here
        n0 = round(n * n_neg / n_pos)
        q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
        v = (auc * (1 - auc) + (n - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n * n0)
        return z * math.sqrt(2 * v * (1 - rho))

    assert half(need) <= margin < half(need - 1)
    p = assess_power(auc, n_pos, n_neg, margin, alpha, rho)
    assert p.underpowered and p.needed_positives == need
    assert p.sentence("Hernia", margin).startswith(f"Hernia: 5 positives; the margin -0.020 needs about {need:,}")
    assert not assess_power(auc, need, round(need * n_neg / n_pos), margin, alpha, rho).underpowered


def _cohort(seed=0, n=2000):
    """Cardiomegaly (the report's target) and Effusion well populated; Hernia with exactly 5 positives."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 3))
    labels[:, 0] = rng.random(n) < 0.1
    labels[:, 1] = rng.random(n) < 0.3
    labels[rng.choice(n, 5, replace=False), 2] = 1
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, 3)) + 2.0 * labels - 1.5)))
    return labels, probs


def _evaluate(labels, cand, parent):
    thr = [0.5, 0.5, 0.5]
    return evaluate_scores(labels, cand, parent, thr, NAMES, parent_thresholds=thr)


def _report(**kw):
    base = dict(id=1, model="cxr", version=1, pathology="Cardiomegaly", kind="auroc_drop", metric="auroc",
                value=0.5, target=0.6, site="site-b")
    return ReportView(**(base | kw))


def _hernia(result):
    return next(c for c in result.checks if c.name.startswith("noninferiority[Hernia]"))


def test_five_positives_and_an_identical_auroc_pass_on_no_harm_and_fail_under_block():
    labels, probs = _cohort()
    rng = np.random.default_rng(11)
    cand = probs.copy()
    pos, neg = np.flatnonzero(labels[:, 2] == 1), np.flatnonzero(labels[:, 2] == 0)
    # Shuffle Hernia's scores within each class: the same positive and negative scores, so exactly the same
    # AUROC, but every case scored differently — the paired interval is as wide as five positives make it.
    cand[pos, 2] = rng.permutation(probs[pos, 2])
    cand[neg, 2] = rng.permutation(probs[neg, 2])
    ev = _evaluate(labels, cand, probs)
    c = ev["Hernia"].comparison
    assert c.delta == pytest.approx(0.0, abs=1e-12) and not c.identical
    assert c.delta_lo < -0.02 < 0 < c.delta_hi  # the ordinary rule cannot pass it
    lenient = gate(_report(), ev, _policy(underpowered="no_significant_harm"))
    strict = gate(_report(), ev, _policy(underpowered="block"))
    assert lenient.passed and lenient.needs_approval and _hernia(lenient).flag == "underpowered"
    assert not strict.passed and [c.name for c in strict.failed()] == ["noninferiority[Hernia]"]
    for result in (lenient, strict):
        assert "Hernia: 5 positives; the margin -0.020 needs about" in _hernia(result).detail


def test_bit_identical_scores_are_unchanged_under_both_rules():
    labels, probs = _cohort()
    cand = probs.copy()
    cand[:, 0] = probs[:, 0] ** 0.9  # only the target moves
    ev = _evaluate(labels, cand, probs)
    for rule in ("no_significant_harm", "block"):
        result = gate(_report(), ev, _policy(underpowered=rule))
        assert result.passed and not result.needs_approval and _hernia(result).flag == "unchanged", rule


def test_a_changed_pathology_with_five_positives_and_no_harm_is_held_for_a_person():
    labels, probs = _cohort()
    rng = np.random.default_rng(3)
    cand = probs.copy()
    cand[:, 2] = np.clip(probs[:, 2] + rng.normal(0, 0.06, len(probs)), 0, 1)  # jitter, no systematic change
    ev = _evaluate(labels, cand, probs)
    c = ev["Hernia"].comparison
    assert c.delta_lo < -0.02 and c.delta_hi >= 0 and not c.identical  # the ordinary rule would fail it
    lenient = gate(_report(), ev, _policy())
    assert lenient.passed and lenient.needs_approval
    hernia = _hernia(lenient)
    assert hernia.flag == "underpowered" and "no significant harm" in hernia.detail and hernia.limit == 0.0
    assert "underpowered, no significant harm: Hernia" in lenient.summary
    assert not gate(_report(), ev, _policy(underpowered="block")).passed
    no_person = gate(_report(), ev, _policy(underpowered_needs_approval=False))
    assert no_person.passed and not no_person.needs_approval


def test_clear_harm_to_a_pathology_with_five_positives_fails_under_both_rules():
    labels, probs = _cohort()
    cand = probs.copy()
    hernia = labels[:, 2] == 1
    cand[hernia, 2] = 0.0  # every Hernia positive now scores below every negative
    ev = _evaluate(labels, cand, probs)
    assert ev["Hernia"].comparison.delta_hi < 0  # the whole interval lies on the harmful side
    for rule in ("no_significant_harm", "block"):
        result = gate(_report(), ev, _policy(underpowered=rule))
        assert not result.passed and [c.name for c in result.failed()] == ["noninferiority[Hernia]"], rule


def test_a_well_powered_pathology_is_judged_on_the_lower_bound_as_before():
    labels, probs = _cohort()
    cand = probs.copy()
    cand[:, 1] = np.clip(probs[:, 1] + np.random.default_rng(5).normal(0, 0.25, len(probs)), 0, 1)
    ev = _evaluate(labels, cand, probs)
    effusion = next(c for c in gate(_report(), ev, _policy()).checks if c.name == "noninferiority[Effusion]")
    assert effusion.flag is None and effusion.limit == -0.02
    assert effusion.passed == (ev["Effusion"].comparison.delta_lo >= -0.02)


# -- per site ------------------------------------------------------------------------------------------
def _site_sets(break_site_a: bool):
    labels, probs = _cohort(1)
    cand = probs.copy()
    cand[:, 0] = probs[:, 0] ** 0.9
    if break_site_a:
        cand[:, 1] = np.random.default_rng(7).random(len(probs))  # Effusion ruined on site-a's set
    ev_a = _evaluate(labels, cand, probs)
    ev_b = _evaluate(labels, probs ** 0.9, probs)
    return [SiteEvaluation("eval-a", "site-a", ev_a), SiteEvaluation("eval-b", "site-b", ev_b)]


def test_a_fix_that_passes_everywhere_covers_every_site():
    verdict = judge_sites(_report(), _site_sets(False), _policy())
    assert verdict.passed and verdict.scope == "all_sites" and verdict.site == ""
    assert {c.name.split("@")[1] for c in verdict.checks} == {"eval-a", "eval-b"}


def test_a_fix_that_harms_another_site_goes_to_its_own_site_only_or_nowhere():
    sets = _site_sets(True)
    verdict = judge_sites(_report(), sets, _policy())
    assert verdict.passed and verdict.scope == "site" and verdict.site == "site-b"
    elsewhere = [c for c in verdict.checks if c.name.endswith("@eval-a") and not c.passed]
    assert elsewhere and not any(c.binding for c in elsewhere)  # recorded, not binding
    assert "for site-b only (production@site-b)" in verdict.summary
    strict = judge_sites(_report(), sets, _policy(site_scoped_promotion=False))
    assert not strict.passed and any(c.name.startswith("noninferiority[Effusion]@eval-a") for c in strict.failed())


def test_a_site_with_its_own_production_is_not_judged_by_this_promotion():
    verdict = judge_sites(_report(), _site_sets(True), _policy(site_scoped_promotion=False),
                          own_alias_sites=frozenset({"site-a"}))
    assert verdict.passed and verdict.scope == "all_sites"
    assert all(not c.binding for c in verdict.checks if c.name.endswith("@eval-a"))
    own = judge_sites(_report(), _site_sets(False), _policy(), own_alias_sites=frozenset({"site-b"}))
    assert own.scope == "site" and own.site == "site-b"  # the report's site moves its own alias


def test_one_positive_gives_no_interval_and_a_person_must_judge():
    labels, probs = _cohort()
    labels[:, 2] = 0
    labels[0, 2] = 1  # a single Hernia positive: DeLong has no interval
    cand = probs.copy()
    cand[0, 2] = 0.0  # and the candidate now ranks it last
    ev = _evaluate(labels, cand, probs)
    c = ev["Hernia"].comparison
    assert c.delta_lo is None and c.delta < 0
    lenient = gate(_report(), ev, _policy())
    assert lenient.passed and lenient.needs_approval
    assert "too few cases to judge harm" in _hernia(lenient).detail
    assert not gate(_report(), ev, _policy(underpowered="block")).passed
