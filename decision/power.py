"""Can the evaluation data show non-inferiority at all? The gate's power rule, as a pure function.

A non-inferiority check passes when the lower bound of the (1 - alpha) paired DeLong interval of
ΔAUROC = AUROC(candidate) - AUROC(parent) is at least -margin. With few positives that bound sits
far below zero even when nothing changed (five Hernia positives: ±0.03 or more), so the check
blocks every real change for a reason that is about sample size, not harm. Before judging, the
gate therefore asks whether this data *can* demonstrate the margin — a property of the design
(how many positives and negatives, how good the parent is), not of the candidate at hand: a
candidate that differs wildly from its parent has a wide interval too, and that is a verdict on
the candidate, judged by the ordinary rule. The design-based answer uses

the variance of one AUROC estimate with n1 positives and n0 negatives is Hanley &
  McNeil's (1982)

      V(A) = [A(1 - A) + (n1 - 1)(Q1 - A²) + (n0 - 1)(Q2 - A²)] / (n1 n0),
      Q1 = A / (2 - A),  Q2 = 2A² / (1 + A),

and two correlated estimates (candidate and parent scored on the same cases, correlation ρ)
differ with variance 2 V(A)(1 - ρ). ρ is the policy's `gate.power_correlation` (a retrained
backbone's scores correlate with its parent's at about 0.95).

The check is **underpowered** when, with a true change of exactly zero, the expected lower bound
-z·SE lies below -margin (z = Φ⁻¹(1 - alpha/2)): the probability that an unchanged candidate
passes is then under one half. "Needs about N" is the number of positives (the prevalence held)
at which z·SE reaches the margin. What an underpowered check does is the policy's `gate.underpowered`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["PowerAssessment", "assess_power", "hanley_mcneil_variance", "positives_needed"]


def hanley_mcneil_variance(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil's variance of an AUROC estimate; `inf` without a case of each class."""
    if n_pos < 1 or n_neg < 1:
        return math.inf
    a = min(max(float(auc), 0.0), 1.0)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    num = a * (1.0 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)
    return max(num, 0.0) / (n_pos * n_neg)


def _design_se(auc: float, n_pos: int, n_neg: int, rho: float) -> float:
    return math.sqrt(2.0 * hanley_mcneil_variance(auc, n_pos, n_neg) * (1.0 - rho))


def positives_needed(auc: float, n_pos: int, n_neg: int, margin: float, alpha: float, rho: float,
                     *, cap: int = 10_000_000) -> int | None:
    """Smallest number of positives (negatives scaled to keep the prevalence) at which z·SE of the
    paired difference reaches `margin` under the design-based variance; None if not even at `cap`."""
    z = NormalDist().inv_cdf(1 - alpha / 2)
    ratio = n_neg / n_pos if n_pos else 1.0

    def ok(n: int) -> bool:
        return z * _design_se(auc, n, max(1, round(n * ratio)), rho) <= margin

    if ok(max(n_pos, 1)):
        return max(n_pos, 1)
    hi = max(n_pos, 1)
    while not ok(hi):
        hi *= 2
        if hi > cap:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


@dataclass(frozen=True)
class PowerAssessment:
    """Whether the margin can be shown on this data, and what it would take."""

    underpowered: bool
    design_se: float  # design-based SE of ΔAUROC
    power_if_unchanged: float  # P(lower bound ≥ -margin | true Δ = 0), design-based
    needed_positives: int | None  # positives at which the margin becomes demonstrable
    n_pos: int
    n_neg: int

    def sentence(self, pathology: str, margin: float) -> str:
        """E.g. "Hernia: 5 positives; the margin −0.020 needs about 180"."""
        need = "more than 10,000,000" if self.needed_positives is None else f"about {self.needed_positives:,}"
        return (f"{pathology}: {self.n_pos} positives; the margin -{margin:.3f} needs {need} "
                f"(P(pass | unchanged) {self.power_if_unchanged:.2f})")


def assess_power(auc: float | None, n_pos: int, n_neg: int, margin: float, alpha: float, rho: float
                 ) -> PowerAssessment:
    """Whether this design can show `margin` for a paired ΔAUROC (see the module doc).

    `auc` is the parent's AUROC on these cases (None: 0.75, a typical value, is assumed).
    """
    a = 0.75 if auc is None or not math.isfinite(auc) else float(auc)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    se = _design_se(a, n_pos, n_neg, rho)
    power = 0.0 if not math.isfinite(se) else (1.0 if se == 0 else NormalDist().cdf(margin / se - z))
    short = not math.isfinite(se) or z * se > margin
    needed = positives_needed(a, n_pos, n_neg, margin, alpha, rho) if n_pos and n_neg else None
    return PowerAssessment(short, se, power, needed, n_pos, n_neg)
