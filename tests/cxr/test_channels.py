"""Polarized channels: ranking checked by brute force, categories on label sets of known Jaccard."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.channels import conflict_evidence, polarized_channels, top_contributions
from cxr.errors import InvalidInput
from cxr.labelstats import label_stats


def _stats():
    """Labels a..d over 100 films: J(a,b) = 0, J(a,c) < 0.1, 0.1 ≤ J(b,c) < 0.3, J(c,d) ≥ 0.3 (checked below)."""
    y = np.zeros((100, 4))
    y[0:10, 0] = 1  # a: films 0-9
    y[9 + 1:20, 1] = 1  # b: 10-19 (never with a)
    y[9:10, 2] = 1  # c shares film 9 with a ...
    y[16:20, 2] = 1  # ... films 16-19 with b ...
    y[20:35, 2] = 1  # ... and has its own
    y[25:35, 3] = 1  # d shares 25-34 with c
    y[35:37, 3] = 1
    return label_stats(y, ["a", "b", "c", "d"])


def test_synthetic_jaccards_are_what_the_fixture_says():
    st = _stats()
    assert st.get("a", "b") == 0
    assert 0 < st.get("a", "c") < 0.1
    assert 0.1 <= st.get("b", "c") < 0.3
    assert st.get("c", "d") >= 0.3


def test_each_channel_is_classified_by_its_pair():
    st = _stats()
    outputs = ("a", "b", "c", "d", "", "Fracture")  # an unused output and one without statistics
    w = np.zeros((6, 5))
    w[:, 0] = [1.0, -0.9, 0, 0, 0, 0]  # a vs b: Perfect
    w[:, 1] = [0.8, 0, -0.7, 0, 0, 0]  # a vs c: Legitimate
    w[:, 2] = [0, 0.6, -0.6, 0, 0, 0]  # b vs c: Mixed
    w[:, 3] = [0, 0, 0.5, -0.5, 0, 0]  # c vs d: Conflict
    w[:, 4] = [0.3, 0.2, 0.1, 0.0, 9.0, -9.0]  # no negative weight among a..d: not polarized
    an = polarized_channels(w, outputs, st)
    assert an.counts == {"Perfect": 1, "Legitimate": 1, "Mixed": 1, "Conflict": 1}
    assert [c.channel for c in an.channels] == [0, 1, 2, 3]  # by polarity 0.9, 0.7, 0.6, 0.5
    c3 = an.channels[3]
    assert (c3.positive, c3.negative, c3.category) == ("c", "d", "Conflict")
    assert an.excluded_outputs == ("Fracture",) and an.pathologies == ("a", "b", "c", "d")
    assert an.usage[("c", "d")] == 1


def test_ranking_matches_brute_force_and_thresholds_select_at_the_boundary():
    rng = np.random.default_rng(0)
    names = ("a", "b", "c", "d")
    w = rng.normal(size=(4, 300))
    st = _stats()
    expected = []
    for f in range(w.shape[1]):
        col = list(w[:, f])
        hi, lo = col.index(max(col)), col.index(min(col))
        expected.append((min(col[hi], -col[lo]), f, names[hi], names[lo]))
    expected.sort(key=lambda t: -t[0])
    an = polarized_channels(w, names, st, top=25)
    assert [(c.channel, c.positive, c.negative) for c in an.channels] == [(f, a, b) for _, f, a, b in expected[:25]]
    cut = expected[40][0]  # exactly the 41st channel's polarity
    at = polarized_channels(w, names, st, top=None, min_weight=cut)
    assert len(at.channels) == 41
    assert len(polarized_channels(w, names, st, top=None, min_weight=np.nextafter(cut, np.inf)).channels) == 40
    assert len(polarized_channels(w, names, st, top=10, min_weight=cut).channels) == 10
    assert sum(an.counts.values()) == 25


def test_mismatched_shapes_and_too_few_outputs_are_refused():
    st = _stats()
    with pytest.raises(InvalidInput):
        polarized_channels(np.zeros((3, 4)), ("a", "b"), st)
    with pytest.raises(InvalidInput):
        polarized_channels(np.zeros((2, 4)), ("a", "x"), st)


def test_conflict_evidence_names_the_channels_to_cut_or_says_to_keep_them():
    st = _stats()
    w = np.zeros((4, 3))
    w[:, 0] = [0, 0, 0.5, -0.5]  # for c, against d (J = 0.5): a conflict for c's false positives
    w[:, 1] = [0.8, -0.7, 0, 0]  # a vs b: exclusive
    w[:, 2] = [0, 0, -0.4, 0.45]  # for d, against c: conflict, but it votes *against* c
    ev = conflict_evidence(w, ("a", "b", "c", "d"), st, "c")
    assert ev.conflict_channels == (0,)
    assert "conflict channel" in ev.hint and "[0]" in ev.hint and f"d (J={st.get('c', 'd'):.2f})" in ev.hint
    assert ev.data["by_category"] == {"Conflict": 2}
    keep = conflict_evidence(w, ("a", "b", "c", "d"), st, "a")
    assert keep.conflict_channels == () and "bipolar axes to keep" in keep.hint and "1 Perfect" in keep.hint
    with pytest.raises(InvalidInput):
        conflict_evidence(w, ("a", "b", "c", "d"), st, "Hernia")


def test_top_contributions_by_brute_force():
    rng = np.random.default_rng(1)
    row, x = rng.normal(size=50), np.abs(rng.normal(size=50))
    got = top_contributions(row, x, k=4)
    brute = sorted(((f, row[f] * x[f]) for f in range(50) if row[f] * x[f] > 0), key=lambda t: -t[1])[:4]
    assert [f for f, _ in got] == [f for f, _ in brute]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in brute])
