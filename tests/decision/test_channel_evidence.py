"""The planner's channel evidence from real (tiny) weights: a conflict channel planted in the classifier is named."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.errors import InvalidInput
from cxr.model import build_model
from cxr.spec import preset
from cxr.weights import to_bytes
from decision.evidence import channel_evidence, reference_stats


def _weights(plant: bool):
    spec = preset("tiny")
    model = build_model(spec, seed=0)
    state = model.state_dict()
    w = np.zeros_like(state["classifier.weight"].numpy())
    names = list(spec.pathologies)
    w[names.index("Hernia"), 0], w[names.index("Cardiomegaly"), 0] = 1.0, -1.0  # an exclusive pair: keep
    if plant:  # Effusion vs Atelectasis, which co-occur (J ≈ 0.15): a Mixed axis
        w[names.index("Effusion"), 1], w[names.index("Atelectasis"), 1] = 2.0, -2.0
    import torch

    state["classifier.weight"] = torch.from_numpy(w)
    return to_bytes(spec, state)[1]


def test_evidence_names_the_channels_of_the_pathology_and_their_categories():
    ev = channel_evidence(_weights(plant=True), "Effusion")
    assert ev.conflict_channels == ()  # NIH has no pair with J ≥ 0.3 (max 0.15): Conflict cannot occur with it
    [c] = ev.data["polarized_channels"]
    assert (c["channel"], c["positive"], c["negative"], c["category"]) == (1, "Effusion", "Atelectasis", "Mixed")
    assert c["jaccard"] == pytest.approx(reference_stats().get("Effusion", "Atelectasis"))
    assert "bipolar axes to keep" in ev.hint and "1 Mixed" in ev.hint
    hernia = channel_evidence(_weights(plant=False), "Hernia")
    assert [c["channel"] for c in hernia.data["polarized_channels"]] == [0]
    with pytest.raises(InvalidInput):
        channel_evidence(_weights(plant=False), "Dextrocardia")
