"""Operating points after a treatment changed scores (shared by every weight-changing treatment).

The failing pathology's threshold is chosen as threshold calibration would: the
lowest one meeting the false-positive target (certified on new data when the
policy asks) under a guaranteed recall floor, or a guaranteed recall floor for
false-negative reports. Every other pathology whose scores changed keeps the
recall its parent had on the calibration split, so its operating point keeps
its clinical meaning.
"""

from __future__ import annotations

import numpy as np

from cxr.kinds import IssueKind
from cxr.thresholds import OperatingPoint, choose_for_false_negatives, choose_for_false_positives, recall_floor
from treatments.base import TreatmentContext


def match_recall(y: np.ndarray, s_old: np.ndarray, s_new: np.ndarray, t_old: float) -> float:
    """Threshold on `s_new` detecting as many positives as `t_old` did on `s_old`."""
    pos_new = np.sort(s_new[y == 1])[::-1]
    k = int((s_old[y == 1] >= t_old).sum())
    if k == 0:
        return float(np.nextafter(pos_new[0], np.inf)) if len(pos_new) else t_old
    return float(pos_new[k - 1])


def target_point(ctx: TreatmentContext, y: np.ndarray, s: np.ndarray) -> tuple[OperatingPoint, str]:
    """The failing pathology's operating point on (site) calibration labels `y` and scores `s`.

    Returns (point, warning). When the false-positive target cannot be met under the recall
    floor, the point is the best the floor allows and the warning says why; the gate then
    judges it on held-out data.
    """
    if ctx.report.kind == IssueKind.false_positives:
        aim = ctx.report.target * (1.0 - ctx.fpr_headroom)
        op = choose_for_false_positives(y, s, aim, ctx.slo.min_recall, ctx.delta, fpr_delta=ctx.fpr_delta)
        if op.feasible:
            return op, ""
        return recall_floor(y, s, ctx.slo.min_recall, ctx.delta), f"target not reachable: {op.reason}"
    return choose_for_false_negatives(y, s, max(ctx.report.target, ctx.slo.min_recall), ctx.delta), ""


def retune(ctx: TreatmentContext, labels: np.ndarray, old: np.ndarray, new: np.ndarray, sites: tuple[str, ...],
           changed: list[int], min_site_cases: int) -> tuple[dict[str, float | None], OperatingPoint, str]:
    """New thresholds for outputs `changed` given calibration `labels` and old/new probabilities.

    Returns (thresholds, the target's operating point, which rows chose it). Raises ValueError
    when no usable threshold exists for the target.
    """
    j, name = ctx.target_index, ctx.report.pathology
    thresholds = dict(ctx.thresholds)
    for k in changed:
        pname = ctx.spec.pathologies[k]
        t_old = ctx.thresholds.get(pname)
        if k == j or t_old is None:
            continue
        known = ~np.isnan(labels[:, k])
        yk = labels[known, k]
        if (yk == 1).any():
            thresholds[pname] = match_recall(yk, old[known, k], new[known, k], t_old)
    at_site = np.array([s == ctx.report.site for s in sites])
    rows, where = (at_site, f"site {ctx.report.site}") if at_site.sum() >= min_site_cases else (
        np.ones(len(sites), bool), "all sites")
    known = rows & ~np.isnan(labels[:, j])
    op, _ = target_point(ctx, labels[known, j].astype(int), new[known, j])
    if op.threshold is None:
        raise ValueError(f"no usable {name} threshold after the change: {op.reason}")
    thresholds[name] = float(op.threshold)
    return thresholds, op, where
