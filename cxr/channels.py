"""Polarized classifier channels: bipolar axes between mutually exclusive labels, or conflicts?

The classifier of a torchxrayvision DenseNet is linear on the pooled feature vector: the logit of
pathology c is Σ_f W[c, f] · x_f + b_c. A channel f is *polarized* when it votes strongly for one
pathology and strongly against another. Its polarity is

    polarity(f) = min( max_c W[c, f],  −min_c W[c, f] )

(both the strongest positive and the strongest negative weight must be large), and it links the
pair (argmax_c W[c, f], argmin_c W[c, f]). Channels are ranked by polarity; the `top` most
polarized (default 100, the paper's number) are kept, or those whose both weights reach
`min_weight` when given. Each is classified by its pair's Jaccard index in reference label
statistics (`cxr.labelstats`): Perfect (J = 0), Legitimate (J < 0.1), Mixed (0.1 ≤ J < 0.3),
Conflict (J ≥ 0.3). The paper found 48 / 41 / 11 / 0 among DenseNet121's 100 most polarized: the
model encodes exclusive labels on one axis to save capacity. A Conflict channel — pushing apart two
labels that often co-occur — is evidence the planner can use: a candidate to zero for a false
positive (`conflict_evidence`).

Only outputs with label statistics take part (an output without labels, e.g. one a phantom-trained
model never saw, has no Jaccard and arbitrary weights). Pure numpy: weights in, plain values out.
(Not to be confused with `cxr/channel_slicing.py`, which removes channels from a network.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.errors import InvalidInput
from cxr.labelstats import CATEGORIES, CONFLICT, UNKNOWN, LabelStats, category

DEFAULT_TOP = 100
#: The paper's counts among DenseNet121's 100 most polarized channels (shown beside ours).
PAPER_COUNTS = {"Perfect": 48, "Legitimate": 41, "Mixed": 11, "Conflict": 0}


@dataclass(frozen=True)
class PolarizedChannel:
    channel: int
    positive: str  # the pathology it votes for most
    positive_weight: float
    negative: str  # the pathology it votes against most
    negative_weight: float
    polarity: float
    jaccard: float | None
    category: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ChannelAnalysis:
    """The polarized channels of one classifier, classified by label exclusivity."""

    channels: tuple[PolarizedChannel, ...]
    counts: dict[str, int]
    pathologies: tuple[str, ...]  # outputs that took part
    excluded_outputs: tuple[str, ...]  # outputs without label statistics
    n_channels: int  # width of the classifier's input
    selection: str  # how channels were chosen, in words
    #: pair (a, b) sorted → number of polarized channels linking it (the "channel usage")
    usage: dict[tuple[str, str], int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"selection": self.selection, "n_channels": self.n_channels, "counts": self.counts,
                "paper_counts": PAPER_COUNTS, "pathologies": list(self.pathologies),
                "excluded_outputs": list(self.excluded_outputs),
                "usage": [{"a": a, "b": b, "channels": n} for (a, b), n in sorted(self.usage.items())],
                "channels": [c.as_dict() for c in self.channels]}


def polarity(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel (column of `weight`, C × F): (polarity, row of the max, row of the min)."""
    w = np.asarray(weight, dtype=np.float64)
    hi, lo = w.argmax(axis=0), w.argmin(axis=0)
    cols = np.arange(w.shape[1])
    return np.minimum(w[hi, cols], -w[lo, cols]), hi, lo


def polarized_channels(weight: np.ndarray, outputs: Sequence[str], stats: LabelStats, *,
                       top: int | None = DEFAULT_TOP, min_weight: float | None = None,
                       perfect_below: float = 0.0) -> ChannelAnalysis:
    """Rank the classifier's channels by polarity and classify each by its pair's Jaccard.

    `weight` is the classifier's (outputs × channels) matrix, `outputs` its pathology names (empty
    names are unused outputs). With `min_weight`, a channel qualifies when its strongest positive
    weight is ≥ min_weight and its strongest negative ≤ −min_weight; `top` then caps the count
    (None or 0 = no cap). `perfect_below` as in `cxr.labelstats.category` (0: Perfect means J = 0
    exactly). Raises `InvalidInput` for mismatched shapes or fewer than two outputs with label statistics.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != len(outputs):
        raise InvalidInput(f"classifier weight shaped {w.shape} does not match {len(outputs)} outputs",
                           field="weight")
    keep = [i for i, n in enumerate(outputs) if n and n in stats.names]
    excluded = tuple(n for n in outputs if n and n not in stats.names)
    if len(keep) < 2:
        raise InvalidInput("fewer than two outputs have label statistics: nothing to pair", field="pathologies")
    names = [outputs[i] for i in keep]
    sub = w[keep]
    pol, hi, lo = polarity(sub)
    order = np.argsort(-pol, kind="stable")
    if min_weight is not None:
        order = order[pol[order] >= min_weight]
        selection = f"channels with a weight ≥ {min_weight:g} for one pathology and ≤ −{min_weight:g} for another"
    else:
        order = order[pol[order] > 0]  # a channel with no negative (or no positive) weight is not polarized
        selection = "channels ranked by polarity = min(strongest positive weight, −strongest negative weight)"
    if top:
        order = order[:top]
        selection += f", the {len(order)} most polarized (asked: {top})"
    if perfect_below:
        selection += f"; Perfect counts J < {perfect_below:g} (the paper's rounding), not only J = 0"
    chans = []
    for f in order:
        a, b = names[hi[f]], names[lo[f]]
        j = stats.get(a, b)
        chans.append(PolarizedChannel(int(f), a, float(sub[hi[f], f]), b, float(sub[lo[f], f]), float(pol[f]), j,
                                      category(j, perfect_below)))
    tally = Counter(c.category for c in chans)
    counts = {k: tally.get(k, 0) for k in CATEGORIES}
    if tally.get(UNKNOWN):  # a pair whose labels were never positive in the statistics
        counts[UNKNOWN] = tally[UNKNOWN]
    usage = Counter(tuple(sorted((c.positive, c.negative))) for c in chans)
    return ChannelAnalysis(tuple(chans), counts, tuple(names), excluded, int(w.shape[1]), selection, dict(usage))


def top_contributions(weight_row: np.ndarray, features: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """The `k` channels adding most to one logit for one film: (channel, W[c, f] · x_f), largest first."""
    contrib = np.asarray(weight_row, dtype=np.float64) * np.asarray(features, dtype=np.float64)
    order = np.argsort(-contrib, kind="stable")[:k]
    return [(int(f), float(contrib[f])) for f in order if contrib[f] > 0]


@dataclass(frozen=True)
class ChannelEvidence:
    """What the polarized channels say about one report's pathology, for the planner's rationale."""

    pathology: str
    hint: str
    conflict_channels: tuple[int, ...]
    data: dict[str, Any]


def conflict_evidence(weight: np.ndarray, outputs: Sequence[str], stats: LabelStats, pathology: str, *,
                      top: int | None = DEFAULT_TOP, min_weight: float | None = None,
                      perfect_below: float = 0.0) -> ChannelEvidence:
    """The polarized channels that involve `pathology`, and what they suggest for a false-positive report.

    Conflict channels (pair J ≥ 0.3) that vote *for* `pathology` push it up on films where the
    other, frequently co-occurring finding is absent: zeroing them is a candidate surgery. Channels
    linking it to exclusive labels (Perfect/Legitimate) are bipolar axes the model needs: leave them.
    The hint is one sentence for a decision's rationale; `data` holds the numbers behind it.
    Raises `InvalidInput` when the classifier has no such output.
    """
    if pathology not in outputs:
        raise InvalidInput(f"the classifier has no output {pathology!r}", field="pathology")
    an = polarized_channels(weight, outputs, stats, top=top, min_weight=min_weight, perfect_below=perfect_below)
    mine = [c for c in an.channels if pathology in (c.positive, c.negative)]
    conflict_for = [c for c in mine if c.category == CONFLICT and c.positive == pathology]
    by_cat = Counter(c.category for c in mine)
    if pathology not in an.pathologies:
        hint = f"no label statistics for {pathology}: polarized channels say nothing about it"
    elif conflict_for:
        partners = Counter(c.negative for c in conflict_for)
        pairs = ", ".join(f"{p} (J={stats.get(pathology, p):.2f})" for p in partners)
        hint = (f"{len(conflict_for)} conflict channel(s) {sorted(c.channel for c in conflict_for)} vote for "
                f"{pathology} and against frequently co-occurring {pairs}: candidates to zero for its false "
                f"positives")
    else:
        hint = (f"no conflict channel for {pathology} among the {len(an.channels)} most polarized: its "
                f"{len(mine)} polarized channel(s) link exclusive labels "
                f"({', '.join(f'{n} {k}' for k, n in sorted(by_cat.items())) or 'none'}), bipolar axes to keep")
    data = {"pathology": pathology, "selection": an.selection, "polarized_channels": [c.as_dict() for c in mine],
            "by_category": dict(by_cat), "conflict_channels_for": [c.channel for c in conflict_for]}
    return ChannelEvidence(pathology, hint, tuple(c.channel for c in conflict_for), data)
