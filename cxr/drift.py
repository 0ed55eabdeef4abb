"""Has a window of a site's studies moved away from what the version was validated on? Tests without labels.

Labels arrive late or never, so the label-free monitor asks a narrower question: is the window's
distribution the reference's? The reference is the version's calibration split: its output scores
(every study) and a subsample of its pooled features. Nothing here needs a label, a database, a clock
or torch: plain arrays in, a frozen `WindowDrift` out.

**The family.** One test per *named* output (an output whose name is None or "" was never trained or
validated and is skipped) plus one embedding test, k = P_named + 1 hypotheses
H_j: "the window's distribution of quantity j is the reference's".

* Output j: two-sided two-sample Kolmogorov–Smirnov on the scores (`scipy.stats.ks_2samp`,
  ``method="exact"``). Black-box shift detection on the outputs is what Rabanser et al. (NeurIPS 2019,
  "Failing loudly") found strongest. The exact null distribution of D is used at every window size,
  so the p-value is valid at n = 25 as at n = 3000 (the asymptotic one is only a limit); scipy falls
  back to the asymptotic p-value only where the exact count overflows (both samples in the tens of
  thousands, where the limit is accurate), and `ShiftTest.method` says so. Tied scores (saturated
  outputs) make the test conservative, never liberal: P(D >= d) under continuity bounds the discrete case.
* Embedding: MMD² (biased V-statistic) with a Gaussian kernel k(x, y) = exp(-|x - y|² / (2 h²)),
  h = the median pairwise distance among the reference features (the median heuristic), fixed in
  `drift_reference` before any window is seen, so the kernel cannot adapt to the window. Its null is a
  permutation null: the pooled kernel matrix K of reference + window is computed once, and each of
  B random relabellings only re-sums K (MMD² from b'Kb, b'K1 and 1'K1 for the window indicator b).
  p = (1 + #{b: MMD²_b >= MMD²_obs}) / (B + 1): the observed labelling is exchangeable with the B
  random ones under H, so P(p <= u) <= u exactly (Phipson & Smyth 2010), and p is never 0
  (TorchDrift#18). Permuted values within 100 float64 eps (relative) of the observed one count as
  ties, against the window.

**Cost bound.** A window larger than `max_window` is replaced, for the embedding test only, by a
uniform random subsample of `max_window` studies drawn with the injected generator. The subsample is
chosen without looking at any value, so under H it is still an i.i.d. draw from the reference's
distribution, exchangeable with the reference, and the permutation p-value stays exact. The cost is
then O((m + k)² (F + B)) for m reference features and k = min(n, max_window): bounded in n.
The KS tests always use the whole window (O((n_ref + n) log) each).

**Multiplicity.** Holm's step-down over the k p-values: sort p_(1) <= … <= p_(k); the adjusted
p_(i) = max_{j <= i} min(1, (k - j + 1) p_(j)); H_j is rejected when its adjusted p <= alpha, and
the window is *shifted* when any is. Holm is closed testing with Bonferroni local tests, so it
controls the family-wise error rate under any dependence between the tests (the outputs and the
embedding are correlated). Since each p-value above is valid at every window size, the
window-level false-alarm rate — P(shifted | no shift in any output or in the features) — is <= alpha
for every n. The guarantee is over the draw of reference and window, both i.i.d.; with one fixed
reference the rate across windows is conditional on that draw and can sit above or below alpha; the
spread shrinks as the reference grows (a calibration split of thousands, m of hundreds). The
embedding test can reject on its own only if p = 1 / (B + 1) <= alpha / k, i.e. B >= k / alpha - 1
(379 for 18 outputs at 0.05); a B with 1 / (B + 1) > alpha, which could never reject, is refused.

**How much each study moved.** For every window study z, the witness of the MMD (Gretton et al.
2012): f(z) = mean_{w in W, w != z} k(z, w) - mean_{x in R} k(z, x), W the window used by the
embedding test, R the reference features. f > 0: z sits where the window has more mass than the
reference (the region the site moved into); f near 0 or below: the study looks like the reference.
Ranking studies by f, largest first, lists the most shifted first for a label request.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import ks_2samp

from cxr.errors import InvalidInput

__all__ = [
    "EMBEDDING",
    "DriftReference",
    "MmdResult",
    "ShiftTest",
    "WindowDrift",
    "drift_reference",
    "holm",
    "median_bandwidth",
    "mmd_permutation",
    "window_drift",
]

EMBEDDING = "embedding"
MIN_WINDOW = 2  # the witness of a study needs another window study to compare with
_TIE_RTOL = 100 * np.finfo(float).eps  # as scipy.stats.permutation_test: ties within rounding count
_CHUNK = 256  # permutations summed per matrix product (memory N x 256 floats)


@dataclass(frozen=True, eq=False)
class DriftReference:
    """What a version was validated on: calibration scores, a feature subsample, and the kernel bandwidth.

    `names[j]` names score column j (None or "": not a validated output, not tested). `bandwidth` is
    the median pairwise distance of `features`, fixed here before any window is seen.
    """

    names: tuple[str | None, ...]
    scores: np.ndarray
    features: np.ndarray
    bandwidth: float

    @property
    def named(self) -> tuple[int, ...]:
        """Columns of `scores` that are tested."""
        return tuple(j for j, name in enumerate(self.names) if name)


@dataclass(frozen=True)
class ShiftTest:
    """One hypothesis of the family: `statistic` (KS D or MMD²), raw `p_value`, Holm's `p_adjusted`."""

    name: str
    kind: str  # "output" (KS on one output's scores) or "embedding" (MMD on the pooled features)
    statistic: float
    p_value: float
    p_adjusted: float
    rejected: bool
    method: str
    n_reference: int
    n_window: int
    note: str | None = None


@dataclass(frozen=True)
class MmdResult:
    """Permutation MMD test: `p_value = (n_exceed + 1) / (n_permutations + 1)`."""

    statistic: float
    p_value: float
    n_exceed: int
    n_permutations: int


@dataclass(frozen=True)
class WindowDrift:
    """Verdict on one window. `tests` and `rejected` run worst first (smallest adjusted p).

    `witness[i]` is window study i's witness value (module docstring), `most_shifted` the window
    row indices by decreasing witness. `n_embedding_window` is the number of studies the embedding test
    used (`n_window` or the `max_window` subsample).
    """

    shifted: bool
    alpha: float
    family: str
    tests: tuple[ShiftTest, ...]
    rejected: tuple[str, ...]
    n_window: int
    n_embedding_window: int
    bandwidth: float
    witness: tuple[float, ...]
    most_shifted: tuple[int, ...]
    summary: str

    @property
    def worst(self) -> ShiftTest:
        return self.tests[0]


def _matrix(a, field: str, cols: int | None = None) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.ndim != 2 or (cols is not None and arr.shape[1] != cols):
        want = f"(n, {cols})" if cols is not None else "(n, columns)"
        raise InvalidInput(f"expected a matrix of shape {want}, got shape {arr.shape}", field=field)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        rows = ", ".join(str(int(i)) for i in bad[:5]) + (" …" if bad.size > 5 else "")
        raise InvalidInput(f"{bad.size} row(s) not finite (rows {rows}): drop faulty studies first", field=field)
    return arr


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    return np.exp(-_sq_dists(a, b) / (2.0 * bandwidth * bandwidth))


def median_bandwidth(x) -> float:
    """Median pairwise Euclidean distance among the rows of `x` (distinct pairs i < j).

    Raises `InvalidInput` with fewer than two rows, non-finite rows, or all rows identical (no scale).
    """
    arr = _matrix(x, "reference features")
    if arr.shape[0] < 2:
        raise InvalidInput("need at least two reference rows for a bandwidth", field="reference features")
    d2 = _sq_dists(arr, arr)[np.triu_indices(arr.shape[0], 1)]
    h = float(np.median(np.sqrt(d2)))
    if not h > 0.0:
        raise InvalidInput(
            "at least half of the reference pairs are identical: no kernel scale", field="reference features"
        )
    return h


def drift_reference(scores, features, names: Sequence[str | None]) -> DriftReference:
    """Build the reference from calibration `scores` (n_ref x P), `features` (m x F) and the P output `names`.

    The bandwidth is fixed here (median heuristic). Raises `InvalidInput` on shapes that disagree,
    non-finite rows, fewer than two rows, or features with no scale.
    """
    names = tuple(names)
    s = _matrix(scores, "reference scores", len(names))
    f = _matrix(features, "reference features")
    if s.shape[0] < 2:
        raise InvalidInput("need at least two reference studies", field="reference scores")
    s, f = s.copy(), f.copy()  # the reference is stored with the version: nobody edits it in place
    s.setflags(write=False)
    f.setflags(write=False)
    return DriftReference(names, s, f, median_bandwidth(f))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order: reject H_j at level alpha iff adjusted p_j <= alpha.

    Raises `InvalidInput` unless every p-value lies in [0, 1].
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise InvalidInput("p-values must be a vector of numbers in [0, 1]", field="p_values")
    k = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (k - np.arange(k)) * p[order])
    adjusted = np.empty(k)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def _mmd_from_kernel(kernel: np.ndarray, m: int, n_permutations: int, rng: np.random.Generator) -> MmdResult:
    """Permutation MMD on a pooled kernel whose first m rows are the reference, the rest the window."""
    size = kernel.shape[0]
    n = size - m
    total = kernel.sum()
    row = kernel.sum(axis=1)
    stats = np.empty(n_permutations + 1)
    for lo in range(0, n_permutations + 1, _CHUNK):
        count = min(_CHUNK, n_permutations + 1 - lo)
        block = rng.permuted(np.tile(np.arange(size), (count, 1)), axis=1)[:, :n]  # window members
        if lo == 0:  # row 0: the observed labelling, through exactly the arithmetic of the permuted ones
            block[0] = np.arange(m, size)
        ind = np.zeros((size, block.shape[0]))
        ind[block, np.arange(block.shape[0])[:, None]] = 1.0
        s_ww = (ind * (kernel @ ind)).sum(axis=0)  # b'Kb: window-window sum
        s_w = row @ ind  # b'K1
        s_rr = total - 2.0 * s_w + s_ww  # a'Ka with a = 1 - b
        s_rw = s_w - s_ww  # a'Kb
        stats[lo : lo + block.shape[0]] = s_rr / m**2 + s_ww / n**2 - 2.0 * s_rw / (m * n)
    observed = stats[0]
    exceed = int(np.count_nonzero(stats[1:] >= observed - abs(observed) * _TIE_RTOL))
    return MmdResult(float(observed), (exceed + 1) / (n_permutations + 1), exceed, n_permutations)


def _check_permutations(n_permutations: int) -> None:
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int | np.integer) or n_permutations < 1:
        raise InvalidInput(f"must be a positive integer, got {n_permutations!r}", field="n_permutations")


def mmd_permutation(reference, window, bandwidth: float, n_permutations: int, rng: np.random.Generator) -> MmdResult:
    """Permutation test of MMD² between the rows of `reference` and `window` (module docstring).

    `bandwidth` must have been fixed without the window. Returns an `MmdResult`; the p-value is
    (b + 1) / (B + 1), never 0. Raises `InvalidInput` on bad shapes, non-finite rows or B < 1.
    """
    _check_permutations(n_permutations)
    x = _matrix(reference, "reference features")
    y = _matrix(window, "window features", x.shape[1])
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        raise InvalidInput(f"must be a positive number, got {bandwidth}", field="bandwidth")
    pooled = np.vstack([x, y])
    return _mmd_from_kernel(_kernel(pooled, pooled, bandwidth), x.shape[0], n_permutations, rng)


def _ks(name: str, ref: np.ndarray, win: np.ndarray) -> ShiftTest:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        res = ks_2samp(ref, win, method="exact")
    fell_back = any("ks_2samp" in str(w.message) for w in caught)
    method = "ks_2samp asymptotic (exact count not computable)" if fell_back else "ks_2samp exact"
    note = None
    if np.ptp(ref) == 0.0 and np.ptp(win) == 0.0:
        note = "constant scores in reference and window" if ref[0] == win[0] else "constant scores, moved"
    return ShiftTest(name, "output", float(res.statistic), float(res.pvalue), math.nan, False, method,
                     ref.size, win.size, note)  # fmt: skip


def _witness(reference: DriftReference, window: np.ndarray, sub: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """f(z) for every window row: mean kernel to the other subsampled window rows minus mean kernel to the reference."""
    m, k = reference.features.shape[0], sub.size
    out = np.empty(window.shape[0])
    # Rows of the subsample: read off the pooled kernel, minus the self term k(z, z) (1 up to rounding).
    within = kernel[m:, m:]
    out[sub] = (within.sum(axis=1) - within.diagonal()) / (k - 1) - kernel[m:, :m].mean(axis=1)
    rest = np.setdiff1d(np.arange(window.shape[0]), sub)
    for lo in range(0, rest.size, 1024):
        rows = rest[lo : lo + 1024]
        out[rows] = (_kernel(window[rows], window[sub], reference.bandwidth).mean(axis=1)
                     - _kernel(window[rows], reference.features, reference.bandwidth).mean(axis=1))  # fmt: skip
    return out


def _summary(shifted: bool, tests: Sequence[ShiftTest], alpha: float, n: int) -> str:
    def show(t: ShiftTest) -> str:
        stat = f"KS D={t.statistic:.3f}" if t.kind == "output" else f"MMD²={t.statistic:.4f}"
        return f"{t.name} ({stat}, adjusted p={t.p_adjusted:.3g})"

    level = f"family-wise false-alarm rate {alpha:g}"
    if shifted:
        hits = [t for t in tests if t.rejected]
        more = f" and {len(hits) - 3} more" if len(hits) > 3 else ""
        return (f"Shift in {n} studies: {len(hits)} of {len(tests)} tests reject at {level}: "
                + ", ".join(show(t) for t in hits[:3]) + more + ".")  # fmt: skip
    return f"No shift detected in {n} studies at {level}; closest: {show(tests[0])}."


def window_drift(
    reference: DriftReference,
    scores,
    features,
    *,
    rng: np.random.Generator,
    alpha: float = 0.05,
    n_permutations: int = 500,
    max_window: int = 1000,
) -> WindowDrift:
    """Test a window's `scores` (n x P, the reference's columns) and `features` (n x F) against `reference`.

    Runs KS on every named output and the permutation MMD on the features (on a `max_window` subsample
    drawn with `rng` when n is larger), adjusts by Holm, and calls the window shifted when any adjusted
    p <= `alpha` (module docstring: family-wise false-alarm rate <= alpha at every n). Returns a
    `WindowDrift`. Raises `InvalidInput` on shapes that disagree with the reference, non-finite rows
    (rows named), fewer than 2 studies, alpha outside (0, 1), or B too small ever to reach alpha.
    """
    if not 0.0 < alpha < 1.0:
        raise InvalidInput(f"must be strictly between 0 and 1, got {alpha}", field="alpha")
    _check_permutations(n_permutations)
    if 1.0 / (n_permutations + 1) > alpha:
        raise InvalidInput(f"{n_permutations} permutations can never give p <= {alpha:g}", field="n_permutations")
    if max_window < MIN_WINDOW:
        raise InvalidInput(f"must be at least {MIN_WINDOW}, got {max_window}", field="max_window")
    s = _matrix(scores, "window scores", len(reference.names))
    f = _matrix(features, "window features", reference.features.shape[1])
    n = s.shape[0]
    if f.shape[0] != n:
        raise InvalidInput(f"{f.shape[0]} feature rows for {n} score rows", field="window features")
    if n < MIN_WINDOW:
        raise InvalidInput(f"a window needs at least {MIN_WINDOW} studies, got {n}", field="window scores")

    raw = [_ks(str(reference.names[j]), reference.scores[:, j], s[:, j]) for j in reference.named]
    sub = np.arange(n) if n <= max_window else np.sort(rng.choice(n, size=max_window, replace=False))
    pooled = np.vstack([reference.features, f[sub]])
    kernel = _kernel(pooled, pooled, reference.bandwidth)
    mmd = _mmd_from_kernel(kernel, reference.features.shape[0], n_permutations, rng)
    method = f"permutation MMD, Gaussian kernel h={reference.bandwidth:.4g}, B={n_permutations}"
    if sub.size < n:
        method += f", window subsampled to {sub.size}"
    raw.append(ShiftTest(EMBEDDING, "embedding", mmd.statistic, mmd.p_value, math.nan, False, method,
                         reference.features.shape[0], int(sub.size)))  # fmt: skip

    adjusted = holm([t.p_value for t in raw])
    tests = [
        ShiftTest(t.name, t.kind, t.statistic, t.p_value, float(a), bool(a <= alpha), t.method,
                  t.n_reference, t.n_window, t.note)
        for t, a in zip(raw, adjusted, strict=True)
    ]  # fmt: skip
    tests.sort(key=lambda t: (t.p_adjusted, t.p_value, t.name))
    shifted = any(t.rejected for t in tests)
    family = (
        f"Holm over {len(tests)} tests: two-sample KS on each of {len(tests) - 1} named outputs and a permutation "
        f"MMD on the {reference.features.shape[1]}-d features; window-level family-wise false-alarm rate <= {alpha:g}"
    )
    witness = _witness(reference, f, sub, kernel)
    order = np.argsort(-witness, kind="stable")
    return WindowDrift(
        shifted=shifted,
        alpha=float(alpha),
        family=family,
        tests=tuple(tests),
        rejected=tuple(t.name for t in tests if t.rejected),
        n_window=n,
        n_embedding_window=int(sub.size),
        bandwidth=reference.bandwidth,
        witness=tuple(float(w) for w in witness),
        most_shifted=tuple(int(i) for i in order),
        summary=_summary(shifted, tests, alpha, n),
    )
