"""Per-pathology evaluation statistics: AUROC with DeLong intervals, paired tests, confusion metrics.

The gate accepts or rejects a new model version on these numbers, so they must be
right on the awkward inputs a clinic produces: tied scores, a pathology with two
positives, a pathology with none. Everything here is pure numpy/scipy on plain
vectors. Degenerate inputs never raise: they come back as NaN (or None in the
metric dicts) together with a `reason` a person can read.

The DeLong variance follows the fast algorithm of Sun & Xu (2014, "Fast
implementation of DeLong's algorithm for comparing the areas under correlated
receiver operating characteristic curves", IEEE SPL 21(11)): the structural
components (placement values) come from midrank differences, here counted with one
sort per class and binary searches, O(n log n) instead of the O(n_pos * n_neg)
double loop, ties counted as 1/2.

Convention shared with `cxr.thresholds`: a case is called positive when its
score is >= the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from cxr.errors import InvalidInput

__all__ = [
    "AucCI",
    "BootstrapResult",
    "PairedResult",
    "auroc",
    "binary_metrics",
    "check_labels",
    "check_scores",
    "delong_ci",
    "delong_paired",
    "paired_bootstrap",
]

NAN = float("nan")
_STD_NORMAL = NormalDist()  # stdlib: ~100x cheaper per call than scipy.stats.norm, same values


def _z(alpha: float) -> float:
    return _STD_NORMAL.inv_cdf(1.0 - alpha / 2.0)


@dataclass(frozen=True)
class AucCI:
    """AUROC with its DeLong variance and a normal-approximation interval clipped to [0, 1].

    Iterating yields `(auc, lo, hi, var)`, so `auc, lo, hi, var = delong_ci(y, s)` works.
    Undefined values are NaN and `reason` says why.
    """

    auc: float
    lo: float
    hi: float
    var: float
    reason: str | None = None

    def __iter__(self):
        return iter((self.auc, self.lo, self.hi, self.var))


@dataclass(frozen=True)
class PairedResult:
    """DeLong comparison of two correlated ROC curves on the same cases; `delta = auc_a - auc_b`.

    `lo`/`hi` bound `delta` (normal approximation, clipped to [-1, 1]); `p_value` is two-sided.
    Undefined values are NaN and `reason` says why.
    """

    auc_a: float
    auc_b: float
    delta: float
    var: float
    z: float
    p_value: float
    lo: float
    hi: float
    reason: str | None = None


@dataclass(frozen=True)
class BootstrapResult:
    """Stratified paired bootstrap of AUROC; `delta`, `var_delta`, `lo`, `hi` are NaN without `s_b`.

    With `s_b`, `lo`/`hi` is the percentile interval of `auc_a - auc_b`; without it, of `auc_a`.
    """

    auc_a: float
    auc_b: float
    delta: float
    var_a: float
    var_b: float
    var_delta: float
    lo: float
    hi: float
    n_boot: int


def check_labels(y, field: str = "labels") -> np.ndarray:
    """Return `y` as a 1-D bool array; raise `InvalidInput` unless every value is 0 or 1 (no NaN)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise InvalidInput(f"expected a 1-D vector, got shape {arr.shape}", field=field)
    if arr.dtype == bool:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise InvalidInput("labels must be 0 or 1 (drop unknown/NaN labels first)", field=field)
    return arr.astype(bool)


def check_scores(s, n: int, field: str = "scores") -> np.ndarray:
    """Return `s` as a 1-D float array of length `n`; raise `InvalidInput` on a shape mismatch or non-finite value."""
    arr = np.asarray(s, dtype=float)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InvalidInput(f"expected {n} scores, got shape {arr.shape}", field=field)
    if not np.isfinite(arr).all():
        raise InvalidInput("scores must be finite", field=field)
    return arr


def _degenerate(y: np.ndarray) -> str | None:
    n_pos = int(y.sum())
    if n_pos == 0:
        return "no positive cases"
    if n_pos == y.size:
        return "no negative cases"
    return None


def _placements(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structural components of Sun & Xu's midrank algorithm for k score rows.

    Takes `scores` of shape (k, n) and bool labels `y` (n,); returns `aucs` (k,), `v10` (k, m): for
    each positive, the fraction of negatives it outranks, and `v01` (k, n_neg): for each negative, the
    fraction of positives that outrank it (ties count 1/2). Sun & Xu's midrank differences
    Tz - Tx are exactly these counts; here they come from one sort per class and binary searches.
    """
    rows = []
    for row in scores:
        pos, neg = row[y], row[~y]
        sn, sp = np.sort(neg), np.sort(pos)
        v10 = (np.searchsorted(sn, pos, "left") + np.searchsorted(sn, pos, "right")) / (2.0 * neg.size)
        v01 = 1.0 - (np.searchsorted(sp, neg, "left") + np.searchsorted(sp, neg, "right")) / (2.0 * pos.size)
        rows.append((v10, v01))
    v10 = np.stack([r[0] for r in rows])
    v01 = np.stack([r[1] for r in rows])
    return v10.mean(axis=1), v10, v01


def _var_from(v10: np.ndarray, v01: np.ndarray) -> float:
    """DeLong variance S10/m + S01/n of one row of structural components (NaN below two of a class)."""
    m, n = v10.shape[-1], v01.shape[-1]
    if m < 2 or n < 2:
        return NAN
    return float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)


def auroc(y, s) -> float:
    """Area under the ROC curve of scores `s` for 0/1 labels `y` (ties count 1/2).

    Returns NaN when `y` has no positives or no negatives. Raises `InvalidInput` on bad shapes,
    non-binary labels or non-finite scores.
    """
    yb = check_labels(y)
    sa = check_scores(s, yb.size)
    if _degenerate(yb):
        return NAN
    aucs, _, _ = _placements(yb, sa[None, :])
    return float(aucs[0])


def delong_ci(y, s, alpha: float = 0.05) -> AucCI:
    """AUROC of `s` for labels `y` with the DeLong variance and a (1 - alpha) normal interval.

    Returns an `AucCI`; with no positives or no negatives every number is NaN, and with fewer
    than two cases of a class the variance and interval are NaN (the AUROC is still given).
    Raises `InvalidInput` on bad input.
    """
    yb = check_labels(y)
    sa = check_scores(s, yb.size)
    reason = _degenerate(yb)
    if reason:
        return AucCI(NAN, NAN, NAN, NAN, reason)
    aucs, v10, v01 = _placements(yb, sa[None, :])
    auc = float(aucs[0])
    var = _var_from(v10[0], v01[0])
    if math.isnan(var):
        return AucCI(auc, NAN, NAN, NAN, "fewer than two cases of a class: no variance")
    half = _z(alpha) * math.sqrt(max(var, 0.0))
    return AucCI(auc, max(0.0, auc - half), min(1.0, auc + half), var)


def delong_paired(y, s_a, s_b, alpha: float = 0.05) -> PairedResult:
    """Compare two correlated ROC curves (scores `s_a`, `s_b` on the same cases) by DeLong's test.

    Returns a `PairedResult` with `delta = auc_a - auc_b`, the variance of the difference, z,
    the two-sided p-value and a (1 - alpha) interval for `delta`. Identical scores give exactly
    `delta = 0`, `var = 0`, `p = 1`. Degenerate labels give NaN with a reason.
    Raises `InvalidInput` on bad input.
    """
    yb = check_labels(y)
    sa = check_scores(s_a, yb.size, "scores_a")
    sb = check_scores(s_b, yb.size, "scores_b")
    reason = _degenerate(yb)
    if reason:
        return PairedResult(NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, reason)
    aucs, v10, v01 = _placements(yb, np.stack([sa, sb]))
    auc_a, auc_b = float(aucs[0]), float(aucs[1])
    delta = auc_a - auc_b
    # Variance of the difference from the differenced components: exactly 0 for identical scores.
    var = _var_from(v10[0] - v10[1], v01[0] - v01[1])
    if math.isnan(var):
        return PairedResult(auc_a, auc_b, delta, NAN, NAN, NAN, NAN, NAN, "fewer than two cases of a class")
    var = max(var, 0.0)
    if var == 0.0:
        z = 0.0 if delta == 0.0 else math.copysign(math.inf, delta)
        p = 1.0 if delta == 0.0 else 0.0
        return PairedResult(auc_a, auc_b, delta, 0.0, z, p, delta, delta)
    sd = math.sqrt(var)
    z = delta / sd
    p = math.erfc(abs(z) / math.sqrt(2.0))  # two-sided normal tail
    half = _z(alpha) * sd
    return PairedResult(auc_a, auc_b, delta, var, z, p, max(-1.0, delta - half), min(1.0, delta + half))


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def binary_metrics(y, s, threshold: float) -> dict:
    """Confusion counts and rates of the rule `s >= threshold` against labels `y`.

    Returns a dict with `threshold, tp, fp, tn, fn, n_pos, n_neg, sensitivity, recall,
    specificity, ppv, precision, npv, f1, fpr`; a rate whose denominator is zero is None
    (e.g. `ppv` when nothing is called positive). Raises `InvalidInput` on bad input.
    """
    yb = check_labels(y)
    sa = check_scores(s, yb.size)
    pred = sa >= threshold
    tp = int(np.count_nonzero(pred & yb))
    fp = int(np.count_nonzero(pred & ~yb))
    n_pos = int(yb.sum())
    n_neg = yb.size - n_pos
    fn, tn = n_pos - tp, n_neg - fp
    sens = _ratio(tp, n_pos)
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "sensitivity": sens,
        "recall": sens,
        "specificity": _ratio(tn, n_neg),
        "ppv": _ratio(tp, tp + fp),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "fpr": _ratio(fp, n_neg),
    }


def _boot_aucs(pos: np.ndarray, neg: np.ndarray, wp: np.ndarray, wn: np.ndarray) -> np.ndarray:
    """AUROC under each row of multinomial case weights, in O(B * (m + n)) with a cumulative sum."""
    order = np.argsort(neg, kind="stable")
    sorted_neg = neg[order]
    below = np.searchsorted(sorted_neg, pos, side="left")  # negatives strictly below each positive
    upto = np.searchsorted(sorted_neg, pos, side="right")  # ... and tied with it
    cum = np.zeros((wn.shape[0], neg.size + 1))
    np.cumsum(wn[:, order], axis=1, out=cum[:, 1:])
    h = 0.5 * (cum[:, below] + cum[:, upto])
    return (wp * h).sum(axis=1) / (pos.size * neg.size)


def paired_bootstrap(y, s_a, s_b=None, *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> BootstrapResult:
    """Stratified paired bootstrap of AUROC (positives and negatives resampled separately, same draw for a and b).

    A seeded cross-check of the DeLong numbers, not used by the gate. Returns a `BootstrapResult`
    with the point AUROCs, bootstrap variances and a percentile interval. Raises `InvalidInput`
    on bad input or labels with no positives or no negatives.
    """
    yb = check_labels(y)
    sa = check_scores(s_a, yb.size, "scores_a")
    reason = _degenerate(yb)
    if reason:
        raise InvalidInput(f"cannot bootstrap an AUROC: {reason}", field="labels")
    if n_boot < 2:
        raise InvalidInput("need at least 2 resamples", field="n_boot")
    m, n = int(yb.sum()), int((~yb).sum())
    rng = np.random.default_rng(seed)
    wp = rng.multinomial(m, np.full(m, 1.0 / m), size=n_boot).astype(float)
    wn = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    boot_a = _boot_aucs(sa[yb], sa[~yb], wp, wn)
    q = (alpha / 2, 1 - alpha / 2)
    auc_a = auroc(yb, sa)
    if s_b is None:
        lo, hi = np.quantile(boot_a, q)
        return BootstrapResult(auc_a, NAN, NAN, float(boot_a.var(ddof=1)), NAN, NAN, float(lo), float(hi), n_boot)
    sb = check_scores(s_b, yb.size, "scores_b")
    boot_b = _boot_aucs(sb[yb], sb[~yb], wp, wn)
    diff = boot_a - boot_b
    lo, hi = np.quantile(diff, q)
    auc_b = auroc(yb, sb)
    return BootstrapResult(
        auc_a,
        auc_b,
        auc_a - auc_b,
        float(boot_a.var(ddof=1)),
        float(boot_b.var(ddof=1)),
        float(diff.var(ddof=1)),
        float(lo),
        float(hi),
        n_boot,
    )
