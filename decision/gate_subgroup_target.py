"""The target of a subgroup report, judged on that subgroup's rows of the evaluation set.

A report about "view=AP" at site-b is fixed when site-b's AP films meet the target, not when site-b as a
whole does (it already did: that is why the report names a subgroup). `decision.gate.gate` calls
`subgroup_target_check` for such a report; it replaces the whole-set `target_fixed` check by the same rule
on the subgroup's results that `decision.subgroups` stored with the evaluation (at the candidate's
operating point: FPR for false positives, recall for false negatives, AUROC for an AUROC drop), with the
policy's `gate.target_rule` ("meet_target", "improve" on the parent's value, or either). The parent's value
in the subgroup is its paired recall where it was measured, else the report's own measured value. The
whole set's value is quoted in the detail.

Fail closed: when the evaluation holds no results for the subgroup (subgroup evaluation off, or the
subgroup not among the policy's declared groups) or the subgroup is too small to judge there, the check
fails and says why — a fix the evaluation cannot see is not shown to work.
"""

from __future__ import annotations

from collections.abc import Mapping

from cxr.kinds import HEADLINE_METRIC, lower_is_better
from cxr.subgroup_key import describe, from_group
from decision.evaluate import EvaluationReport
from decision.gate import Check
from decision.planner import ReportView
from decision.subgroups import SubgroupEval
from policies import Policy

__all__ = ["find_subgroup", "report_target_check", "subgroup_target_check"]

_VALUE = {"fpr": "fpr", "recall": "recall", "sensitivity": "recall", "tpr": "recall", "auroc": "auroc"}
_SLO = {"fpr": "max_fpr", "recall": "min_recall", "sensitivity": "min_recall", "tpr": "min_recall",
        "auroc": "min_auroc"}


def find_subgroup(evaluation: EvaluationReport, pathology: str, subgroup: str) -> SubgroupEval | None:
    """The evaluation's result for `pathology` on the group whose canonical text is `subgroup`, if any."""
    for g in evaluation.subgroups:
        if g.pathology == pathology and from_group(g.attribute, g.group) == subgroup:
            return g
    return None


def report_target_check(report: ReportView, evaluation: EvaluationReport, policy: Policy,
                        measured: Mapping[str, float], whole: Check) -> Check:
    """The report's `target_fixed`: `whole` (the whole-set check) unless the report names a subgroup and its
    metric is one the evaluation measures per subgroup (not a `measured` one, e.g. ECE)."""
    if not report.subgroup or report.metric.strip().lower() in measured:
        return whole
    return subgroup_target_check(report, evaluation, policy, whole)


def subgroup_target_check(report: ReportView, evaluation: EvaluationReport, policy: Policy,
                          whole: Check) -> Check:
    """`target_fixed` on the report's subgroup (module doc); `whole` is the whole-set check it replaces."""
    sub = report.subgroup
    where = f"{describe(sub)} ({sub})"
    asked = report.metric.strip().lower()
    metric = asked if asked in _VALUE else HEADLINE_METRIC.get(report.kind)
    if metric not in _VALUE:
        return Check("target_fixed", False, f"metric {report.metric!r} cannot be computed on {where}")
    limit = report.target if metric == asked and report.target is not None else None
    if limit is None:
        limit = getattr(policy.slos.for_pathology(report.pathology), _SLO[metric])
    g = find_subgroup(evaluation, report.pathology, sub)
    if g is None:
        return Check("target_fixed", False, f"{report.pathology} was not evaluated on {where}: the evaluation "
                     "holds no result for this subgroup (is it declared in the policy's [subgroups]?)", None, limit)
    value = getattr(g, _VALUE[metric])
    if not g.judgeable or value is None:
        why = g.reason or f"{metric} undefined (no operating point or no cases)"
        return Check("target_fixed", False, f"{report.pathology} on {where}: {why}", value, limit)
    lower = lower_is_better(metric, report.kind)
    baseline = g.parent_recall if _VALUE[metric] == "recall" and g.parent_recall is not None else report.value
    rule, min_gain = policy.gate.target_rule, policy.gate.min_improvement
    meets = limit is not None and (value <= limit if lower else value >= limit)
    gain = None if baseline is None else (baseline - value if lower else value - baseline)
    improves = gain is not None and gain > 0 and gain >= min_gain
    passed = {"meet_target": meets, "improve": improves, "meet_or_improve": meets or improves}[rule]
    op = "<=" if lower else ">="
    target_txt = "no target" if limit is None else f"target {op} {limit:.3f} {'met' if meets else 'missed'}"
    gain_txt = "" if gain is None else f", change {-gain if lower else gain:+.3f} vs {baseline:.3f} before"
    n = f"{g.n_neg} negatives" if _VALUE[metric] == "fpr" else f"{g.n_pos} positives, {g.n_neg} negatives"
    detail = (f"{report.pathology} {metric} {value:.3f} on {where}, {n}: {target_txt}{gain_txt} (rule {rule}); "
              f"the whole set: {whole.detail}")
    if rule == "improve" and baseline is not None:
        limit = baseline - min_gain if lower else baseline + min_gain
    return Check("target_fixed", passed, detail, float(value), limit)
