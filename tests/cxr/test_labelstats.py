"""Label statistics against independent computations: pandas on NIH's shipped CSV, and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from cxr.errors import InvalidInput
from cxr.labelstats import (
    DOMINANCE_ODDS,
    EXCLUSIVE_BELOW,
    MARGINAL_ODDS,
    category,
    exclusions,
    label_stats,
    log_odds_margin,
    nih_reference_stats,
)
from cxr.nih import xrv_data_dir
from cxr.spec import NIH_PATHOLOGIES


@pytest.fixture(scope="module")
def nih():
    return nih_reference_stats()


def test_nih_jaccard_matches_pandas_on_the_shipped_csv(nih):
    df = pd.read_csv(xrv_data_dir() / "Data_Entry_2017_v2020.csv.gz", usecols=["Finding Labels"])
    has = df["Finding Labels"].str.get_dummies(sep="|").astype(bool)  # exact label names, no substring matching
    assert nih.n == len(df) == 112_120
    for a, b in itertools.combinations(NIH_PATHOLOGIES, 2):
        both = int((has[a] & has[b]).sum())
        either = int((has[a] | has[b]).sum())
        assert nih.get(a, b) == pytest.approx(both / either, abs=1e-12), (a, b)
        assert nih.get(b, a) == nih.get(a, b)
        assert int(nih.both[nih.index(a), nih.index(b)]) == both
    assert nih.get("Hernia", "Cardiomegaly") == pytest.approx(7 / 2996)
    assert round(nih.get("Hernia", "Cardiomegaly"), 4) == 0.0023


def test_unknown_labels_are_skipped_pair_by_pair_as_brute_force_counts():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 5)) < 0.3).astype(np.float64)
    y[rng.random((200, 5)) < 0.2] = np.nan
    y[:, 3:] = np.where(np.isnan(y[:, 3:]), np.nan, 0.0)  # two labels never positive
    st = label_stats(y, ["a", "b", "c", "d", "e"])
    for i, j in itertools.combinations(range(5), 2):
        both = either = known = 0
        for row in y:
            if math.isnan(row[i]) or math.isnan(row[j]):
                continue
            known += 1
            both += row[i] == 1 and row[j] == 1
            either += row[i] == 1 or row[j] == 1
        assert (st.known[i, j], st.both[i, j], st.either[i, j]) == (known, both, either)
        expected = both / either if either else None
        assert st.get("abcde"[i], "abcde"[j]) == (pytest.approx(expected) if expected is not None else None)
    assert st.positives.tolist() == [int(np.nansum(y[:, k])) for k in range(5)]
    assert [(p["a"], p["b"]) for p in st.pairs() if p["jaccard"] is None and p["category"] == "Unknown"] == [("d", "e")]


def test_bad_labels_are_refused():
    with pytest.raises(InvalidInput):
        label_stats(np.array([[0.0, 2.0]]), ["a", "b"])
    with pytest.raises(InvalidInput):
        label_stats(np.zeros((3, 2)), ["a"])


@pytest.mark.parametrize(("j", "expected"), [
    (0.0, "Perfect"), (1e-9, "Legitimate"), (0.0999999, "Legitimate"), (0.1, "Mixed"), (0.2999999, "Mixed"),
    (0.3, "Conflict"), (1.0, "Conflict"), (None, "Unknown"), (float("nan"), "Unknown"),
])
def test_categories_at_their_boundaries(j, expected):
    assert category(j) == expected


def test_the_papers_rounding_makes_hernia_cardiomegaly_perfect(nih):
    j = nih.get("Hernia", "Cardiomegaly")
    assert category(j) == "Legitimate" and category(j, perfect_below=0.005) == "Perfect"


def _probs_for_margin(margin: float, t: float) -> float:
    z = math.log(t / (1 - t)) + margin
    return 1 / (1 + math.exp(-z))


def test_exclusion_rule_near_its_boundaries(nih):
    t = {"Hernia": 0.3, "Cardiomegaly": 0.4, "Effusion": 0.5}
    assert nih.get("Hernia", "Cardiomegaly") < EXCLUSIVE_BELOW
    assert nih.get("Cardiomegaly", "Effusion") >= EXCLUSIVE_BELOW
    weak = math.log(MARGINAL_ODDS) - 0.01  # Hernia barely positive: a marginal call
    strong = weak + math.log(DOMINANCE_ODDS)
    p = {"Hernia": _probs_for_margin(weak, 0.3), "Cardiomegaly": _probs_for_margin(strong + 0.01, 0.4),
         "Effusion": _probs_for_margin(weak + 1.0, 0.5)}  # positive, but not 10× Hernia's odds
    out = exclusions(p, t, nih)
    assert set(out) == {"Hernia"}  # Effusion–Cardiomegaly co-occur (J ≥ 0.01): never excluded
    assert out["Hernia"]["action"] == "excluded" and out["Hernia"]["because"] == "Cardiomegaly"
    assert out["Hernia"]["jaccard"] == pytest.approx(nih.get("Hernia", "Cardiomegaly"))
    # just short of 10× the odds: nothing happens
    p["Cardiomegaly"] = _probs_for_margin(strong - 0.02, 0.4)
    assert exclusions(p, t, nih) == {}
    # Hernia no longer marginal: kept, but down-weighted
    p["Hernia"] = _probs_for_margin(math.log(MARGINAL_ODDS) + 0.01, 0.3)
    p["Cardiomegaly"] = _probs_for_margin(math.log(MARGINAL_ODDS) + math.log(DOMINANCE_ODDS) + 0.05, 0.4)
    assert exclusions(p, t, nih)["Hernia"]["action"] == "down-weighted"
    # below its operating point a finding is not called, so it excludes nothing and is not excluded
    p["Cardiomegaly"] = 0.39
    assert exclusions(p, t, nih) == {}
    # no operating point: never called
    assert exclusions(p, {"Hernia": 0.3, "Cardiomegaly": None}, nih) == {}


def test_log_odds_margin_is_zero_at_the_threshold():
    assert log_odds_margin(0.3, 0.3) == pytest.approx(0.0)
    assert log_odds_margin(0.75, 0.5) == pytest.approx(math.log(3))
