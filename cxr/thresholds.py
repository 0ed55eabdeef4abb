"""Operating-point selection for one pathology on a calibration split, with finite-sample guarantees.

Threshold calibration is the cheapest treatment (cost 1), and the paper behind this
project shows how it goes wrong: Youden's J took Cardiomegaly's precision from 1.0
to 0.11. So every method here says what it promises. `youden` and `f1_optimal` only
describe the calibration data. `recall_floor` and `precision_floor` hold, with
probability at least 1 - delta over the draw of an i.i.d. calibration set, for the
population the calibration set was drawn from:

* recall floor (exact, distribution-free): the threshold is the k-th smallest score
  of the m calibration positives, with k the largest integer such that
  P(Binomial(m, 1 - r) <= k - 1) <= delta. Then P_cal[P(S >= t | Y = 1) >= r] >= 1 - delta
  for any score distribution, ties included. This is the high-probability
  ("PAC", training-conditional) form of conformal risk control for the
  false-negative rate, i.e. Learn-then-Test with the exact binomial tail; the
  in-expectation form E[FNR] <= 1 - r would be weaker.
* precision floor (Learn-then-Test): for each threshold of a fixed grid, from high to
  low, H_t: P(Y = 1 | S >= t) < p is tested with the exact binomial p-value
  P(Binomial(n_t, p) >= tp_t), valid because, given n_t cases at or above t, their
  labels are i.i.d. Bernoulli(precision(t)). The family is tested by the fallback
  procedure (Wiens 2003): fixed-sequence testing that spreads delta over the grid and
  passes a rejected hypothesis' level on to the next, so the sparse top of the grid
  (a handful of cases above 0.99) cannot stop the sequence. FWER <= delta, so every
  certified threshold, and the lowest one returned, holds jointly with prob >= 1 - delta.

Convention shared with `cxr.stats`: a case is called positive when score >= threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom

from cxr.errors import InvalidInput
from cxr.kinds import IssueKind
from cxr.stats import binary_metrics, check_labels, check_scores

__all__ = [
    "GOALS",
    "OperatingPoint",
    "choose_for_false_negatives",
    "choose_for_false_positives",
    "choose_operating_point",
    "f1_optimal",
    "precision_floor",
    "recall_floor",
    "tradeoff_table",
    "youden",
]

GOALS = ("youden", "f1", "precision_floor", "recall_floor", IssueKind.false_positives.value,
         IssueKind.false_negatives.value)
DEFAULT_GRID = np.linspace(1.0, 0.0, 101)


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and what it does on the calibration data; `threshold` is None when infeasible.

    `precision`, `recall`, `specificity`, `f1`, `fpr` are measured on the calibration split (None
    where undefined); `guarantee` states what holds on new data, if anything.
    """

    method: str
    threshold: float | None
    precision: float | None
    recall: float | None
    specificity: float | None
    f1: float | None
    fpr: float | None
    n_pos: int
    n_neg: int
    guarantee: str | None
    feasible: bool
    reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _inputs(y, s) -> tuple[np.ndarray, np.ndarray]:
    yb = check_labels(y)
    return yb, check_scores(s, yb.size)


def _check_rate(value: float, field: str) -> None:
    if not 0.0 < value < 1.0:
        raise InvalidInput(f"must be strictly between 0 and 1, got {value}", field=field)


def _at(method: str, y: np.ndarray, s: np.ndarray, t: float, guarantee: str | None = None) -> OperatingPoint:
    m = binary_metrics(y, s, t)
    rates = {k: m[k] for k in ("precision", "recall", "specificity", "f1", "fpr", "n_pos", "n_neg")}
    return OperatingPoint(method, float(t), **rates, guarantee=guarantee, feasible=True)


def _infeasible(method: str, y: np.ndarray, reason: str) -> OperatingPoint:
    n_pos = int(y.sum())
    return OperatingPoint(method, None, None, None, None, None, None, n_pos, y.size - n_pos, None, False, reason)


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with tp and fp counts of `s >= t` at each."""
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]
    tps = np.cumsum(yy)[last]
    return ss[last], tps, (last + 1) - tps


def youden(y, s) -> OperatingPoint:
    """Threshold maximising Youden's J = recall + specificity - 1 on the calibration data (highest on ties).

    No guarantee on new data. Infeasible without positives and negatives. Raises `InvalidInput` on bad input.
    """
    yb, sa = _inputs(y, s)
    n_pos = int(yb.sum())
    if n_pos == 0 or n_pos == yb.size:
        return _infeasible("youden", yb, "needs positive and negative cases")
    thr, tps, fps = _curve(yb, sa)
    j = tps / n_pos - fps / (yb.size - n_pos)
    return _at("youden", yb, sa, thr[int(np.argmax(j))])


def f1_optimal(y, s) -> OperatingPoint:
    """Threshold maximising F1 on the calibration data (highest on ties); no guarantee on new data.

    Infeasible without positives. Raises `InvalidInput` on bad input.
    """
    yb, sa = _inputs(y, s)
    n_pos = int(yb.sum())
    if n_pos == 0:
        return _infeasible("f1", yb, "no positive cases")
    thr, tps, fps = _curve(yb, sa)
    half_f1 = tps / (tps + fps + n_pos)  # F1 = 2 tp / (2 tp + fp + fn) halved: only its argmax is used
    return _at("f1", yb, sa, thr[int(np.argmax(half_f1))])


def _order_stat_k(m: int, miss: float, delta: float) -> int:
    """Largest k in 0..m with P(Binomial(m, miss) <= k - 1) <= delta (0: none certifies)."""
    if m == 0:
        return 0
    cdf = binom.cdf(np.arange(m), m, miss)  # cdf[k-1] for k = 1..m, increasing in k
    return int(np.count_nonzero(cdf <= delta))


def _min_cases(rate: float, delta: float) -> int:
    return math.ceil(math.log(delta) / math.log(rate))


def recall_floor(y, s, min_recall: float, delta: float) -> OperatingPoint:
    """Highest threshold whose recall on new i.i.d. data is >= `min_recall` with probability >= 1 - `delta`.

    The threshold is an order statistic of the calibration positives' scores (module docstring);
    any lower threshold keeps the guarantee. Infeasible, with the number of positives needed,
    when there are too few positives. Raises `InvalidInput` on bad input or rates outside (0, 1).
    """
    _check_rate(min_recall, "min_recall")
    _check_rate(delta, "delta")
    yb, sa = _inputs(y, s)
    pos = np.sort(sa[yb])
    m = pos.size
    k = _order_stat_k(m, 1.0 - min_recall, delta)
    if k == 0:
        need = _min_cases(min_recall, delta)
        return _infeasible(
            "recall_floor",
            yb,
            f"{m} calibration positives cannot certify recall >= {min_recall:g} at delta={delta:g}: "
            f"need at least {need}",
        )
    confidence = 1.0 - float(binom.cdf(k - 1, m, 1.0 - min_recall))
    guarantee = (
        f"P_cal[recall on new i.i.d. data >= {min_recall:g}] >= {1 - delta:g} (achieved {confidence:.4f}); "
        f"threshold = {k}-th smallest of {m} calibration positive scores, exact binomial order-statistic bound"
    )
    return _at("recall_floor", yb, sa, pos[k - 1], guarantee)


def _fpr_bound_threshold(neg: np.ndarray, max_fpr: float, delta: float) -> float | None:
    """Lowest threshold with P_cal[FPR on new data <= max_fpr] >= 1 - delta, or None (too few negatives).

    Mirror of the recall bound on negated negative scores: FPR of `s > Y_[k]` (k-th largest) is bounded.
    """
    k = _order_stat_k(neg.size, max_fpr, delta)
    if k == 0:
        return None
    return float(np.nextafter(np.sort(neg)[::-1][k - 1], math.inf))


def _ltt_precision(y: np.ndarray, s: np.ndarray, min_precision: float, delta: float, grid) -> tuple:
    """Learn-then-Test over `grid` (sorted high to low); returns (grid, certified mask, p-values)."""
    g = DEFAULT_GRID if grid is None else np.sort(np.asarray(grid, dtype=float))[::-1]
    if g.size == 0 or not np.isfinite(g).all():
        raise InvalidInput("the threshold grid must be a non-empty list of finite numbers", field="grid")
    if grid is None and s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise InvalidInput("scores outside [0, 1]: pass an explicit threshold grid", field="grid")
    sorted_s = np.sort(s)
    sorted_pos = np.sort(s[y])
    n_t = s.size - np.searchsorted(sorted_s, g, side="left")
    tp_t = sorted_pos.size - np.searchsorted(sorted_pos, g, side="left")
    p = np.where(n_t > 0, binom.sf(tp_t - 1, np.maximum(n_t, 1), min_precision), 1.0)
    certified = np.zeros(g.size, dtype=bool)
    step, carry = delta / g.size, 0.0
    for j in range(g.size):  # fallback procedure: a rejected hypothesis passes its level on
        level = step + carry
        certified[j] = p[j] <= level
        carry = level if certified[j] else 0.0
    return g, certified, p


def _precision_guarantee(min_precision: float, delta: float, n_grid: int) -> str:
    return (
        f"P_cal[precision P(Y=1 | score >= t) on new i.i.d. data >= {min_precision:g}] >= {1 - delta:g}; "
        f"Learn-then-Test, fallback fixed-sequence over {n_grid} thresholds high to low, exact binomial p-values"
    )


def precision_floor(y, s, min_precision: float, delta: float, *, grid: Sequence[float] | None = None) -> OperatingPoint:
    """Lowest threshold certified to keep precision >= `min_precision` with probability >= 1 - `delta`.

    `grid` is the fixed set of candidate thresholds (default 0.00, 0.01, ..., 1.00, for scores that are
    probabilities); it must not be chosen from the labels. Infeasible with a reason when none is
    certified. Raises `InvalidInput` on bad input, rates outside (0, 1), or scores outside [0, 1]
    with the default grid.
    """
    _check_rate(min_precision, "min_precision")
    _check_rate(delta, "delta")
    yb, sa = _inputs(y, s)
    g, certified, p = _ltt_precision(yb, sa, min_precision, delta, grid)
    if not certified.any():
        return _infeasible(
            "precision_floor",
            yb,
            f"no threshold certified precision >= {min_precision:g} at delta={delta:g} "
            f"(smallest p-value {float(p.min()):.3g} over {g.size} thresholds, {int(yb.sum())} positives)",
        )
    t = float(g[np.flatnonzero(certified)[-1]])
    return _at("precision_floor", yb, sa, t, _precision_guarantee(min_precision, delta, g.size))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def choose_for_false_positives(
    y, s, max_fpr: float, min_recall: float, delta: float, *, fpr_delta: float | None = None
) -> OperatingPoint:
    """Lowest threshold meeting an FPR target while keeping a guaranteed recall floor (for false-positive reports).

    The FPR target is met on the calibration data (`fpr_delta` None) or, with `fpr_delta`, with
    probability >= 1 - fpr_delta on new data (order-statistic bound on the negatives). The recall floor
    holds with probability >= 1 - delta. The lowest such threshold keeps the most true positives.
    Infeasible, with both thresholds and their rates, when the FPR target needs a threshold above the
    recall floor's: the sign that a threshold cannot fix this report. Raises `InvalidInput` on bad input.
    """
    _check_rate(max_fpr, "max_fpr")
    method = IssueKind.false_positives.value
    yb, sa = _inputs(y, s)
    rec = recall_floor(yb, sa, min_recall, delta)
    if not rec.feasible:
        return _infeasible(method, yb, rec.reason or "recall floor infeasible")
    neg = sa[~yb]
    if fpr_delta is not None:
        _check_rate(fpr_delta, "fpr_delta")
        t_fpr = _fpr_bound_threshold(neg, max_fpr, fpr_delta)
        if t_fpr is None:
            need = _min_cases(1.0 - max_fpr, fpr_delta)
            return _infeasible(method, yb, f"{neg.size} negatives cannot certify FPR <= {max_fpr:g}: need {need}")
        fpr_text = f"; P_cal[FPR on new i.i.d. data <= {max_fpr:g}] >= {1 - fpr_delta:g}"
    else:
        thr, _, fps = _curve(yb, sa)
        ok = fps <= max_fpr * max(neg.size, 1)
        # fps grows as the threshold falls: the ok thresholds are a prefix of the descending list.
        t_fpr = float(thr[np.count_nonzero(ok) - 1]) if ok[0] else float(np.nextafter(thr[0], math.inf))
        fpr_text = f"; calibration FPR <= {max_fpr:g} (no guarantee on new data)"
    t_rec = float(rec.threshold)  # type: ignore[arg-type]
    if t_fpr > t_rec:
        at_fpr = binary_metrics(yb, sa, t_fpr)
        return _infeasible(
            method,
            yb,
            f"FPR <= {max_fpr:g} needs threshold >= {t_fpr:.4g} (calibration recall {_fmt(at_fpr['recall'])}"
            f" there), but recall >= {min_recall:g} with confidence {1 - delta:g} allows at most {t_rec:.4g} "
            f"(calibration FPR {_fmt(rec.fpr)} there)",
        )
    return _at(method, yb, sa, t_fpr, (rec.guarantee or "") + fpr_text)


def choose_for_false_negatives(
    y, s, min_recall: float, delta: float, *, min_precision: float | None = None, grid: Sequence[float] | None = None
) -> OperatingPoint:
    """Highest threshold with guaranteed recall >= `min_recall`, also certified for `min_precision` if given.

    Each guarantee holds with probability >= 1 - delta (both together >= 1 - 2 delta). The highest
    such threshold gives up the least precision. Infeasible, with the numbers, when no certified
    precision threshold lies at or below the recall floor's. Raises `InvalidInput` on bad input.
    """
    method = IssueKind.false_negatives.value
    yb, sa = _inputs(y, s)
    rec = recall_floor(yb, sa, min_recall, delta)
    if not rec.feasible:
        return _infeasible(method, yb, rec.reason or "recall floor infeasible")
    t_rec = float(rec.threshold)  # type: ignore[arg-type]
    if min_precision is None:
        return _at(method, yb, sa, t_rec, rec.guarantee)
    _check_rate(min_precision, "min_precision")
    g, certified, _ = _ltt_precision(yb, sa, min_precision, delta, grid)
    usable = certified & (g <= t_rec)
    if not usable.any():
        lowest = float(g[np.flatnonzero(certified)[-1]]) if certified.any() else None
        where = "no threshold" if lowest is None else f"thresholds >= {lowest:.4g} only"
        return _infeasible(
            method,
            yb,
            f"recall >= {min_recall:g} with confidence {1 - delta:g} needs threshold <= {t_rec:.4g} "
            f"(calibration precision {_fmt(rec.precision)} there), but precision >= {min_precision:g} is certified "
            f"for {where}",
        )
    t = float(g[np.flatnonzero(usable)[0]])
    return _at(method, yb, sa, t, f"{rec.guarantee}; {_precision_guarantee(min_precision, delta, g.size)}")


def tradeoff_table(y, s, thresholds_by_method: Mapping[str, float | OperatingPoint | None], current: str = "current"):
    """Precision/recall trade of each method's threshold, with changes against the `current` entry.

    Takes labels, scores and `{method: threshold | OperatingPoint | None}`; returns one dict per
    method (in the mapping's order) with `method, threshold, precision, recall, specificity, f1, fpr,
    tp, fp, precision_change, recall_change, f1_change` (changes None without a `current` entry or
    where undefined). Raises `InvalidInput` on bad input.
    """
    yb, sa = _inputs(y, s)
    keys = ("precision", "recall", "specificity", "f1", "fpr", "tp", "fp")
    rows = []
    for method, value in thresholds_by_method.items():
        t = value.threshold if isinstance(value, OperatingPoint) else value
        m = binary_metrics(yb, sa, t) if t is not None else dict.fromkeys(keys)
        rows.append({"method": method, "threshold": t, **{k: m[k] for k in keys}})
    base = next((r for r in rows if r["method"] == current), None)
    for r in rows:
        for k in ("precision", "recall", "f1"):
            ok = base is not None and r[k] is not None and base[k] is not None
            r[f"{k}_change"] = r[k] - base[k] if ok else None  # type: ignore[index]
    return rows


def _require(value, field: str, goal: str):
    if value is None:
        raise InvalidInput(f"goal {goal!r} needs {field}", field=field)
    return value


def choose_operating_point(
    y,
    s,
    current_threshold: float | None,
    goal: str = "f1",
    *,
    min_precision: float | None = None,
    min_recall: float | None = None,
    max_fpr: float | None = None,
    delta: float = 0.05,
    max_precision_drop: float | None = 0.2,
    max_recall_drop: float | None = None,
    grid: Sequence[float] | None = None,
) -> tuple[OperatingPoint, list[str]]:
    """Pick an operating point for `goal` (one of `GOALS`) and say, never silently, what it costs.

    Returns `(point, warnings)`: a warning when the point is infeasible, calls nothing positive, or
    drops calibration precision (recall) below the current threshold's by more than
    `max_precision_drop` (`max_recall_drop`). Raises `InvalidInput` for an unknown goal, a missing
    parameter the goal needs, or bad input.
    """
    yb, sa = _inputs(y, s)
    if goal == "youden":
        point = youden(yb, sa)
    elif goal == "f1":
        point = f1_optimal(yb, sa)
    elif goal == "precision_floor":
        point = precision_floor(yb, sa, _require(min_precision, "min_precision", goal), delta, grid=grid)
    elif goal == "recall_floor":
        point = recall_floor(yb, sa, _require(min_recall, "min_recall", goal), delta)
    elif goal == IssueKind.false_positives:
        mf, mr = _require(max_fpr, "max_fpr", goal), _require(min_recall, "min_recall", goal)
        point = choose_for_false_positives(yb, sa, mf, mr, delta)
    elif goal == IssueKind.false_negatives:
        mr = _require(min_recall, "min_recall", goal)
        point = choose_for_false_negatives(yb, sa, mr, delta, min_precision=min_precision, grid=grid)
    else:
        raise InvalidInput(f"unknown goal {goal!r}; expected one of {', '.join(GOALS)}", field="goal")
    warnings: list[str] = []
    if not point.feasible:
        warnings.append(f"{goal}: infeasible: {point.reason}")
        return point, warnings
    if point.precision is None:
        warnings.append(f"{goal}: threshold {point.threshold:.4g} calls no calibration case positive")
    if current_threshold is None:
        return point, warnings
    before = binary_metrics(yb, sa, current_threshold)
    for name, bound, new in (
        ("precision", max_precision_drop, point.precision),
        ("recall", max_recall_drop, point.recall),
    ):
        old = before[name]
        if bound is not None and old is not None and new is not None and old - new > bound:
            warnings.append(
                f"{goal}: {name} falls {old:.2f} -> {new:.2f} ({new - old:+.2f}) when the threshold moves "
                f"{current_threshold:.4g} -> {point.threshold:.4g}, more than the allowed drop {bound:.2f}"
            )
    return point, warnings
