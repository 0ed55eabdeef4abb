"""Label-free performance estimates at a site's operating point, when they are valid, and their check against labels.

Labels come late or never, so the monitor estimates a window's recall and FPR from its scores alone:
confidence-based performance estimation (the idea of NannyML's CBPE), with its assumptions said out loud.

Assumption (everything rests on it): **calibration transfers** — P(Y = 1 | S = s) at the site is the one
measured on the version's calibration split (no concept shift), and labels are independent given the
scores. A change in the mix of scores (covariate shift: other patients, sicker patients) is what the
estimate follows. A change of p(y | s) biases it silently: readers who call a finding differently, or pure
label shift (prevalence moves while p(s | y) stays put, which by Bayes' rule moves p(y | s)). Unlabelled,
that is invisible: hence rule 3 refuses what it can detect, and rule 4 tests the estimate once labels come.

1. Map (`fit_calibration_map`), per pathology, on the CALIBRATION split (never training data): m(s) =
   isotonic regression of the label on the score (sklearn `IsotonicRegression(out_of_bounds="clip",
   y_min=0, y_max=1)`), unknown (NaN) labels dropped, kept as its knots (linear between, constant beyond);
   with B = 50 seeded refits on bootstrap resamples of the split, and the sorted calibration scores (the
   support). `to_arrays` / `CalibrationMap.from_arrays`: plain arrays for the blob store.
2. Estimate (`estimate`) for n unlabelled window scores s_i at threshold t, p_i = m(s_i), c_i = 1[s_i >= t]:
       recall^ = E[TP] / E[P] = sum p_i c_i / sum p_i        FPR^ = sum (1 - p_i) c_i / sum (1 - p_i)
       prevalence^ = sum p_i / n                             predicted-positive rate = sum c_i / n
   (the last is observed: no interval). Each interval is the central 1 - alpha range of the value the
   window's labels would show under the assumption: for each bootstrap map b, M = 40 label sets
   y_i ~ Bernoulli(m_b(s_i)) — (a) labels random given the probabilities, (b) the map's sampling error —
   pooled (B·M = 2,000 draws), percentiles by the inverted CDF (an endpoint is a value the metric takes);
   a draw with no positive (negative) has no recall (FPR) and is dropped, as the realised value would be.
   B = 50 because the maps only add their spread to the pool: 50 refits estimate a standard deviation to
   about 10 % (1/sqrt(2·49)) for one PAVA fit each at version time (~1 ms per 5,000 studies); 200 measured
   no better; n_boot = 0 counts only (a). Bootstraps of an isotonic fit are unreliable pointwise (cube-root
   asymptotics), less so for sums over a window: tests/cxr/test_estimate.py measures the coverage.
3. Not valid (`valid` False, the metrics None, every failing rule in `reason`) when (a) the caller's share
   of out-of-distribution studies exceeds `max_ood_share` (default 0.10); (b) the share of unsupported
   scores exceeds `max_unsupported_share` (0.10) — a score is unsupported outside [min, max] of the
   calibration scores, or with fewer than `support_k` (5) of them within ±h, h = `support_halfwidth`
   (0.02) × (max − min): there the map rests on a handful of labels; (c) fewer than `min_expected` (5)
   positives (sum p_i) or negatives (sum 1 − p_i) are expected: the recall (FPR) then takes a handful of
   values and its interval spans almost [0, 1]; or the window is empty. The policy sets the limits.
4. Labels arrived (`check_against_labels`): the estimate is recomputed on the labelled studies (chosen by
   score or not: given the scores the assumption still holds) and set against the realised recall and FPR
   with exact Clopper–Pearson intervals and the error (estimate − realised). Rule 2's draws are the
   realised value's law under the assumption, map error included, so each metric gets a two-sided Monte
   Carlo p-value (ties count against rejecting), and the estimate is CONTRADICTED when min(1, 2 min(p_recall,
   p_fpr)) <= alpha: Bonferroni over the two metrics, one verdict per window at level alpha ("realised
   outside the interval" on either, `outside_interval`, flags about 2 alpha of clean windows). The other
   reading, the estimate outside the realised value's interval, ignores the map's error and so flags more
   clean windows as they grow: reported (`estimate_in_realised_interval`), not used. Holm across a
   window's pathologies is the caller's.

Worst first (`estimate_window`): valid estimates with a target (anything with optional `min_recall` and
`max_fpr`, like the policy's SLO) by shortfall = max(min_recall − recall^, FPR^ − max_fpr), largest first;
then valid ones without a target, lowest recall^ first; then the not-valid ones, by name. As in
`cxr.stats`, a case is called positive when score >= threshold.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

import numpy as np
from scipy.stats import beta
from sklearn.isotonic import IsotonicRegression

from cxr.errors import InvalidInput

__all__ = ["CalibrationMap", "EstimateCheck", "EstimateLimits", "MetricCheck", "PerformanceEstimate",
           "check_against_labels", "clopper_pearson", "estimate", "estimate_window", "fit_calibration_map"]

N_BOOT = 50
N_DRAWS = 40
_ARRAY_KEYS = ("knots_x", "knots_y", "boot_x", "boot_y", "boot_offsets", "support", "counts")


class _Target(Protocol):  # the policy's SLO fits; cxr does not import policies
    min_recall: float | None
    max_fpr: float | None


@dataclass(frozen=True)
class EstimateLimits:
    """When an estimate is not valid (module docstring, rule 3); the policy sets them."""

    max_ood_share: float = 0.10
    max_unsupported_share: float = 0.10
    support_k: int = 5
    support_halfwidth: float = 0.02
    min_expected: float = 5.0


def _frozen(a) -> np.ndarray:
    arr = np.array(a, dtype=float)
    arr.flags.writeable = False  # the map is a value: nobody edits its knots in place
    return arr


@dataclass(frozen=True, eq=False)
class CalibrationMap:
    """m(s) ≈ P(Y = 1 | S = s) of one pathology: knots, bootstrap refits, the calibration scores' support."""

    knots_x: np.ndarray
    knots_y: np.ndarray
    boot: tuple[tuple[np.ndarray, np.ndarray], ...]
    support: np.ndarray  # the labelled calibration studies' scores, sorted
    n_pos: int
    n_neg: int

    def __call__(self, scores) -> np.ndarray:
        return np.interp(np.asarray(scores, dtype=float), self.knots_x, self.knots_y)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (keys `_ARRAY_KEYS`): the bootstrap knots concatenated, split at `boot_offsets`."""
        sizes = [x.size for x, _ in self.boot]
        cat = (lambda i: np.concatenate([b[i] for b in self.boot])) if self.boot else (lambda i: np.empty(0))
        return {"knots_x": np.array(self.knots_x), "knots_y": np.array(self.knots_y), "boot_x": cat(0),
                "boot_y": cat(1), "boot_offsets": np.cumsum([0, *sizes]).astype(np.int64),
                "support": np.array(self.support), "counts": np.array([self.n_pos, self.n_neg], dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> CalibrationMap:
        """Rebuild from `to_arrays`' output; `InvalidInput` (field `calibration_map`) when it is malformed."""
        if missing := [k for k in _ARRAY_KEYS if k not in arrays]:
            raise InvalidInput(f"missing arrays {', '.join(missing)}", field="calibration_map")
        a = {k: np.asarray(arrays[k]) for k in _ARRAY_KEYS}
        off = a["boot_offsets"].astype(np.int64)
        ok = (a["knots_x"].size >= 1 and a["support"].size >= 1 and a["knots_x"].shape == a["knots_y"].shape
              and a["boot_x"].shape == a["boot_y"].shape and off.size >= 1 and off[0] == 0
              and off[-1] == a["boot_x"].size and bool(np.all(np.diff(off) >= 1)) and a["counts"].size == 2
              and all(np.isfinite(a[k]).all() for k in ("knots_x", "knots_y", "boot_x", "boot_y", "support")))
        pieces = tuple((_frozen(a["boot_x"][i:j]), _frozen(a["boot_y"][i:j])) for i, j in pairwise(off)) if ok else ()
        if not ok or not all(np.all(np.diff(x) >= 0) for x, _ in ((a["knots_x"], 0), *pieces)):
            raise InvalidInput("inconsistent, unsorted or non-finite arrays", field="calibration_map")
        return cls(_frozen(a["knots_x"]), _frozen(a["knots_y"]), pieces, _frozen(np.sort(a["support"])),
                   int(a["counts"][0]), int(a["counts"][1]))


def _knots(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(s, y)
    return _frozen(iso.X_thresholds_), _frozen(iso.y_thresholds_)


def fit_calibration_map(scores, labels, *, n_boot: int = N_BOOT, seed: int = 0) -> CalibrationMap:
    """Isotonic map of one pathology from its calibration split, with `n_boot` seeded bootstrap refits.

    `labels` are 0/1 with NaN for unknown (dropped). Raises `InvalidInput` on mismatched shapes, labels other
    than 0/1/NaN, non-finite scores of labelled studies, or labels all of one class.
    """
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=float)
    if s.ndim != 1 or s.shape != y.shape:
        raise InvalidInput(f"scores {s.shape} and labels {y.shape} must be 1-D of one length", field="labels")
    known = ~np.isnan(y)
    s, y = s[known], y[known]
    if not np.isin(y, (0.0, 1.0)).all():
        raise InvalidInput("labels must be 0, 1 or NaN (unknown)", field="labels")
    if not np.isfinite(s).all():
        raise InvalidInput("scores of labelled studies must be finite", field="scores")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise InvalidInput(f"the calibration labels are all {'negative' if n_pos == 0 else 'positive'} "
                           f"({y.size} known): no map of P(y | score) can be fitted", field="labels")
    if n_boot < 0:
        raise InvalidInput("must be >= 0", field="n_boot")
    rng = np.random.default_rng(seed)
    boot = tuple(_knots(s[i], y[i]) for i in (rng.integers(0, s.size, s.size) for _ in range(n_boot)))
    return CalibrationMap(*_knots(s, y), boot, _frozen(np.sort(s)), n_pos, y.size - n_pos)


@dataclass(frozen=True)
class PerformanceEstimate:
    """Label-free estimate for one pathology over one window (module docstring).

    Metrics and intervals are None when not `valid` (`reason` says why); the facts before them are given for any
    non-empty window (`ood_share` None: no flags given); `shortfall` only with a target.
    """

    pathology: str
    threshold: float
    n: int
    valid: bool
    reason: str | None
    positive_rate: float | None = None
    expected_positives: float | None = None
    expected_negatives: float | None = None
    ood_share: float | None = None
    unsupported_share: float | None = None
    recall: float | None = None
    recall_ci: tuple[float, float] | None = None
    fpr: float | None = None
    fpr_ci: tuple[float, float] | None = None
    prevalence: float | None = None
    prevalence_ci: tuple[float, float] | None = None
    shortfall: float | None = None
    n_boot: int = 0
    n_draws: int = 0


def _window(scores, ood, field: str) -> tuple[np.ndarray, np.ndarray | None]:
    s = np.asarray(scores, dtype=float)
    if s.ndim != 1 or not np.isfinite(s).all():
        raise InvalidInput(f"expected a 1-D vector of finite scores, got shape {s.shape}, "
                           f"{int((~np.isfinite(s)).sum())} not finite", field=field)
    if ood is None:
        return s, None
    o = np.asarray(ood)
    if o.shape != s.shape or not np.isin(o, (0, 1)).all():
        raise InvalidInput(f"expected {s.size} flags of 0/1, got shape {o.shape}", field="ood")
    return s, o.astype(bool)


def _unsupported(cmap: CalibrationMap, s: np.ndarray, limits: EstimateLimits) -> np.ndarray:
    sup = cmap.support
    h = limits.support_halfwidth * float(sup[-1] - sup[0])
    near = np.searchsorted(sup, s + h, "right") - np.searchsorted(sup, s - h, "left")
    return (s < sup[0]) | (s > sup[-1]) | (near < limits.support_k)


def _rng(seed: int, pathology: str) -> np.random.Generator:  # a pathology's draws do not depend on the others
    return np.random.default_rng([seed, zlib.crc32(pathology.encode())])


def _draws(cmap: CalibrationMap, s: np.ndarray, called: np.ndarray, n_draws: int, rng) -> np.ndarray:
    """(3, D) simulated realised recall, FPR and prevalence of the window (NaN where undefined)."""
    maps = cmap.boot or ((cmap.knots_x, cmap.knots_y),)
    out = []
    for x, y in maps:  # one map at a time: n_draws × n booleans in memory, never B × n_draws × n
        ys = rng.random((n_draws, s.size)) < np.interp(s, x, y)
        pos, tp = ys.sum(axis=1), (ys & called).sum(axis=1)
        neg, fp = s.size - pos, int(called.sum()) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append([np.where(pos > 0, tp / pos, np.nan), np.where(neg > 0, fp / neg, np.nan), pos / s.size])
    return np.concatenate(out, axis=1)


def _interval(d: np.ndarray, alpha: float) -> tuple[float, float] | None:
    d = d[~np.isnan(d)]
    return None if d.size == 0 else tuple(float(q) for q in np.quantile(d, [alpha / 2, 1 - alpha / 2],
                                                                        method="inverted_cdf"))


def _shortfall(recall: float, fpr: float, target: _Target | None) -> float | None:
    lo, hi = getattr(target, "min_recall", None), getattr(target, "max_fpr", None)
    gaps = ([] if lo is None else [lo - recall]) + ([] if hi is None else [fpr - hi])
    return max(gaps) if gaps else None


def _estimate(cmap: CalibrationMap, scores, threshold: float, pathology: str, ood, target: _Target | None,
              limits: EstimateLimits, alpha: float, n_draws: int, seed: int):
    if not math.isfinite(threshold):
        raise InvalidInput("must be finite", field="threshold")
    if not 0.0 < alpha < 1.0 or n_draws < 1:
        raise InvalidInput(f"alpha in (0, 1) and n_draws >= 1, got {alpha}, {n_draws}", field="alpha")
    s, o = _window(scores, ood, "scores")
    t, n = float(threshold), int(s.size)
    if n == 0:
        return PerformanceEstimate(pathology, t, 0, False, "the window has no studies"), None
    p, called = cmap(s), s >= t
    e_pos, e_neg = float(p.sum()), float((1.0 - p).sum())
    facts = {"positive_rate": float(called.mean()), "expected_positives": e_pos, "expected_negatives": e_neg,
             "ood_share": None if o is None else float(o.mean()),
             "unsupported_share": float(_unsupported(cmap, s, limits).mean())}
    why = []
    if facts["ood_share"] is not None and facts["ood_share"] > limits.max_ood_share:
        why.append(f"{facts['ood_share']:.0%} of studies out of distribution > {limits.max_ood_share:.0%}")
    if facts["unsupported_share"] > limits.max_unsupported_share:
        why.append(f"{facts['unsupported_share']:.0%} of scores outside the calibration support "
                   f"> {limits.max_unsupported_share:.0%}")
    why += [f"{e:.1f} expected {what} < {limits.min_expected:g}"
            for what, e in (("positives", e_pos), ("negatives", e_neg)) if e < limits.min_expected]
    if why:
        return PerformanceEstimate(pathology, t, n, False, "; ".join(why), **facts), None
    recall, fpr = float((p * called).sum() / e_pos), float(((1.0 - p) * called).sum() / e_neg)
    d = _draws(cmap, s, called, n_draws, _rng(seed, pathology))
    r_ci, f_ci, p_ci = (_interval(row, alpha) for row in d)
    est = PerformanceEstimate(pathology, t, n, True, None, **facts, recall=recall, recall_ci=r_ci, fpr=fpr, fpr_ci=f_ci,
                              prevalence=e_pos / n, prevalence_ci=p_ci, shortfall=_shortfall(recall, fpr, target),
                              n_boot=len(cmap.boot), n_draws=d.shape[1])
    return est, d


def estimate(cmap: CalibrationMap, scores, threshold: float, *, pathology: str = "", ood=None,
             target: _Target | None = None, limits: EstimateLimits = EstimateLimits(), alpha: float = 0.05,
             n_draws: int = N_DRAWS, seed: int = 0) -> PerformanceEstimate:
    """Estimate one pathology's recall, FPR, prevalence and predicted-positive rate over a window.

    `ood`: per-study 0/1 out-of-distribution flags (None: not checked; flagged studies stay in the estimate,
    which is refused when they are too many); `target`: anything with `min_recall`/`max_fpr` (None: no
    requirement) for `shortfall`; `n_draws`: label draws per map. Seeded: the same inputs, the same numbers.
    An empty window comes back not valid. Raises `InvalidInput` on non-finite scores or threshold, mis-shaped
    flags, `alpha` outside (0, 1) or `n_draws` < 1.
    """
    return _estimate(cmap, scores, threshold, pathology, ood, target, limits, alpha, n_draws, seed)[0]


def _worst_first(e: PerformanceEstimate) -> tuple:
    rank = (2, 0.0) if not e.valid else (1, e.recall) if e.shortfall is None else (0, -e.shortfall)
    return (*rank, e.pathology)


def estimate_window(maps: Mapping[str, CalibrationMap], scores: Mapping[str, Sequence[float]],
                    thresholds: Mapping[str, float], *, pathologies: Sequence[str] | None = None, ood=None,
                    targets: Mapping[str, _Target] | None = None, limits: EstimateLimits = EstimateLimits(),
                    alpha: float = 0.05, n_draws: int = N_DRAWS, seed: int = 0) -> list[PerformanceEstimate]:
    """`estimate` for every named pathology (default: every one with a threshold), worst first (docstring).

    `ood` is one flag per study, shared by all pathologies. Raises `InvalidInput` (field: the pathology)
    when a named pathology lacks a map, scores or a threshold, and as `estimate` does.
    """
    names = sorted(thresholds) if pathologies is None else list(pathologies)
    if lacking := next((k for k in names if k not in maps or k not in scores or k not in thresholds), None):
        raise InvalidInput("needs a calibration map, window scores and a threshold", field=lacking)
    return sorted((estimate(maps[k], scores[k], thresholds[k], pathology=k, ood=ood, target=(targets or {}).get(k),
                            limits=limits, alpha=alpha, n_draws=n_draws, seed=seed) for k in names), key=_worst_first)


@dataclass(frozen=True)
class MetricCheck:
    """One metric's estimate and interval against the realised value k/n and its Clopper–Pearson interval.

    `p_value`: two-sided Monte Carlo p-value of the realised value among the estimate's simulated draws D,
    min(1, 2 (1 + min(#{d <= r}, #{d >= r})) / (|D| + 1)); `outside_interval`: realised outside `ci`.
    """

    metric: str
    estimate: float
    ci: tuple[float, float]
    realised: float
    realised_ci: tuple[float, float]  # Clopper–Pearson
    k: int
    n: int
    error: float  # estimate − realised
    p_value: float
    outside_interval: bool
    estimate_in_realised_interval: bool  # the other reading, reported only


@dataclass(frozen=True)
class EstimateCheck:
    """The estimate on a window's labelled studies against their labels (module docstring, rule 4).

    `p_value`: Bonferroni over the metrics present; `contradicted` = p_value <= alpha: the estimate cannot be
    trusted. The metrics are None when the estimate is not valid or a class is absent (`reason`).
    """

    pathology: str
    n_labelled: int
    estimate: PerformanceEstimate
    recall: MetricCheck | None
    fpr: MetricCheck | None
    p_value: float | None
    contradicted: bool
    reason: str | None


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper–Pearson) 1 − alpha interval of a binomial proportion k/n; (0, 1) when n is 0."""
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _metric(name: str, est, ci, draws: np.ndarray, k: int, n: int, alpha: float) -> MetricCheck | None:
    d = draws[~np.isnan(draws)]
    if n == 0 or est is None or ci is None or d.size == 0:
        return None
    r, rci = k / n, clopper_pearson(k, n, alpha)
    tail = min(int(np.count_nonzero(d <= r)), int(np.count_nonzero(d >= r)))
    p = min(1.0, 2.0 * (1 + tail) / (d.size + 1))
    return MetricCheck(name, est, ci, r, rci, k, n, est - r, p, not ci[0] <= r <= ci[1], rci[0] <= est <= rci[1])


def check_against_labels(cmap: CalibrationMap, scores, labels, threshold: float, *, pathology: str = "",
                         ood=None, limits: EstimateLimits = EstimateLimits(), alpha: float = 0.05,
                         n_draws: int = N_DRAWS, seed: int = 0) -> EstimateCheck:
    """Compare the estimate on a window's labelled studies (labels 0/1, NaN = not yet labelled) with their labels.

    Raises `InvalidInput` on labels other than 0/1/NaN, a length mismatch, and as `estimate` does.
    """
    s, o = _window(scores, ood, "scores")
    y = np.asarray(labels, dtype=float)
    if y.shape != s.shape:
        raise InvalidInput(f"expected {s.size} labels, got shape {y.shape}", field="labels")
    known = ~np.isnan(y)
    if not np.isin(y[known], (0.0, 1.0)).all():
        raise InvalidInput("labels must be 0, 1 or NaN (not yet labelled)", field="labels")
    s, yk = s[known], y[known].astype(bool)
    est, d = _estimate(cmap, s, threshold, pathology, None if o is None else o[known], None, limits, alpha,
                       n_draws, seed)
    if d is None:
        return EstimateCheck(pathology, int(s.size), est, None, None, None, False, f"estimate not valid: {est.reason}")
    called = s >= est.threshold
    rec = _metric("recall", est.recall, est.recall_ci, d[0], int((yk & called).sum()), int(yk.sum()), alpha)
    fpr = _metric("fpr", est.fpr, est.fpr_ci, d[1], int((~yk & called).sum()), int((~yk).sum()), alpha)
    got = [c for c in (rec, fpr) if c is not None]
    p = min(1.0, len(got) * min(c.p_value for c in got)) if got else None
    missing = [m for m, c in (("recall", rec), ("fpr", fpr)) if c is None]
    reason = f"no realised {' or '.join(missing)}: a class is absent from the labels" if missing else None
    return EstimateCheck(pathology, int(s.size), est, rec, fpr, p, p is not None and p <= alpha, reason)
