"""Subgroup monitoring (`decision.subgroup_monitor`): "Cardiomegaly FPR 0.41 on AP films at site-b" is filed when
the site as a whole passes; a group too small, undeclared, or covered by the site's own report files nothing.

The exact binomial p-values are checked against a direct sum of binomial coefficients in exact rational
arithmetic, never against the code's own scipy call; the whole-site verdict comes from `decision.monitor.assess`.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from decision.error_reports import parse_report
from decision.monitor import assess
from decision.subgroup_monitor import assess_subgroups, declared_settings, standing_report
from policies import load_policy, parse_policy
from tests import dates

WINDOW = dates.week(1)
NAMES = ["Cardiomegaly", "Effusion"]


def _policy(max_fpr=0.3, **subgroups):
    raw = load_policy().model_dump(mode="json")
    raw["slos"]["pathologies"]["Cardiomegaly"]["max_fpr"] = max_fpr
    raw["subgroups"].update(subgroups)
    return parse_policy(raw)


def _site(n_ap=300, n_pa=600, fpr_ap=0.41, fpr_pa=0.08, seed=0):
    """site-b: Cardiomegaly negatives with false positives at `fpr_ap` on AP films and `fpr_pa` on PA films
    (exact counts), 10 % positives everywhere, all caught; Effusion fine. Sex and age independent of errors."""
    rng = np.random.default_rng(seed)
    n_neg = {"AP": n_ap, "PA": n_pa}
    rows = []
    for view, fpr in (("AP", fpr_ap), ("PA", fpr_pa)):
        k = round(fpr * n_neg[view])
        for i in range(n_neg[view]):
            rows.append((view, 0, 0.8 if i < k else 0.2))
        for _ in range(n_neg[view] // 9):
            rows.append((view, 1, 0.9))
    rng.shuffle(rows := np.array(rows, dtype=object))
    n = len(rows)
    labels = np.column_stack([rows[:, 1].astype(float), (rng.random(n) < 0.1).astype(float)])
    probs = np.column_stack([rows[:, 2].astype(float), np.where(labels[:, 1] == 1, 0.9, 0.1)])
    sex = list(np.where(rng.random(n) < 0.5, "F", "M"))
    age = rng.uniform(20, 90, n)
    return labels, probs, [str(v) for v in rows[:, 0]], sex, age


def _run(policy, labels, probs, views, sex, age):
    n = len(views)
    ids, sites = [f"site-b/{i:08d}_000" for i in range(n)], ["site-b"] * n
    thresholds = {"Cardiomegaly": 0.5, "Effusion": 0.5}
    metrics, site_reports = assess("cxr", 1, thresholds, NAMES, labels, probs, ids, sites, policy, WINDOW)
    findings, reports = assess_subgroups("cxr", 1, thresholds, NAMES, labels, probs, ids, sex, age, views, sites,
                                         policy, WINDOW, site_reports=site_reports, site_metrics=metrics)
    return metrics, site_reports, findings, reports


def _binom_tail_ge(k, n, p):
    """P(X >= k), X ~ Bin(n, p), as an exact rational sum."""
    q = Fraction(p).limit_denominator(10**6)
    return float(sum(math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k, n + 1)))


def test_fpr_on_ap_films_at_site_b_is_filed_when_the_site_as_a_whole_passes():
    policy = _policy(max_fpr=0.3)
    metrics, site_reports, findings, reports = _run(policy, *_site())
    card = next(m for m in metrics if m.pathology == "Cardiomegaly")
    assert card.fpr < 0.3 and not site_reports  # the site as a whole meets its SLO: no whole-site report
    (r,) = reports
    assert (r["site"], r["subgroup"], r["pathology"], r["kind"]) == ("site-b", "view=AP", "Cardiomegaly",
                                                                     "false_positives")
    assert r["notes"].startswith("Cardiomegaly FPR 0.41 on AP films at site-b")
    assert f"the site as a whole: FPR {card.fpr:.3f}" in r["notes"]
    assert r["counts"] == {"tp": 33, "fp": 123, "tn": 177, "fn": 0} and r["value"] == pytest.approx(0.41)
    assert len(r["cases"]) == 50 and all(c["label"] == 0 and c["score"] == 0.8 for c in r["cases"])
    parse_report(r)  # the same validation as `decide ingest`
    ap = next(x for x in findings if x.subgroup == "view=AP" and x.pathology == "Cardiomegaly"
              and x.kind == "false_positives")
    assert ap.filed and ap.p_value == pytest.approx(_binom_tail_ge(123, 300, 0.3), rel=1e-9)
    tested = [x for x in findings if x.p_value is not None]
    assert ap.adjusted <= len(tested) * ap.p_value + 1e-15  # Holm never exceeds Bonferroni
    assert sum(x.filed for x in findings) == 1


def test_a_group_too_small_files_nothing():
    # 20 AP negatives, every one a false positive: below the monitor's 30 negatives, so not judged.
    policy = _policy(max_fpr=0.3)
    _, _, findings, reports = _run(policy, *_site(n_ap=20, fpr_ap=1.0))
    assert reports == []
    ap = next(x for x in findings if x.subgroup == "view=AP" and x.kind == "false_positives"
              and x.pathology == "Cardiomegaly")
    assert ap.p_value is None and "too small" in ap.reason and not ap.filed
    # ... and the policy's own minimum: 40 AP negatives but fewer positives than `min_positives` asks
    _, _, findings, reports = _run(_policy(max_fpr=0.3, min_positives=50), *_site(n_ap=40, fpr_ap=1.0))
    assert reports == [] and "policy minimum" in next(
        x for x in findings if x.subgroup == "view=AP" and x.pathology == "Cardiomegaly").reason


def test_only_declared_groups_are_judged():
    policy = _policy(max_fpr=0.3, attributes=["sex", "age_band", "site"])  # view not declared
    assert declared_settings(policy).attributes == ("sex", "age_band")  # a site's window: the site is not a group
    _, _, findings, reports = _run(policy, *_site())
    assert reports == [] and not any("view" in x.subgroup for x in findings)
    assert declared_settings(_policy(enabled=False)) is None
    assert _run(_policy(enabled=False), *_site())[3] == []


def test_no_subgroup_report_when_the_whole_site_report_is_filed():
    policy = _policy(max_fpr=0.3)
    _, site_reports, findings, reports = _run(policy, *_site(fpr_ap=0.6, fpr_pa=0.45))
    assert [(r["pathology"], r["kind"]) for r in site_reports] == [("Cardiomegaly", "false_positives")]
    assert reports == [] and not any(x.pathology == "Cardiomegaly" and x.kind == "false_positives" for x in findings)


def test_one_report_per_pathology_and_kind_the_coarsest_group():
    # sex x view declared: view=AP, sex=F&view=AP and sex=M&view=AP all breach; one report, for view=AP
    policy = _policy(max_fpr=0.3, intersections=[["sex", "view"]])
    _, _, findings, reports = _run(policy, *_site(n_ap=600, fpr_ap=0.45, n_pa=1200))
    (r,) = reports
    assert r["subgroup"] == "view=AP"
    significant = {x.subgroup for x in findings if x.adjusted is not None and x.adjusted <= 0.05}
    assert {"view=AP", "sex=F&view=AP", "sex=M&view=AP"} <= significant
    assert "also significant: sex=F&view=AP, sex=M&view=AP" in r["notes"]


def test_a_group_at_its_slo_is_not_reported():
    # AP films exactly at the 0.3 target over 300 negatives: no evidence of a breach
    _, _, findings, reports = _run(_policy(max_fpr=0.3), *_site(fpr_ap=0.3))
    assert reports == []
    ap = next(x for x in findings if x.subgroup == "view=AP" and x.kind == "false_positives"
              and x.pathology == "Cardiomegaly")
    assert ap.p_value == pytest.approx(_binom_tail_ge(90, 300, 0.3), rel=1e-9) and ap.p_value > 0.4


def test_an_open_report_stands_for_the_same_issue_in_later_windows():
    unresolved = {("site-b", "", "Cardiomegaly", "false_positives"): 7, ("site-b", "sex=F", "Effusion",
                                                                          "false_negatives"): 9}
    ap = {"site": "site-b", "subgroup": "view=AP", "pathology": "Cardiomegaly", "kind": "false_positives"}
    assert standing_report(ap, unresolved) == 7  # the site's open report covers its groups
    assert standing_report({**ap, "subgroup": "sex=F", "pathology": "Effusion", "kind": "false_negatives"},
                           unresolved) == 9
    assert standing_report({**ap, "subgroup": "", "pathology": "Effusion", "kind": "false_negatives"},
                           unresolved) is None  # a group's open report does not cover its whole site
    assert standing_report({**ap, "site": "site-a"}, unresolved) is None
