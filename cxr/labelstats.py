"""Label statistics: which pathologies occur together, and which practically never do.

The paper's reading of polarized classifier channels rests on one number per pathology pair,
the Jaccard index of their label sets over a data set's films:

    J(A, B) = |A ∩ B| / |A ∪ B|      (films positive for both / films positive for either)

counted over the films where both labels are known (NaN = unknown is skipped pair by pair).
J = 0 means the two were never reported together (e.g. Hernia and Cardiomegaly in NIH
ChestX-ray14: 7 shared films among 2,996, J ≈ 0.0023), so a channel that votes for one and
against the other is a *bipolar axis* between mutually exclusive labels, not a confusion. The
reference is NIH's own metadata that torchxrayvision ships (112,120 films); any data source's
labels work too. Pure numpy: no torch, no files (`nih_reference_labels` reads the shipped CSV).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.errors import InvalidInput

#: The paper's legitimacy categories of a pathology pair, by the pair's Jaccard index.
PERFECT, LEGITIMATE, MIXED, CONFLICT, UNKNOWN = "Perfect", "Legitimate", "Mixed", "Conflict", "Unknown"
CATEGORIES = (PERFECT, LEGITIMATE, MIXED, CONFLICT)
#: Upper bounds (exclusive) of Legitimate and Mixed; Perfect is J == 0, Conflict J ≥ 0.3.
LEGITIMATE_BELOW, MIXED_BELOW = 0.1, 0.3


def category(j: float | None, perfect_below: float = 0.0) -> str:
    """Perfect (J = 0), Legitimate (J < 0.1), Mixed (0.1 ≤ J < 0.3), Conflict (J ≥ 0.3); Unknown for no data.

    `perfect_below` > 0 also counts J < perfect_below as Perfect: the paper calls Hernia–Cardiomegaly
    "J = 0" although NIH's metadata gives 0.0023, i.e. it rounded J to two decimals (perfect_below=0.005).
    """
    if j is None or not np.isfinite(j):
        return UNKNOWN
    if j == 0 or j < perfect_below:
        return PERFECT
    if j < LEGITIMATE_BELOW:
        return LEGITIMATE
    if j < MIXED_BELOW:
        return MIXED
    return CONFLICT


@dataclass(frozen=True)
class LabelStats:
    """Pairwise statistics of L labels over N films.

    `both[i, j]`: films positive for i and j (the diagonal: positives of i); `either[i, j]`: films
    positive for at least one; `known[i, j]`: films where both labels are known; `jaccard`:
    both / either (NaN where either is 0: neither label ever positive).
    """

    names: tuple[str, ...]
    n: int
    positives: np.ndarray  # (L,) int
    known: np.ndarray  # (L, L) int
    both: np.ndarray  # (L, L) int
    either: np.ndarray  # (L, L) int
    jaccard: np.ndarray  # (L, L) float
    source: str = ""

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise InvalidInput(f"no label {name!r} in these statistics ({', '.join(self.names)})",
                               field="pathology") from None

    def get(self, a: str, b: str) -> float | None:
        """J(a, b), or None when either label is absent from these statistics or never positive."""
        if a not in self.names or b not in self.names:
            return None
        j = float(self.jaccard[self.names.index(a), self.names.index(b)])
        return j if np.isfinite(j) else None

    def pairs(self, perfect_below: float = 0.0) -> list[dict[str, Any]]:
        """Every unordered pair (i < j) with its counts, Jaccard and category, most exclusive first."""
        out = []
        for i in range(len(self.names)):
            for j in range(i + 1, len(self.names)):
                jac = float(self.jaccard[i, j])
                out.append({"a": self.names[i], "b": self.names[j], "both": int(self.both[i, j]),
                            "either": int(self.either[i, j]), "known": int(self.known[i, j]),
                            "jaccard": jac if np.isfinite(jac) else None,
                            "category": category(jac if np.isfinite(jac) else None, perfect_below)})
        return sorted(out, key=lambda r: (r["jaccard"] is None, r["jaccard"] or 0.0, r["a"], r["b"]))

    def as_dict(self, perfect_below: float = 0.0) -> dict[str, Any]:
        jac = [[float(v) if np.isfinite(v) else None for v in row] for row in self.jaccard]
        return {"source": self.source, "n": self.n, "names": list(self.names),
                "positives": {n: int(p) for n, p in zip(self.names, self.positives, strict=True)},
                "jaccard": jac, "cooccurrence": self.both.astype(int).tolist(),
                "pairs": self.pairs(perfect_below)}


def label_stats(labels: np.ndarray, names: Sequence[str], *, source: str = "") -> LabelStats:
    """Pairwise co-occurrence and Jaccard of `labels` (N × L; 1 positive, 0 negative, NaN unknown).

    Raises `InvalidInput` when the shapes disagree or a value is not 0, 1 or NaN.
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != len(names):
        raise InvalidInput(f"labels shaped {y.shape} do not match {len(names)} names", field="labels")
    known = ~np.isnan(y)
    if not np.isin(y[known], (0.0, 1.0)).all():
        raise InvalidInput("labels must be 0, 1 or NaN (unknown)", field="labels")
    pos = (np.nan_to_num(y, nan=0.0) > 0.5).astype(np.int64)
    k = known.astype(np.int64)
    both_known = k.T @ k
    # counts restricted to films where both labels are known
    pos_known = pos * k
    both = pos.T @ pos  # a positive label is always known
    a_pos_b_known = pos_known.T @ k  # [i, j]: i positive and j known
    either = a_pos_b_known + a_pos_b_known.T - both
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = np.where(either > 0, both / np.maximum(either, 1), np.nan)
    return LabelStats(tuple(names), int(y.shape[0]), pos.sum(axis=0), both_known, both, either, jac, source)


def nih_reference_stats() -> LabelStats:
    """The reference: NIH ChestX-ray14's shipped metadata (112,120 films, 14 labels)."""
    from cxr.nih import load_nih_metadata
    from cxr.spec import NIH_PATHOLOGIES

    meta = load_nih_metadata()
    return label_stats(meta.labels, NIH_PATHOLOGIES, source="NIH ChestX-ray14 metadata (torchxrayvision)")


# -- mutual exclusivity applied to one study's calls --------------------------------------------

#: A pair is treated as mutually exclusive below this Jaccard (NIH: 25 of its 91 pairs).
EXCLUSIVE_BELOW = 0.01
#: "Far more certain": the other finding's odds over its operating point are at least this many times ours.
DOMINANCE_ODDS = 10.0
#: A call is marginal (and may be excluded, not only down-weighted) below this odds ratio over its operating point.
MARGINAL_ODDS = 3.0

EXCLUSION_RULE = (
    f"A positive finding B is checked against every other positive finding A whose label pair is mutually "
    f"exclusive in the reference statistics (Jaccard J(A, B) < {EXCLUSIVE_BELOW:g}). If A is far more certain — "
    f"A's odds over its operating point are at least {DOMINANCE_ODDS:g}× B's — B is excluded when its own call "
    f"is marginal (odds under {MARGINAL_ODDS:g}× its operating point) and down-weighted (kept, flagged) otherwise."
)


def log_odds_margin(p: float, t: float) -> float:
    """logit(p) − logit(t): how far a probability lies above (> 0) or below its operating point, in log-odds."""
    eps = 1e-7
    p, t = min(max(p, eps), 1 - eps), min(max(t, eps), 1 - eps)
    return float(np.log(p / (1 - p)) - np.log(t / (1 - t)))


def exclusions(probs: dict[str, float], thresholds: dict[str, float | None], stats: LabelStats
               ) -> dict[str, dict[str, Any]]:
    """Apply `EXCLUSION_RULE` to one study: {finding B: {"action", "because", "jaccard", odds ratios}}.

    Only findings called positive (probability ≥ a known operating point) take part; pairs
    without statistics never exclude anything. Pure: no model, no film.
    """
    positive = {n: log_odds_margin(p, thresholds[n]) for n, p in probs.items()
                if thresholds.get(n) is not None and p >= thresholds[n]}
    out: dict[str, dict[str, Any]] = {}
    for b, mb in positive.items():
        rivals = []
        for a, ma in positive.items():
            j = stats.get(a, b) if a != b else None
            if j is not None and j < EXCLUSIVE_BELOW and ma - mb >= np.log(DOMINANCE_ODDS):
                rivals.append((ma, a, j))
        if not rivals:
            continue
        ma, a, j = max(rivals)
        out[b] = {"action": "excluded" if mb < np.log(MARGINAL_ODDS) else "down-weighted", "because": a,
                  "jaccard": j, "odds_ratio_over_threshold": float(np.exp(mb)),
                  "because_odds_ratio_over_threshold": float(np.exp(ma))}
    return out
