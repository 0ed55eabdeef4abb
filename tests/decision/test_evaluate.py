"""Evaluation reports: per-pathology numbers, parent comparison, TP loss and the not-evaluable cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr.errors import InvalidInput
from cxr.spec import XRV_PATHOLOGIES
from cxr.stats import binary_metrics, delong_ci
from decision.evaluate import ROW_KEYS, evaluate_scores


def _data(rng, n=400, p=4, missing=0.1):
    labels = (rng.random((n, p)) < 0.25).astype(float)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, p)) + 1.5 * labels - 1.0)))
    labels[rng.random((n, p)) < missing] = np.nan
    return labels, probs


def test_per_pathology_numbers_match_the_statistics_on_labelled_cases():
    rng = np.random.default_rng(0)
    labels, probs = _data(rng)
    names = ["Atelectasis", "Edema", "Mass", "Cardiomegaly"]
    rep = evaluate_scores(labels, probs, None, [0.5, 0.4, None, 0.6], names)
    assert rep.n_cases == 400 and rep.pathologies == tuple(names) and not rep.has_parent
    for j, name in enumerate(names):
        r = rep[name]
        known = ~np.isnan(labels[:, j])
        y, s = labels[known, j], probs[known, j]
        assert r.evaluable and r.n_pos == int(y.sum()) and r.n_neg == int((1 - y).sum())
        assert r.n_unlabelled == int((~known).sum())
        assert r.auroc == pytest.approx(roc_auc_score(y, s))
        ci = delong_ci(y, s)
        assert (r.auroc_lo, r.auroc_hi) == pytest.approx((ci.lo, ci.hi))
        assert r.comparison is None
    m = binary_metrics(labels[~np.isnan(labels[:, 1]), 1], probs[~np.isnan(labels[:, 1]), 1], 0.4)
    edema = rep["Edema"]
    assert (edema.sensitivity, edema.specificity, edema.ppv, edema.f1, edema.fpr) == (
        m["sensitivity"], m["specificity"], m["ppv"], m["f1"], m["fpr"],
    )  # fmt: skip
    assert rep["Mass"].threshold is None and rep["Mass"].sensitivity is None and rep["Mass"].auroc is not None


def test_unevaluable_pathologies_are_reported_not_raised():
    rng = np.random.default_rng(1)
    labels, probs = _data(rng, p=5, missing=0.0)
    labels[:, 0] = np.nan  # nobody labelled
    labels[:, 1] = 0.0  # no positives
    labels[:, 2] = 1.0  # no negatives
    probs[:, 3] = np.nan  # the model has no output here (masked pathology)
    rep = evaluate_scores(labels, probs, probs, [0.5] * 5, list("ABCDE"), parent_thresholds=[0.5] * 5)
    reasons = {r.pathology: r.reason for r in rep.results if not r.evaluable}
    assert reasons == {
        "A": "no labelled cases",
        "B": "no positive cases",
        "C": "no negative cases",
        "D": "the candidate has no output for this pathology",
    }
    assert [r.pathology for r in rep.evaluable()] == ["E"]
    b = rep["B"]
    assert b.auroc is None and b.fpr is not None and b.sensitivity is None  # FPR needs only negatives
    assert b.comparison is not None and b.comparison.delta is None and b.comparison.tp_loss == 0


def test_to_rows_gives_the_registry_its_plain_dicts():
    rng = np.random.default_rng(2)
    labels, probs = _data(rng, p=2)
    labels[:, 1] = 0.0
    rows = evaluate_scores(labels, probs, None, [0.5, 0.5], ["Edema", "Hernia"]).to_rows()
    assert [tuple(r) for r in rows] == [ROW_KEYS, ROW_KEYS]
    assert rows[0]["pathology"] == "Edema" and isinstance(rows[0]["auroc"], float)
    assert rows[1]["auroc"] is None and rows[1]["n_pos"] == 0


def test_identical_parent_shows_exactly_no_change():
    rng = np.random.default_rng(3)
    labels, probs = _data(rng)
    rep = evaluate_scores(labels, probs, probs.copy(), [0.5] * 4, list("ABCD"), parent_thresholds=[0.5] * 4)
    for r in rep.results:
        c = r.comparison
        assert (c.delta, c.delta_lo, c.delta_hi, c.p_value, c.tp_loss) == (0.0, 0.0, 0.0, 1.0, 0)
        assert c.parent_auroc == r.auroc and c.parent_sensitivity == r.sensitivity


def test_tp_loss_counts_positives_the_parent_caught_and_the_candidate_misses():
    labels = np.array([[1], [1], [1], [1], [0], [0], [np.nan]])
    parent = np.array([[0.9], [0.8], [0.3], [0.7], [0.6], [0.1], [0.9]])
    cand = np.array([[0.9], [0.4], [0.9], [0.5], [0.2], [0.1], [0.0]])
    rep = evaluate_scores(labels, cand, parent, [0.6], ["Cardiomegaly"], parent_thresholds=[0.5])
    c = rep["Cardiomegaly"].comparison
    # parent (>= 0.5) catches cases 0, 1, 3; the candidate (>= 0.6) keeps only case 0; case 2 is a gain, not a loss
    assert (c.parent_tp, c.tp_loss, c.tp_loss_fraction) == (3, 2, pytest.approx(2 / 3))
    assert c.parent_fpr == 0.5 and rep["Cardiomegaly"].fpr == 0.0
    assert c.delta == pytest.approx(rep["Cardiomegaly"].auroc - c.parent_auroc)


def test_a_nan_threshold_is_masked_not_used():
    rng = np.random.default_rng(4)
    labels, probs = _data(rng, p=1)
    r = evaluate_scores(labels, probs, probs, [float("nan")], ["Edema"], parent_thresholds=[0.5])["Edema"]
    assert r.threshold is None and r.sensitivity is None and r.comparison.tp_loss is None
    assert r.comparison.parent_sensitivity is not None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"labels": np.full((3, 2), 2.0)}, "labels"),
        ({"probs_candidate": np.zeros((3, 3))}, "probs_candidate"),
        ({"probs_parent": np.zeros((2, 2))}, "probs_parent"),
        ({"thresholds": [0.5]}, "thresholds"),
        ({"pathologies": ["A", "A"]}, "pathologies"),
        ({"parent_thresholds": [0.5, 0.5, 0.5]}, "parent_thresholds"),
        ({"probs_candidate": np.array([[0.1, np.nan], [0.2, 0.3], [0.3, 0.4]])}, "probs_candidate"),
    ],
)
def test_bad_input_names_the_argument(kwargs, field):
    args = {"labels": np.array([[1, 0], [0, 1], [1, 1.0]]), "probs_candidate": np.full((3, 2), 0.5),
            "probs_parent": None, "thresholds": [0.5, 0.5], "pathologies": ["A", "B"]}  # fmt: skip
    args.update(kwargs)
    with pytest.raises(InvalidInput) as err:
        evaluate_scores(**args)
    assert err.value.field == field


def test_full_size_evaluation_with_parent_covers_every_pathology():
    rng = np.random.default_rng(5)
    labels, probs = _data(rng, n=1045, p=18)
    parent = np.clip(probs + rng.normal(0, 0.02, probs.shape), 0, 1)
    rep = evaluate_scores(labels, probs, parent, [0.5] * 18, list(XRV_PATHOLOGIES), parent_thresholds=[0.5] * 18)
    assert len(rep.results) == 18 and all(r.comparison is not None for r in rep.results)
    assert all(r.comparison.delta_lo <= r.comparison.delta <= r.comparison.delta_hi for r in rep.results)
    assert rep.get("Nope") is None
    with pytest.raises(KeyError):
        rep["Nope"]
