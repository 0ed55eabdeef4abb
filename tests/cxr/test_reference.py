"""A version's reference statistics: built from a calibration split, stored as one file, read back the same."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.drift import window_drift
from cxr.errors import InvalidInput
from cxr.ood import assess_studies
from cxr.reference import MIN_PER_CLASS, build_reference, from_bytes, to_bytes

NAMES = ["Atelectasis", "", "Cardiomegaly", "Rare Finding"]


def _split(n=800, f=12, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, f))
    logits = feats[:, :4] @ np.diag([1.0, 0.5, 1.5, 2.0]) - np.array([0.0, 0.0, 0.5, 4.0])
    labels = (rng.random((n, 4)) < 1 / (1 + np.exp(-logits))).astype(float)
    labels[rng.random((n, 4)) < 0.1] = np.nan  # unknown labels
    labels[:, 3] = np.where(np.arange(n) < MIN_PER_CLASS - 1, 1.0, 0.0)  # too few positives to estimate
    scores = 1 / (1 + np.exp(-(logits + rng.normal(scale=0.3, size=logits.shape))))
    images = rng.uniform(-1024, 1024, size=(n, 1, 16, 16)).astype(np.float32)
    return feats, scores, labels, images


def test_the_reference_round_trips_through_its_file_and_judges_the_same():
    feats, scores, labels, images = _split()
    ref = build_reference(NAMES, feats, scores, labels, images=images, views=["PA"] * 700 + ["AP"] * 100,
                          meta={"datasets": [3]})
    back = from_bytes(to_bytes(ref))
    assert back.pathologies == tuple(NAMES) and set(back.maps) == {"Atelectasis", "Cardiomegaly"}
    assert "Rare Finding" in back.meta["not_estimated"] and back.images["views"] == {"PA": 700, "AP": 100}
    assert back.drift.features.shape == (500, 12) and np.array_equal(back.drift.scores, ref.drift.scores)
    assert back.drift.bandwidth == ref.drift.bandwidth
    probe = np.linspace(0, 1, 101)
    for name in back.maps:
        assert np.array_equal(back.maps[name](probe), ref.maps[name](probe))
    win = feats[:80] + 0.5
    a = window_drift(ref.drift, scores[:80], win, rng=np.random.default_rng(1), n_permutations=99)
    b = window_drift(back.drift, scores[:80], win, rng=np.random.default_rng(1), n_permutations=99)
    assert [(t.name, t.p_value) for t in a.tests] == [(t.name, t.p_value) for t in b.tests]
    one = assess_studies(ref.ood, feats[:20] * 3, images=images[:20, 0])
    two = assess_studies(back.ood, feats[:20] * 3, images=images[:20, 0])
    assert [(s.outside, s.distance) for s in one] == [(s.outside, s.distance) for s in two]
    assert ref.summary()["estimated"] == ["Atelectasis", "Cardiomegaly"] and ref.summary()["datasets"] == [3]


def test_shapes_that_disagree_and_files_that_are_not_references_are_refused():
    feats, scores, labels, _ = _split(n=200)
    with pytest.raises(InvalidInput):
        build_reference(NAMES, feats, scores[:, :3], labels)
    with pytest.raises(InvalidInput):
        from_bytes(b"not a reference")
