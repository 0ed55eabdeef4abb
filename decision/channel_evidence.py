"""Polarized-channel evidence for the planner: one call from a version's weights to a rationale hint.

`cxr.channels.conflict_evidence` is the pure analysis; this wraps it for the decision layer with
the reference label statistics (NIH's shipped metadata, parsed once per process). The engine may
call it when it plans a false-positive report: `hint` goes into the decision's rationale, `data`
into the numbers recorded with it, and `conflict_channels` are the surgery's natural candidates.
"""

from __future__ import annotations

import functools

from cxr.channels import ChannelEvidence, conflict_evidence
from cxr.labelstats import LabelStats, nih_reference_stats
from cxr.weights import Weights


@functools.lru_cache(maxsize=1)
def reference_stats() -> LabelStats:
    """NIH ChestX-ray14's label statistics (112,120 films), computed once per process."""
    return nih_reference_stats()


def channel_evidence(weights: Weights, pathology: str, stats: LabelStats | None = None) -> ChannelEvidence:
    """What the version's polarized classifier channels say about `pathology` (see `conflict_evidence`).

    Raises `InvalidInput` when the classifier has no such output.
    """
    w = weights.state["classifier.weight"].numpy()
    return conflict_evidence(w, weights.spec.pathologies, stats or reference_stats(), pathology)
