"""Feasibility before climbing: can any operating point of the current scores meet a report's target?

Threshold calibration moves one threshold and nothing else, so everything it can reach is on the
empirical ROC of the parent's scores. On a site's labelled rows (labels `y`, the parent's scores `s`,
its threshold `t0` there) a threshold `t` calls a case positive when `s >= t` (`cxr.thresholds`'s
convention). Every distinct score value, and one threshold above them all, gives every confusion
matrix a threshold can give, so the search below is exact, not a grid:

* TP(t), FP(t) = positives, negatives with s >= t; recall(t) = TP(t) / P, FPR(t) = FP(t) / N;
* TP loss (the gate's `tp_loss`): positives the parent caught and the candidate misses,
  #{y = 1, t0 <= s < t} = TP(t0) - TP(t) for t > t0, else 0; as a fraction of TP(t0);
* admissible: TP loss within `gate.max_tp_loss` and `gate.max_tp_loss_fraction`, and recall at or above
  the gate's recall floor (`gate.recall_floor`, else the pathology's SLO `min_recall`), as the gate has it;
* best: the lowest FPR (a false-positives report) or the highest recall (a false-negatives report)
  over the admissible thresholds; feasible when the best meets the report's target under
  `gate.target_rule` ("meet_target": best <= target for FPR, >= for recall; "improve": better than the
  parent's value at t0 by more than zero and by `gate.min_improvement`; "meet_or_improve": either).

What it promises: if no admissible threshold meets the target on these rows, no threshold that
calibration could choose on them meets it *on these rows*. The best value is the in-sample optimum
over thresholds chosen on the very rows it is measured on, an optimistic estimate of what a threshold
does on new data; the verdict can still be sampling noise on few rows, hence the policy's minimum counts
(`calibration.feasibility_min_positives` / `_negatives`). For a false-negatives report a lower threshold
loses no true positive and a threshold at the lowest positive score has recall 1, so such a target is
always reachable when the rows have a positive (the gate judges no false-positive rate at the report's
site): the check then only confirms it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxr.kinds import IssueKind
from policies import Policy

__all__ = ["Bounds", "Feasibility", "bounds_for", "operating_feasibility", "target_of"]

#: report metrics whose own target the gate reads, and that target as a bound on FPR or recall
_ON_FPR = {"fpr": lambda t: t, "specificity": lambda t: 1.0 - t}
_ON_RECALL = {"recall": lambda t: t, "sensitivity": lambda t: t, "tpr": lambda t: t}


@dataclass(frozen=True)
class Bounds:
    """What the gate holds a threshold-only candidate to (from the policy)."""

    recall_floor: float | None
    max_tp_loss: int | None
    max_tp_loss_fraction: float | None
    rule: str = "meet_target"
    min_improvement: float = 0.0

    def describe(self) -> str:
        """"recall ≥ 0.80 (≤ 20 % of true positives lost)", or what of it is configured."""
        loss = " and ".join(x for x in (
            None if self.max_tp_loss_fraction is None else f"≤ {self.max_tp_loss_fraction:.0%} of",
            None if self.max_tp_loss is None else f"at most {self.max_tp_loss} of") if x)
        loss = f"{loss} true positives lost" if loss else "no TP-loss bound"
        floor = "no recall floor" if self.recall_floor is None else f"recall ≥ {self.recall_floor:.2f}"
        return f"{floor} ({loss})"


@dataclass(frozen=True)
class Feasibility:
    """The verdict for one report on one version's scores at one site; `to_json` is what a decision records."""

    feasible: bool
    metric: str  # "fpr" or "recall": what was searched
    target: float  # the report's target on that metric
    best: float | None  # best admissible value (None: no admissible threshold)
    best_threshold: float | None  # the threshold reaching it (None: above every score)
    recall_at_best: float | None
    tp_loss_at_best: int | None
    parent_value: float | None  # the metric at the parent's threshold on these rows
    parent_threshold: float
    parent_tp: int
    n_pos: int
    n_neg: int
    n_thresholds: int  # distinct operating points searched
    bounds: Bounds
    rule: str
    version: str = ""
    site: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def sentence(self) -> str:
        """Why calibration is skipped (infeasible) or that the target is in reach, with the numbers."""
        op = "≤" if self.metric == "fpr" else "≥"
        name = "FPR" if self.metric == "fpr" else "recall"
        whose = f"{self.version}'s scores" if self.version else "the current scores"
        where = f" at {self.site}" if self.site else ""
        rows = f"{self.n_pos} positives, {self.n_neg} negatives, {self.n_thresholds} operating points"
        if self.best is None:
            return (f"no operating point of {whose}{where} keeps {self.bounds.describe()} ({rows})")
        best = f"best {name} at {self.bounds.describe()} is {self.best:.2f}"
        if self.feasible:
            return f"an operating point of {whose}{where} meets {name} {op} {self.target:.2f}: {best} ({rows})"
        rule = "" if self.rule == "meet_target" else f" or improves on the parent's {self.parent_value:.2f}"
        return (f"no operating point of {whose}{where} meets {name} {op} {self.target:.2f}{rule} within the "
                f"TP-loss bound: {best} (threshold {_fmt(self.best_threshold)}, recall "
                f"{_fmt(self.recall_at_best)}, {self.tp_loss_at_best} of {self.parent_tp} true positives lost; {rows})")


def _fmt(v: float | None) -> str:
    return "above every score" if v is None else f"{v:.3f}"


def target_of(kind: str, metric: str, target: float | None, slo_max_fpr: float | None,
              slo_min_recall: float | None) -> tuple[str, float] | None:
    """(searched metric, target on it) for a report, as the gate's target check reads it: the report's own
    target when its metric is one the evaluation computes, else the pathology's SLO; None when the kind is
    not a rate at a threshold."""
    m = metric.strip().lower()
    if kind == IssueKind.false_positives:
        if m in _ON_FPR and target is not None:
            return "fpr", _ON_FPR[m](float(target))
        return None if slo_max_fpr is None else ("fpr", float(slo_max_fpr))
    if kind == IssueKind.false_negatives:
        if m in _ON_RECALL and target is not None:
            return "recall", _ON_RECALL[m](float(target))
        return None if slo_min_recall is None else ("recall", float(slo_min_recall))
    return None


def operating_feasibility(y: np.ndarray, s: np.ndarray, t0: float, metric: str, target: float, bounds: Bounds,
                          *, version: str = "", site: str = "", parent: np.ndarray | None = None) -> Feasibility:
    """Search every distinct operating point of scores `s` (labels `y` in {0, 1}) for one meeting `target`
    on `metric` ("fpr" or "recall") within `bounds`, against the parent's threshold `t0`.

    `parent`: the parent's scores on the same rows when `s` are another version's (a candidate whose
    weights changed); the TP loss is then the gate's own, #{y = 1, parent >= t0, s < t}, and the parent's
    value is read at `t0` on `parent`. Without it `s` are the parent's scores (threshold calibration).

    Returns a `Feasibility` (see the module docstring for the rule). Raises ValueError for another metric
    or arrays of different lengths.
    """
    if metric not in ("fpr", "recall"):
        raise ValueError(f"feasibility is searched on fpr or recall, not {metric!r}")
    y = np.asarray(y).astype(int).ravel()
    s = np.asarray(s, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    n_pos, n_neg = pos.size, neg.size
    # every distinct score, and one threshold above them all (nothing called positive)
    ts = np.r_[np.unique(s), np.inf]
    tp = n_pos - np.searchsorted(pos, ts, side="left")  # positives with s >= t
    fp = n_neg - np.searchsorted(neg, ts, side="left")
    recall = tp / n_pos if n_pos else np.full(ts.shape, np.nan)
    fpr = fp / n_neg if n_neg else np.full(ts.shape, np.nan)
    if parent is None:
        tp0 = int(n_pos - np.searchsorted(pos, t0, side="left"))
        loss = np.where(ts > t0, tp0 - tp, 0)
        at_t0 = np.searchsorted(ts, t0, side="left")
        parent_fpr, parent_recall = (fpr[at_t0] if n_neg else None), (recall[at_t0] if n_pos else None)
    else:
        ps = np.asarray(parent, dtype=float).ravel()
        if ps.shape != s.shape:
            raise ValueError(f"{s.size} scores but {ps.size} parent scores")
        caught = (y == 1) & (ps >= t0)
        tp0 = int(caught.sum())
        loss = np.searchsorted(np.sort(s[caught]), ts, side="left")  # the parent's true positives with s < t
        parent_fpr = float(((y == 0) & (ps >= t0)).sum() / n_neg) if n_neg else None
        parent_recall = tp0 / n_pos if n_pos else None
    ok = np.ones(ts.shape, bool)
    if bounds.max_tp_loss is not None:
        ok &= loss <= bounds.max_tp_loss
    if bounds.max_tp_loss_fraction is not None and tp0:
        ok &= loss / tp0 <= bounds.max_tp_loss_fraction + 1e-12
    if bounds.recall_floor is not None:
        ok &= np.nan_to_num(recall, nan=-1.0) >= bounds.recall_floor  # no positives: recall undefined, fails
    values = fpr if metric == "fpr" else recall
    ok &= ~np.isnan(values)
    parent_value = parent_fpr if metric == "fpr" else parent_recall
    parent_value = None if parent_value is None else float(parent_value)
    common = dict(metric=metric, target=float(target), parent_value=parent_value, parent_threshold=float(t0),
                  parent_tp=tp0, n_pos=int(n_pos), n_neg=int(n_neg), n_thresholds=int(ts.size), bounds=bounds,
                  rule=bounds.rule, version=version, site=site)
    if not ok.any():
        return Feasibility(False, best=None, best_threshold=None, recall_at_best=None, tp_loss_at_best=None, **common)
    idx = np.flatnonzero(ok)
    # ties: the lowest FPR at the lowest threshold (most true positives kept); the highest recall at the highest
    # threshold (fewest false positives)
    i = int(idx[np.argmin(values[idx])] if metric == "fpr" else idx[::-1][np.argmax(values[idx][::-1])])
    best = float(values[i])
    lower = metric == "fpr"
    meets = best <= target + 1e-12 if lower else best >= target - 1e-12
    gain = None if parent_value is None else (parent_value - best if lower else best - parent_value)
    improves = gain is not None and gain > 0 and gain >= bounds.min_improvement
    feasible = {"meet_target": meets, "improve": improves, "meet_or_improve": meets or improves}[bounds.rule]
    return Feasibility(bool(feasible), best=best, best_threshold=None if np.isinf(ts[i]) else float(ts[i]),
                       recall_at_best=None if np.isnan(recall[i]) else float(recall[i]),
                       tp_loss_at_best=int(loss[i]), **common)


def bounds_for(policy: Policy, pathology: str) -> Bounds:
    """The gate's bounds on a threshold-only candidate for `pathology` (recall floor: `gate.recall_floor`,
    else the pathology's SLO `min_recall`)."""
    g = policy.gate
    floor = g.recall_floor if g.recall_floor is not None else policy.slos.for_pathology(pathology).min_recall
    return Bounds(floor, g.max_tp_loss, g.max_tp_loss_fraction, g.target_rule, g.min_improvement)
