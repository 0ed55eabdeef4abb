"""The monitor reports only what its 95 % intervals show, checked against independently computed intervals.

A false-positive, false-negative or AUROC report needs the whole interval on the wrong side of the SLO:
a point estimate past the SLO whose interval still straddles it must not page anyone. The expected
verdicts come from scipy's Wilson interval (`binomtest(...).proportion_ci(method="wilson")`) and an
O(m*n) DeLong, never from `decision.monitor`. The counts are chosen where Wilson and the Wald
interval (p +- z sqrt(p(1-p)/n)) disagree, in both directions, so a Wald monitor fails these tests:
near a rate of 1/2 the Wald interval is too narrow (it pages on 22 false positives of 33 negatives),
near 0 or 1 it is shifted (it misses 11 of 30 against a 0.2 target).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from cxr.stats import delong_ci
from decision.monitor import MIN_NEGATIVES, MIN_POSITIVES, assess, wilson
from policies import load_policy, parse_policy
from tests import dates
from tests.decision.test_gate_margins import brute_delong

WINDOW = dates.week(1)
SLO = load_policy().slos
Z95 = norm.ppf(0.975)


def scipy_wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return float(ci.low), float(ci.high)


def wald(k: int, n: int) -> tuple[float, float]:
    p = k / n
    half = Z95 * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def _counts(tp=0, fn=0, fp=0, tn=0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores giving exactly these counts at threshold 0.5."""
    y = np.r_[np.ones(tp + fn), np.zeros(fp + tn)]
    s = np.r_[np.full(tp, 0.8), np.full(fn, 0.2), np.full(fp, 0.7), np.full(tn, 0.3)]
    return y, s


def _assess(columns: dict[str, tuple[np.ndarray, np.ndarray]], policy=None, **kw):
    """Run the monitor on one site; each pathology's column is padded with unlabelled rows."""
    n = max(len(y) for y, _ in columns.values())
    labels = np.full((n, len(columns)), np.nan)
    probs = np.full((n, len(columns)), 0.5)
    for j, (y, s) in enumerate(columns.values()):
        labels[: len(y), j], probs[: len(s), j] = y, s
    names = list(columns)
    return assess("cxr", 1, dict.fromkeys(names, 0.5), names, labels, probs, [f"img{i}" for i in range(n)],
                  ["site-b"] * n, policy or load_policy(), WINDOW, **kw)  # fmt: skip


def _kinds(reports, pathology):
    return sorted(r["kind"] for r in reports if r["pathology"] == pathology)


def test_the_wilson_interval_matches_scipy_including_the_edges():
    for n in (1, 10, 30, 33, 101):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for alpha in (0.05, 0.1, 0.5):
                assert wilson(k, n, alpha) == pytest.approx(scipy_wilson(k, n, alpha), abs=1e-12)
    assert wilson(0, 0) == (0.0, 1.0)
    # the closed form overshoots [0, 1] by an ulp at the edges (k = n = 16: 1.0000000000000002): clipped
    assert all(0.0 <= wilson(k, n)[0] <= wilson(k, n)[1] <= 1.0 for n in range(1, 60) for k in range(n + 1))
    assert wilson(16, 16)[1] == 1.0 and wilson(0, 21)[0] == 0.0


def test_false_positives_past_the_slo_with_a_straddling_interval_are_not_reported():
    k, n = 22, 33  # FPR 0.667 against Effusion's 0.5
    limit = SLO.for_pathology("Effusion").max_fpr
    assert k / n > limit and scipy_wilson(k, n)[0] <= limit < wald(k, n)[0]  # only a Wald monitor pages
    metrics, reports = _assess({"Effusion": _counts(tp=10, fp=k, tn=n - k)})
    assert "false_positives" not in _kinds(reports, "Effusion")
    m = metrics[0]
    assert m.fpr == k / n and m.fpr_ci == pytest.approx(scipy_wilson(k, n), abs=1e-12) and m.breaches == []


def test_missed_positives_below_the_slo_with_a_straddling_interval_are_not_reported():
    k, n = 3, 10  # recall 0.3 against Effusion's 0.6
    limit = SLO.for_pathology("Effusion").min_recall
    assert k / n < limit and wald(k, n)[1] < limit <= scipy_wilson(k, n)[1]
    metrics, reports = _assess({"Effusion": _counts(tp=k, fn=n - k, tn=40)})
    assert "false_negatives" not in _kinds(reports, "Effusion")
    assert metrics[0].recall == k / n and metrics[0].recall_ci == pytest.approx(scipy_wilson(k, n), abs=1e-12)


def test_a_clear_false_positive_breach_that_wald_misses_is_reported():
    k, n = 11, 30  # FPR 0.367 against Cardiomegaly's 0.2
    limit = SLO.for_pathology("Cardiomegaly").max_fpr
    lo, hi = scipy_wilson(k, n)
    assert wald(k, n)[0] <= limit < lo
    _, reports = _assess({"Cardiomegaly": _counts(tp=10, fp=k, tn=n - k)})
    (r,) = [r for r in reports if r["kind"] == "false_positives"]
    assert (r["pathology"], r["metric"], r["value"], r["target"]) == ("Cardiomegaly", "fpr", k / n, limit)
    assert r["counts"] == {"tp": 10, "fp": k, "tn": n - k, "fn": 0}
    assert f"(95% CI {lo:.3f}–{hi:.3f}) over {n} negatives at threshold 0.5000" in r["notes"]
    assert [c["label"] for c in r["cases"]] == [0] * k


def test_a_clear_recall_breach_that_wald_misses_is_reported():
    k, n = 5, 10  # recall 0.5 against Cardiomegaly's 0.8
    limit = SLO.for_pathology("Cardiomegaly").min_recall
    lo, hi = scipy_wilson(k, n)
    assert hi < limit <= wald(k, n)[1]
    _, reports = _assess({"Cardiomegaly": _counts(tp=k, fn=n - k, tn=40)})
    (r,) = [r for r in reports if r["kind"] == "false_negatives"]
    assert (r["metric"], r["value"], r["target"]) == ("recall", k / n, limit)
    assert f"recall {k / n:.3f} (95% CI {lo:.3f}–{hi:.3f}) over {n} positives" == r["notes"]
    assert [c["label"] for c in r["cases"]] == [1] * (n - k)


def _auroc_column(shift: float, m=20, n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(m), np.zeros(n)]
    return y, rng.normal(size=m + n) + shift * y


def test_an_auroc_below_the_slo_is_reported_only_when_the_whole_95_interval_is():
    limit = SLO.for_pathology("Effusion").min_auroc

    def hi(shift):
        y, s = _auroc_column(shift)
        return brute_delong(y, s)[2]

    low, high = -2.0, 2.0  # bisect the separation until the independent upper bound crosses the SLO
    assert hi(low) < limit <= hi(high)
    while high - low > 1e-4:
        mid = (low + high) / 2
        low, high = (mid, high) if hi(mid) < limit else (low, mid)
    y, s = _auroc_column(high)  # straddles: upper bound just at or above the SLO
    auc, lo95, hi95 = brute_delong(y, s)
    assert auc < limit - 0.1 and brute_delong(y, s, 0.5)[2] < limit <= hi95 < limit + 1e-3
    metrics, reports = _assess({"Effusion": (y, s)})
    assert "auroc_drop" not in _kinds(reports, "Effusion")
    assert (metrics[0].auroc, *metrics[0].auroc_ci) == pytest.approx((auc, max(lo95, 0.0), hi95), abs=1e-9)
    y, s = _auroc_column(low)  # breached: upper bound just below the SLO
    auc, lo95, hi95 = brute_delong(y, s)
    assert limit - 1e-3 < hi95 < limit
    _, reports = _assess({"Effusion": (y, s)})
    (r,) = [r for r in reports if r["kind"] == "auroc_drop"]
    assert (r["metric"], r["value"], r["target"], r["cases"]) == ("auroc", pytest.approx(auc), limit, [])
    assert f"AUROC {auc:.3f} (95% CI {max(lo95, 0.0):.3f}–{hi95:.3f}) over 20 positives / 60 negatives" == r["notes"]


def test_rates_need_the_minimum_number_of_cases_and_no_more():
    # every negative a false positive, every positive missed: breached whenever a rate is measured
    assert (MIN_POSITIVES, MIN_NEGATIVES) == (10, 30)
    both, reports = _assess({"Effusion": _counts(fn=MIN_POSITIVES, fp=MIN_NEGATIVES)})
    assert _kinds(reports, "Effusion") == ["auroc_drop", "false_negatives", "false_positives"]
    assert (both[0].recall, both[0].fpr, both[0].auroc) == (0.0, 1.0, 0.0)
    few_neg, reports = _assess({"Effusion": _counts(fn=MIN_POSITIVES, fp=MIN_NEGATIVES - 1)})
    assert _kinds(reports, "Effusion") == ["false_negatives"]
    assert few_neg[0].fpr is None and few_neg[0].auroc is None and few_neg[0].fp == MIN_NEGATIVES - 1
    few_pos, reports = _assess({"Effusion": _counts(fn=MIN_POSITIVES - 1, fp=MIN_NEGATIVES)})
    assert _kinds(reports, "Effusion") == ["false_positives"]
    assert few_pos[0].recall is None and few_pos[0].auroc is None and few_pos[0].fn == MIN_POSITIVES - 1


def test_a_wider_interval_level_reports_less():
    k, n = 12, 30  # FPR 0.4 against Cardiomegaly's 0.2: clear at 95 %, not at 99.99 %
    limit = SLO.for_pathology("Cardiomegaly").max_fpr
    assert scipy_wilson(k, n)[0] > limit >= scipy_wilson(k, n, 1e-4)[0]
    column = {"Cardiomegaly": _counts(tp=10, fp=k, tn=n - k)}
    assert "false_positives" in _kinds(_assess(column)[1], "Cardiomegaly")
    assert "false_positives" not in _kinds(_assess(column, alpha=1e-4)[1], "Cardiomegaly")


def _slo(pathology, **limits):
    raw = load_policy().model_dump(mode="json")
    raw["slos"]["pathologies"].setdefault(pathology, {}).update(limits)
    return parse_policy(raw)


def test_a_bound_exactly_at_the_slo_is_not_a_breach():
    # "the whole interval on the wrong side": a bound equal to the SLO still touches it
    fp = {"Cardiomegaly": _counts(tp=10, fp=11, tn=19)}
    lo = wilson(11, 30)[0]
    assert "false_positives" not in _kinds(_assess(fp, _slo("Cardiomegaly", max_fpr=lo))[1], "Cardiomegaly")
    assert "false_positives" in _kinds(_assess(fp, _slo("Cardiomegaly", max_fpr=np.nextafter(lo, 0)))[1],
                                       "Cardiomegaly")  # fmt: skip
    fn = {"Cardiomegaly": _counts(tp=5, fn=5, tn=40)}
    hi = wilson(5, 10)[1]
    assert "false_negatives" not in _kinds(_assess(fn, _slo("Cardiomegaly", min_recall=hi))[1], "Cardiomegaly")
    assert "false_negatives" in _kinds(_assess(fn, _slo("Cardiomegaly", min_recall=np.nextafter(hi, 1)))[1],
                                       "Cardiomegaly")  # fmt: skip
    y, s = _auroc_column(-0.5)
    top = delong_ci(y, s).hi
    assert "auroc_drop" not in _kinds(_assess({"Effusion": (y, s)}, _slo("Effusion", min_auroc=top))[1], "Effusion")
    assert "auroc_drop" in _kinds(_assess({"Effusion": (y, s)}, _slo("Effusion", min_auroc=np.nextafter(top, 1)))[1],
                                  "Effusion")  # fmt: skip


def test_a_score_at_the_threshold_is_called_positive():
    y = np.r_[np.ones(10), np.zeros(30)]
    metrics, _ = _assess({"Effusion": (y, np.full(40, 0.5))})
    m = metrics[0]
    assert (m.tp, m.fn, m.fp, m.tn) == (10, 0, 30, 0)


def test_every_site_and_pathology_is_assessed_on_its_own_cases():
    a_y, a_s = _counts(tp=10, fp=2, tn=28)  # site-a: fine
    b_y, b_s = _counts(tp=2, fn=8, fp=25, tn=5)  # site-b: bad at both rates
    labels = np.column_stack([np.r_[a_y, b_y], np.full(80, np.nan), np.r_[a_y, b_y]])
    probs = np.column_stack([np.r_[a_s, b_s], np.full(80, 0.9), np.r_[a_s, b_s]])
    sites = ["site-a"] * 40 + ["site-b"] * 40
    names = ["Cardiomegaly", "", "Effusion"]  # an unnamed output between two named ones is skipped
    metrics, reports = assess("cxr", 3, {"Cardiomegaly": 0.5, "Effusion": 0.4}, names, labels, probs,
                              [f"img{i}" for i in range(80)], sites, load_policy(), WINDOW)  # fmt: skip
    rows = {(m.site, m.pathology): m for m in metrics}
    assert list(rows) == [("site-a", "Cardiomegaly"), ("site-a", "Effusion"), ("site-b", "Cardiomegaly"),
                          ("site-b", "Effusion")]  # fmt: skip
    assert (rows["site-a", "Cardiomegaly"].tp, rows["site-a", "Cardiomegaly"].fp) == (10, 2)
    assert (rows["site-b", "Cardiomegaly"].tp, rows["site-b", "Cardiomegaly"].fp) == (2, 25)
    assert rows["site-b", "Effusion"].threshold == 0.4 and rows["site-a", "Cardiomegaly"].threshold == 0.5
    assert rows["site-a", "Cardiomegaly"].breaches == []
    assert rows["site-b", "Cardiomegaly"].breaches == ["false_positives", "false_negatives", "auroc_drop"]
    assert {(r["site"], r["pathology"], r["kind"]) for r in reports} == {
        ("site-b", p, k) for p in ("Cardiomegaly", "Effusion") for k in ("false_positives", "false_negatives",
                                                                       "auroc_drop")}  # fmt: skip
    for r in reports:
        assert (r["model"], r["version"], r["source"], r["window_start"], r["window_end"]) == ("cxr", 3, "monitor",
                                                                                            *WINDOW)  # fmt: skip
        assert r["counts"] == {"tp": 2, "fp": 25, "tn": 5, "fn": 8}
        assert all(c["image_id"] in {f"img{i}" for i in range(40, 80)} for c in r["cases"])


def test_case_evidence_is_the_worst_cases_first_capped_and_rounded():
    rng = np.random.default_rng(7)
    fn_scores = rng.uniform(0.0, 0.49, 10)
    y = np.r_[np.ones(10), np.zeros(80)]
    s = np.r_[fn_scores, rng.uniform(0.5, 1.0, 60) + 1e-7 * np.pi, np.full(20, 0.1)]  # 60 false positives
    _, reports = _assess({"Effusion": (y, s)})
    by_kind = {r["kind"]: r for r in reports}
    fn_cases = by_kind["false_negatives"]["cases"]  # the least confident misses first
    order = np.argsort(fn_scores)
    assert [c["image_id"] for c in fn_cases] == [f"img{i}" for i in order]
    assert [c["score"] for c in fn_cases] == [round(float(fn_scores[i]), 6) for i in order]
    assert all(c["label"] == 1 for c in fn_cases)
    fp_cases = by_kind["false_positives"]["cases"]  # the most confident false alarms, at most 50
    top = np.argsort(-s[10:70])[:50] + 10
    assert [c["image_id"] for c in fp_cases] == [f"img{i}" for i in top]
    assert [c["score"] for c in fp_cases] == [round(float(s[i]), 6) for i in top] and len(fp_cases) == 50
    assert fp_cases[0]["score"] != float(s[top[0]])  # rounded to 6 decimals, not left raw
    assert by_kind["auroc_drop"]["cases"] == [] and by_kind["auroc_drop"]["counts"] == {
        "tp": 0, "fp": 60, "tn": 20, "fn": 10}  # fmt: skip
    few = _assess({"Effusion": (y, s)}, max_cases=3)[1]
    assert [len(r["cases"]) for r in few if r["kind"] != "auroc_drop"] == [3, 3]


def test_every_interval_follows_the_requested_level():
    y, s = _auroc_column(0.3)
    y2, s2 = _counts(tp=6, fn=6, fp=12, tn=30)
    metrics, _ = _assess({"Effusion": (y, s), "Edema": (y2, s2)}, alpha=0.5)
    eff, ede = metrics
    _, lo, hi = brute_delong(y, s, 0.5)
    assert eff.auroc_ci == pytest.approx((lo, hi), abs=1e-9)
    assert ede.recall_ci == pytest.approx(scipy_wilson(6, 12, 0.5), abs=1e-12)
    assert ede.fpr_ci == pytest.approx(scipy_wilson(12, 42, 0.5), abs=1e-12)
