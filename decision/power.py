"""Can the evaluation data show non-inferiority at all? The gate's power rule, as a pure function.

A non-inferiority check passes when the lower bound of the (1 - alpha) paired DeLong interval of
ΔAUROC = AUROC(candidate) - AUROC(parent) is at least -margin. With few positives that bound sits
far below zero even when nothing changed (five Hernia positives: ±0.03 or more), so the check
blocks every real change for a reason that is about sample size, not harm. Before judging, the
gate therefore asks whether this interval *can* clear the margin.

**Measured (the rule).** The paired DeLong interval is Δ ± z·SE with z = Φ⁻¹(1 - alpha/2) and

      SE² = v₁ + v₂ - 2 cov,

v₁, v₂ the DeLong variances of the candidate's and the parent's AUROC on these cases and cov their
DeLong covariance (`ParentComparison.var_candidate`, `var_parent`, `covariance`). The check is
**underpowered** when z·SE > margin: even with Δ estimated at exactly zero the lower bound would lie
below -margin, so the data cannot show the margin for this pair of models; the probability that an
unchanged candidate passes, Φ(margin/SE - z), is then under one half. The correlation of the two
estimates is measured, r = cov / √(v₁ v₂), not assumed: a re-trained backbone decorrelates its scores
from its parent's (r well below 0.95), which widens the interval, and that is a property of the
comparison the data can or cannot make, not a sign of harm. Harm is still judged: an underpowered
check under `gate.underpowered = "no_significant_harm"` fails when the whole interval lies below zero.

**Design (how many positives it would take).** Hanley & McNeil's (1982) variance of one AUROC
estimate with n₁ positives and n₀ negatives,

      V(A) = [A(1 - A) + (n₁ - 1)(Q₁ - A²) + (n₀ - 1)(Q₂ - A²)] / (n₁ n₀),
      Q₁ = A / (2 - A),  Q₂ = 2A² / (1 + A),

gives two correlated estimates a difference with variance 2 V(A)(1 - r), here with the measured r.
"Needs about N" is the number of positives (the prevalence held) at which z·SE reaches the margin,
the larger of two answers: that design SE, and the measured SE scaled as Hanley–McNeil's variance
falls with n (SE(n)² = SE² · V(A; n) / V(A; n₁)) — so a check the measured interval calls
underpowered never "needs" the positives it already has.

**Fallback.** Without a measured covariance (fewer than two cases of a class, or an evaluation stored
before the covariance was recorded) the design SE with ρ = the policy's `gate.power_correlation` is
used for both, and the check's detail says so. What an underpowered check does is the policy's
`gate.underpowered`.
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


def _first_n(se_at, n_pos: int, n_neg: int, margin: float, z: float, cap: int) -> int | None:
    """Smallest n ≥ max(n_pos, 1) with z·se_at(n, n0(n)) ≤ margin, n0 keeping the prevalence; None past `cap`.

    `se_at` must not increase with n (Hanley–McNeil's variance falls as 1/n)."""
    ratio = n_neg / n_pos if n_pos else 1.0

    def ok(n: int) -> bool:
        return z * se_at(n, max(1, round(n * ratio))) <= margin

    hi = max(n_pos, 1)
    if ok(hi):
        return hi
    while not ok(hi):
        hi *= 2
        if hi > cap:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def positives_needed(auc: float, n_pos: int, n_neg: int, margin: float, alpha: float, rho: float,
                     *, cap: int = 10_000_000) -> int | None:
    """Smallest number of positives (negatives scaled to keep the prevalence) at which z·SE of the
    paired difference reaches `margin` under the design-based variance; None if not even at `cap`."""
    z = NormalDist().inv_cdf(1 - alpha / 2)
    return _first_n(lambda n, n0: _design_se(auc, n, n0, rho), n_pos, n_neg, margin, z, cap)


@dataclass(frozen=True)
class PowerAssessment:
    """Whether the margin can be shown on this data, and what it would take.

    `se` is the standard error the verdict used: the measured paired DeLong SE of ΔAUROC when
    `measured`, else `design_se` at the policy's correlation. `rho` is the correlation used in the
    design: r = cov/√(v₁v₂) of this comparison when `rho_measured`, else `gate.power_correlation`.
    """

    underpowered: bool
    design_se: float  # design-based SE of ΔAUROC (Hanley–McNeil, correlation `rho`)
    power_if_unchanged: float  # P(lower bound ≥ -margin | true Δ = 0) at SE `se`
    needed_positives: int | None  # positives at which the margin becomes demonstrable
    n_pos: int
    n_neg: int
    se: float = math.nan
    rho: float = math.nan
    measured: bool = False
    rho_measured: bool = False

    def sentence(self, pathology: str, margin: float) -> str:
        """E.g. "Hernia: 5 positives; the margin -0.020 needs about 180 (P(pass | unchanged) 0.07; measured
        SE 0.0310, ρ 0.62)"; without a measured covariance it says that the policy's ρ was assumed."""
        need = "more than 10,000,000" if self.needed_positives is None else f"about {self.needed_positives:,}"
        if not self.measured:
            how = f"design SE {self.se:.4f} at the policy's ρ {self.rho:.2f}: no measured covariance"
        else:
            how = f"measured SE {self.se:.4f}, ρ {self.rho:.2f}" + (
                "" if self.rho_measured else " from the policy: not measurable")
        return (f"{pathology}: {self.n_pos} positives; the margin -{margin:.3f} needs {need} "
                f"(P(pass | unchanged) {self.power_if_unchanged:.2f}; {how})")


def assess_power(auc: float | None, n_pos: int, n_neg: int, margin: float, alpha: float, rho: float,
                 *, measured_se: float | None = None, measured_rho: float | None = None) -> PowerAssessment:
    """Whether this comparison can show `margin` for a paired ΔAUROC (see the module doc).

    `auc` is the parent's AUROC on these cases (None: 0.75, a typical value, is assumed). `rho` is the
    policy's fallback correlation; `measured_se` (the paired DeLong SE of Δ) and `measured_rho`
    (cov/√(v₁v₂)) come from the comparison and, when given, replace the design SE in the verdict and
    `rho` in the design. Returns a `PowerAssessment`; raises nothing.
    """
    a = 0.75 if auc is None or not math.isfinite(auc) else float(auc)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    rho_measured = measured_rho is not None and math.isfinite(measured_rho)
    r = max(-1.0, min(1.0, measured_rho)) if measured_rho is not None and rho_measured else rho
    design = _design_se(a, n_pos, n_neg, r)
    has_se = measured_se is not None and math.isfinite(measured_se)
    se = measured_se if measured_se is not None and has_se else design
    power = 0.0 if not math.isfinite(se) else (1.0 if se == 0 else NormalDist().cdf(margin / se - z))
    short = not math.isfinite(se) or z * se > margin
    needed = positives_needed(a, n_pos, n_neg, margin, alpha, r) if n_pos and n_neg else None
    v_here = hanley_mcneil_variance(a, n_pos, n_neg)
    if has_se and needed is not None and math.isfinite(v_here) and v_here > 0:
        # the measured SE, shrunk as Hanley–McNeil's variance falls with n
        scaled = _first_n(lambda n, n0: se * math.sqrt(hanley_mcneil_variance(a, n, n0) / v_here),
                          n_pos, n_neg, margin, z, 10_000_000)
        needed = None if scaled is None else max(needed, scaled)
    return PowerAssessment(short, design, power, needed, n_pos, n_neg, se, r, has_se, rho_measured)
