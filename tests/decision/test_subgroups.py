"""Per-subgroup evaluation, checked against Fairlearn's MetricFrame, a brute-force reading of "positives
needed", and simulations of the interval guarantees."""

from __future__ import annotations

import functools
import math
import warnings
from statistics import NormalDist
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, count, false_positive_rate
from sklearn.metrics import recall_score, roc_auc_score

from cxr.errors import InvalidInput
from cxr.film_attributes import film_attributes, nih_row_key
from cxr.stats import delong_ci
from decision.power import hanley_mcneil_variance
from decision.subgroups import (
    SubgroupInput,
    SubgroupSettings,
    age_band_labels,
    evaluate_subgroups,
    group_columns,
    positives_for_half_width,
)

SETTINGS = SubgroupSettings(min_positives=10, min_negatives=10, margin=0.05)


def _cohort(rng, n=900):
    sex = rng.choice(["F", "M"], n)
    age = rng.integers(18, 95, n).astype(float)
    age[rng.random(n) < 0.02] = np.nan  # a few unknown ages
    view = rng.choice(["AP", "PA"], n, p=[0.3, 0.7])
    site = rng.choice(["site-a", "site-b"], n)
    y = (rng.random((n, 2)) < [0.25, 0.1]).astype(float)
    y[rng.random((n, 2)) < 0.1] = np.nan  # unlabelled cases
    s = 1 / (1 + np.exp(-(rng.normal(size=(n, 2)) + 1.2 * np.nan_to_num(y) - 1.0 + 0.3 * (view == "AP")[:, None])))
    return sex, age, view, site, y, s


def test_age_bands_are_half_open_with_unknown():
    got = age_band_labels(np.array([1, 39, 40, 64, 65, 100, np.nan]), [40, 65])
    assert got == ["<40", "<40", "40-64", "40-64", "65+", "65+", "unknown"]


def test_unknown_attribute_is_refused():
    with pytest.raises(InvalidInput):
        group_columns(["F"], [50], ["PA"], ["a"], SubgroupSettings(attributes=("race",)))


def test_point_metrics_and_counts_match_fairlearn_metricframe():
    rng = np.random.default_rng(7)
    sex, age, view, site, y, s = _cohort(rng)
    cols = group_columns(sex, age, view, site, SETTINGS)
    thresholds = [0.45, 0.3]
    got = evaluate_subgroups(y, s, thresholds, ["Effusion", "Mass"], SubgroupInput(cols, SETTINGS))
    by_key = {(g.pathology, g.attribute, g.group): g for g in got}
    bands = np.array(age_band_labels(age, SETTINGS.age_bands))
    features = {"sex": pd.Series(sex), "age_band": pd.Series(bands), "view": pd.Series(view),
                "site": pd.Series(site), "sex & age_band": pd.DataFrame({"sex": sex, "age_band": bands})}
    assert set(cols) == set(features)
    checked = 0
    warnings.simplefilter("ignore")  # sklearn warns on the groups where a metric is undefined
    for j, name in enumerate(["Effusion", "Mass"]):
        known = ~np.isnan(y[:, j])
        yt, sc = y[known, j].astype(int), s[known, j]
        for attr, feat in features.items():
            f = feat[known].reset_index(drop=True)
            recall = functools.partial(recall_score, zero_division=np.nan)
            mf = MetricFrame(metrics={"recall": recall, "fpr": false_positive_rate, "count": count,
                                      "n_pos": lambda a, b: int(np.sum(a))},
                             y_true=yt, y_pred=(sc >= thresholds[j]).astype(int), sensitive_features=f)
            auc = MetricFrame(metrics=roc_auc_score, y_true=yt, y_pred=sc, sensitive_features=f)
            for key, row in mf.by_group.iterrows():
                group = " & ".join(key) if isinstance(key, tuple) else key
                g = by_key[(name, attr, group)]
                assert g.n == row["count"] and g.n_pos == row["n_pos"] and g.n_neg == g.n - g.n_pos
                # undefined (no positives / no negatives in the group): NaN there, None here
                for ours, ref in ((g.recall, row["recall"]), (g.fpr, row["fpr"]), (g.auroc, auc.by_group.loc[key])):
                    assert ours is None if np.isnan(ref) else ours == pytest.approx(ref, abs=1e-12)
                checked += 1
    assert checked >= 2 * (2 + 4 + 2 + 2 + 8)


def test_group_interval_is_delong_on_the_groups_rows_and_every_group_is_kept():
    rng = np.random.default_rng(3)
    sex, age, view, site, y, s = _cohort(rng, 400)
    cols = group_columns(sex, age, view, site, SETTINGS)
    got = evaluate_subgroups(y, s, [0.5, 0.5], ["Effusion", "Mass"], SubgroupInput(cols, SETTINGS))
    for g in got:
        rows = np.asarray(cols[g.attribute]) == g.group
        j = ["Effusion", "Mass"].index(g.pathology)
        known = rows & ~np.isnan(y[:, j])
        if g.n_pos and g.n_neg:
            ci = delong_ci(y[known, j], s[known, j])
            assert (g.auroc, g.auroc_lo, g.auroc_hi) == pytest.approx((ci.auc, ci.lo, ci.hi))
    # every (pathology, attribute, group) present in the data appears, small or not
    want = {(p, a, v) for p in ("Effusion", "Mass") for a, col in cols.items() for v in set(col)}
    assert {(g.pathology, g.attribute, g.group) for g in got} == want
    small = [g for g in got if not g.judgeable]
    assert small, "a 400-film cohort split eight ways has groups below 10 Mass positives"
    for g in small:
        assert g.reason.startswith("too small to judge") and g.positives_needed is not None
        assert "positives would make its AUROC interval ±0.050" in g.sentence()


def test_positives_needed_is_the_first_count_whose_half_width_reaches_the_margin():
    z = NormalDist().inv_cdf(0.975)
    for auc, n_pos, n_neg, margin in [(0.8, 4, 200, 0.05), (0.9, 12, 30, 0.02), (0.65, 1, 9, 0.1)]:
        need = positives_for_half_width(auc, n_pos, n_neg, margin, 0.05)
        ratio = n_neg / n_pos

        def half(n, auc=auc, ratio=ratio):
            return z * math.sqrt(hanley_mcneil_variance(auc, n, max(1, round(n * ratio))))

        first = next(n for n in range(1, 200_000) if half(n) <= margin)  # brute force, independent of bisection
        assert need == first and half(need) <= margin
        assert need == 1 or half(need - 1) > margin


def test_no_positives_borrows_the_pathologys_prevalence():
    a = positives_for_half_width(0.8, 0, 50, 0.05, 0.05, prevalence=0.2)
    b = positives_for_half_width(0.8, 1, 4, 0.05, 0.05)
    assert a == b


def test_delong_interval_per_group_covers_the_true_auc_in_simulation():
    # binormal scores, unit variances, separation d: true AUC = Phi(d / sqrt 2)
    rng, d, reps, hits = np.random.default_rng(11), 1.0, 300, 0
    true_auc = NormalDist().cdf(d / math.sqrt(2))
    for _ in range(reps):
        n = 240
        grp = np.where(rng.random(n) < 0.5, "F", "M")
        y = (rng.random(n) < 0.5).astype(float)
        s = rng.normal(size=n) + d * y
        g = next(e for e in evaluate_subgroups(y[:, None], s[:, None], [0.5], ["X"],
                                               SubgroupInput({"sex": grp}, SETTINGS)) if e.group == "F")
        hits += g.auroc_lo <= true_auc <= g.auroc_hi
    # nominal 95%; three Monte Carlo standard errors of slack
    assert hits / reps >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / reps)


def test_clopper_pearson_recall_interval_holds_at_small_group_sizes():
    rng, reps, hits, true_recall = np.random.default_rng(5), 1000, 0, 0.8
    for _ in range(reps):
        y = np.ones(12)
        s = (rng.random(12) < true_recall).astype(float)  # called positive with probability 0.8
        (g,) = evaluate_subgroups(y[:, None], s[:, None], [0.5], ["X"], SubgroupInput({"view": ["AP"] * 12}))
        hits += g.recall_lo <= true_recall <= g.recall_hi
    assert hits / reps >= 0.95  # exact: at least nominal at every n (up to Monte Carlo noise well below this)


def test_film_attributes_follow_the_nih_row_of_each_phantom_film():
    meta = SimpleNamespace(image_index=np.array(["00000001_000.png", "00000002_000.png"]),
                           male=np.array([True, False]), age=np.array([70, 33]), view_ap=np.array([True, False]))
    fa = film_attributes(["site-a/00000001_000", "00000002_000.png", "other.png"], ["AP", "", ""],
                         ["site-a", "nih", ""], nih_meta=meta)
    assert fa.sex == ("M", "F", "unknown") and fa.view == ("AP", "PA", "unknown")
    assert fa.age[:2].tolist() == [70.0, 33.0] and math.isnan(fa.age[2]) and fa.matched == 2
    assert fa.site == ("site-a", "nih", "unknown")
    assert nih_row_key("site-c/00012345_007") == "00012345_007.png"


def test_real_phantom_rows_carry_real_nih_demographics():
    pytest.importorskip("torchxrayvision")
    from cxr.nih import load_nih_metadata

    meta = load_nih_metadata()
    r = 1234
    iid = f"site-b/{str(meta.image_index[r]).removesuffix('.png')}"
    fa = film_attributes([iid], ["AP" if meta.view_ap[r] else "PA"], ["site-b"])
    assert fa.sex[0] == ("M" if meta.male[r] else "F") and fa.age[0] == meta.age[r] and fa.matched == 1


@pytest.mark.xdist_group("tiny-home")
def test_a_registered_baseline_is_evaluated_per_subgroup_in_the_loop(tiny_home):
    """`register_baseline` (and `decision.treat.evaluate_candidate`, by the same call) stores every evaluation
    set's subgroup results with the evaluation: each pathology has its site and view groups, none dropped."""
    from registry import repo
    from registry.session import session_scope

    with session_scope(tiny_home.url, read_only=True) as s:
        root = next(v for v in repo.list_versions(s, "cxr") if v.parent_id is None)
        evals = repo.list_evaluations(s, root.id)
    assert evals
    for e in evals:
        assert e.subgroups, (e.pathology, "no subgroup results stored")
        attributes = {g["attribute"] for g in e.subgroups}
        assert {"site", "view"} <= attributes, attributes
        site_rows = sum(g["n"] for g in e.subgroups if g["attribute"] == "site")
        assert site_rows == e.n_pos + e.n_neg, (e.pathology, site_rows)  # the site groups partition the set
        assert all(g["n_pos"] + g["n_neg"] == g["n"] for g in e.subgroups)
