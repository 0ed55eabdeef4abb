"""Threshold calibration (cost 1): move one pathology's operating point.

For a false-positive report it looks, on the calibration data of the report's
site, for the lowest threshold that meets the false-positive-rate target while
keeping the recall floor *with a statistical guarantee*; for a false-negative
report, the highest threshold whose recall is guaranteed. When the target
cannot be met without breaking the recall floor, it still proposes the best
threshold the floor allows, says so, and lets the gate decide on held-out data
(the engine then escalates). It never silently trades precision away: the
precision/recall trade of every method is attached to the result. For a report
about a subgroup ("view=AP") the point is chosen on that subgroup's calibration
cases; the model has no per-subgroup operating point, so the new threshold is
the site's, and the notes say so (`treatments.subgroup_split`).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cxr.kinds import IssueKind
from cxr.thresholds import choose_operating_point, f1_optimal, tradeoff_table, youden
from treatments.base import PlanningContext, ReportInfo, TreatmentContext, TreatmentResult, probabilities, site_or_all
from treatments.operating import target_point
from treatments.subgroup_split import PER_SITE_ONLY, subgroup_rows


class CalibrationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_site_cases: int = Field(200, ge=1, description="Use the report's site alone when it has this many cases.")
    drift_method: str = Field("f1", description="Operating point for calibration drift: f1 or youden.")
    max_precision_drop: float = Field(0.2, ge=0, le=1)
    min_subgroup_cases: int = Field(50, ge=1, description="A subgroup report needs this many of its cases.")


class ThresholdCalibration:
    name = "threshold_calibration"
    fixes = frozenset({IssueKind.false_positives, IssueKind.false_negatives, IssueKind.calibration_drift})
    head_only = True

    def applicable(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        if report.pathology not in planning.thresholds:
            return False, f"{report.pathology} has no operating threshold in this version"
        if planning.calibration_cases < 20:
            return False, f"only {planning.calibration_cases} labelled calibration cases"
        return True, "moves one threshold; weights untouched"

    def apply(self, ctx: TreatmentContext) -> TreatmentResult:
        p = CalibrationParams.model_validate(ctx.params)
        j, name = ctx.target_index, ctx.report.pathology
        split, where = site_or_all(ctx.calibration, ctx.report.site, p.min_site_cases)
        if ctx.report.subgroup:  # a subgroup report: the operating point is chosen on that subgroup's cases
            split, where = subgroup_rows(split, where, ctx.report.subgroup, p.min_subgroup_cases)
        known = ~np.isnan(split.labels[:, j])
        y = split.labels[known, j].astype(int)
        s = probabilities(split.features[known], ctx.head_weight, ctx.head_bias)[:, j]
        current = ctx.thresholds.get(name)
        kind = ctx.report.kind
        warnings: list[str] = []
        if kind in (IssueKind.false_positives, IssueKind.false_negatives):
            op, warning = target_point(ctx, y, s)
            warnings += [warning] if warning else []
        else:
            op, warnings = choose_operating_point(
                y, s, current, p.drift_method, delta=ctx.delta, max_precision_drop=p.max_precision_drop
            )
        if op.threshold is None:
            raise ValueError(f"no usable threshold for {name} on {where}: {op.reason}")
        table = tradeoff_table(
            y, s, {"current": current, "chosen": op, "youden": youden(y, s), "f1": f1_optimal(y, s)}
        )
        chosen = next(r for r in table if r["method"] == "chosen")
        base = next(r for r in table if r["method"] == "current")
        bp, cp = base["precision"], chosen["precision"]
        if bp is not None and cp is not None and bp - cp > p.max_precision_drop:
            warnings.append(f"precision falls from {bp:.2f} to {cp:.2f} on calibration data")
        thresholds = dict(ctx.thresholds)
        thresholds[name] = float(op.threshold)
        cur = "none" if current is None else f"{current:.4f}"
        notes = f"{name} threshold {cur} → {op.threshold:.4f} on {len(y)} calibration cases ({where}); {op.method}"
        if op.guarantee:
            notes += f"; guarantee: {op.guarantee}"
        if ctx.report.subgroup:
            notes += f"; {PER_SITE_ONLY}"
        return TreatmentResult(
            thresholds=thresholds,
            trainable_parameters=0,
            notes=notes,
            artifacts={"tradeoff": table, "warnings": warnings, "calibration_rows": where, "method": op.method},
        )
