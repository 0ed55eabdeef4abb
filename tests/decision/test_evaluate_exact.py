"""Every field of an evaluation, counted by hand on a case small enough to check on paper.

The gate reads these fields (FPR and recall at the threshold, the parent's rates, the true positives
lost); the registry and auditors read the rest. The case puts a score exactly on each threshold, where
`>=` and `>` part ways, and the errors name the argument and say what was wrong.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxr.errors import InvalidInput
from decision.evaluate import evaluate_scores

#           y      candidate  parent     candidate at t=0.6 | parent at t=0.5
CASE = [(1.0, 0.90, 0.90),  # TP                 | TP
        (1.0, 0.60, 0.70),  # TP (score == t)    | TP
        (1.0, 0.30, 0.50),  # FN                 | TP (score == t): a true positive the candidate loses
        (1.0, 0.20, 0.10),  # FN                 | FN
        (0.0, 0.70, 0.20),  # FP                 | TN
        (0.0, 0.10, 0.55),  # TN                 | FP
        (0.0, 0.05, 0.30),  # TN                 | TN
        (np.nan, 0.99, 0.99)]  # unlabelled: counted as such, nowhere else  # fmt: skip


def _case():
    arr = np.array(CASE)
    return arr[:, :1], arr[:, 1:2], arr[:, 2:3]


def test_every_field_matches_a_hand_count_with_scores_on_the_thresholds():
    labels, cand, par = _case()
    rep = evaluate_scores(labels, cand, par, [0.6], ["Edema"], parent_thresholds=[0.5])
    r = rep["Edema"]
    assert (r.pathology, r.evaluable, r.reason, r.n_pos, r.n_neg, r.n_unlabelled) == ("Edema", True, None, 4, 3, 1)
    assert (r.threshold, r.tp, r.fp) == (0.6, 2, 1)
    assert (r.sensitivity, r.specificity, r.ppv, r.npv, r.fpr) == pytest.approx((2 / 4, 2 / 3, 2 / 3, 2 / 4, 1 / 3))
    assert r.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    # AUROC by pairs: candidate positives beat 3 + 2 + 2 + 2 of 12 negatives pairs, the parent's 3 + 3 + 2 + 0
    assert r.auroc == pytest.approx(9 / 12)
    c = r.comparison
    assert (c.parent_auroc, c.delta) == pytest.approx((8 / 12, 1 / 12))
    assert c.parent_threshold == 0.5
    assert (c.parent_sensitivity, c.parent_specificity, c.parent_ppv, c.parent_fpr) == pytest.approx(
        (3 / 4, 2 / 3, 3 / 4, 1 / 3))  # fmt: skip
    assert c.parent_f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert (c.parent_tp, c.tp_loss, c.tp_loss_fraction) == (3, 1, pytest.approx(1 / 3))
    row = rep.to_rows()[0]
    assert (row["threshold"], row["n_pos"], row["n_neg"], row["sensitivity"]) == (0.6, 4, 3, 0.5)


def test_without_a_parent_threshold_the_parent_rates_are_unknown_not_guessed():
    labels, cand, par = _case()
    c = evaluate_scores(labels, cand, par, [0.6], ["Edema"])["Edema"].comparison
    assert c.parent_threshold is None and c.tp_loss is None and c.parent_tp is None
    assert (c.parent_sensitivity, c.parent_specificity, c.parent_ppv, c.parent_f1, c.parent_fpr) == (None,) * 5
    assert c.delta == pytest.approx(1 / 12)  # the ranking comparison needs no threshold


def test_a_pathology_without_model_output_keeps_its_counts_and_threshold():
    labels = np.array([[1.0], [0.0], [0.0], [np.nan]])
    r = evaluate_scores(labels, np.full((4, 1), np.nan), None, [0.4], ["Hernia"])["Hernia"]
    assert r.evaluable is False and r.reason == "the candidate has no output for this pathology"
    assert (r.n_pos, r.n_neg, r.n_unlabelled, r.threshold) == (1, 2, 1, 0.4)
    assert (r.auroc, r.sensitivity, r.fpr, r.tp, r.fp, r.comparison) == (None,) * 6


def test_json_style_input_with_null_for_unknown_is_read_as_nan():
    # feedback arrives as JSON: a null label is an unknown label, a null score column a missing output
    labels = [[1, None], [0, 1], [1, 0], [0, None]]
    probs = [[0.9, None], [0.2, None], [0.8, None], [0.1, None]]
    rep = evaluate_scores(labels, probs, probs, [0.5, 0.5], ["A", "B"], parent_thresholds=[0.5, 0.5])
    assert rep["A"].auroc == 1.0 and rep["A"].n_unlabelled == 0
    assert rep["B"].n_unlabelled == 2 and rep["B"].reason == "the candidate has no output for this pathology"


def test_unnamed_pathologies_are_numbered_and_unknown_names_raise_with_the_name():
    rep = evaluate_scores([[1, 0], [0, 1]], [[0.9, 0.1], [0.1, 0.9]])
    assert rep.pathologies == ("p0", "p1") and [r.pathology for r in rep.results] == ["p0", "p1"]
    with pytest.raises(KeyError, match="Nope"):
        rep["Nope"]


def test_as_dict_gives_plain_nested_dicts():
    labels, cand, par = _case()
    rep = evaluate_scores(labels, cand, par, [0.6], ["Edema"], parent_thresholds=[0.5])
    d = rep.as_dict()
    assert d["pathologies"] == ("Edema",) and d["has_parent"] is True and d["alpha"] == 0.05
    assert d["results"][0]["comparison"]["tp_loss"] == 1
    assert rep["Edema"].as_dict() == d["results"][0]


@pytest.mark.parametrize(
    "kwargs, field, message",
    [
        ({"labels": np.array([1.0, 0.0])}, "labels", "expected an N x P matrix, got shape (2,)"),
        ({"labels": np.array([[1.0, 2.0], [0.0, 1.0]])}, "labels", "labels must be 0, 1 or NaN"),
        ({"pathologies": ["A"]}, "pathologies", "expected 2 distinct pathology names, got 1"),
        ({"probs_candidate": np.zeros((2, 3))}, "probs_candidate", "expected shape (2, 2), got (2, 3)"),
        ({"thresholds": [0.5]}, "thresholds", "expected 2 thresholds, got 1"),
        ({"probs_candidate": np.array([[0.1, np.inf], [0.2, 0.3]])}, "probs_candidate",
         "non-finite probability for B on a labelled case"),
        ({"probs_parent": np.array([[0.1, 0.2], [np.inf, 0.3]])}, "probs_parent",
         "non-finite probability for A on a labelled case"),
    ],
)
def test_bad_input_names_the_argument_and_says_what_is_wrong(kwargs, field, message):
    args = {"labels": np.array([[1.0, 0.0], [0.0, 1.0]]), "probs_candidate": np.full((2, 2), 0.5),
            "probs_parent": np.full((2, 2), 0.5), "thresholds": [0.5, 0.5], "pathologies": ["A", "B"]}  # fmt: skip
    args.update(kwargs)
    with pytest.raises(InvalidInput) as err:
        evaluate_scores(**args)
    assert err.value.field == field and str(err.value) == f"{field}: {message}"
