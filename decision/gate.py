"""The gate: does a candidate version fix the reported issue without harming anything else?

Promotion moves the `production` alias, so this is the last line of defence. The gate
is a pure function of the report, the held-out evaluation (candidate vs parent) and the
policy, and every verdict comes with one `Check` per rule, a value and its limit, so an
auditor can see exactly why a version was accepted or rejected. Checks:

* `target_fixed`: the report's metric on the evaluation data meets its target (the
  report's own target, else the pathology's SLO) or improves on the parent by the
  policy's minimum, as `gate.target_rule` says. False positives are judged on the FPR
  at the candidate's threshold, false negatives on recall, an AUROC drop on AUROC.
* `noninferiority[P]` for every other pathology: the lower bound of the paired DeLong
  interval of AUROC(candidate) - AUROC(parent) must not fall below -margin.
* `tp_loss`: true positives on the target that the parent caught and the candidate
  misses, within the absolute and/or fractional bound.
* `recall_floor`: the target's recall stays at or above the floor.
Missing evidence fails a check (fail closed), except pathologies that are not evaluable,
which are listed as unchecked; intervals computed at another level than `gate.alpha` add a
failing `interval_level` check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from decision.evaluate import EvaluationReport, PathologyEval
from decision.planner import ReportView
from policies import Policy

__all__ = ["Check", "GateResult", "gate"]

_LOWER_BETTER = frozenset({"fpr", "fnr", "ece", "brier", "parameters", "size_bytes", "latency_ms"})
_EVAL_ATTR = {
    "fpr": "fpr",
    "recall": "sensitivity",
    "sensitivity": "sensitivity",
    "tpr": "sensitivity",
    "specificity": "specificity",
    "ppv": "ppv",
    "precision": "ppv",
    "npv": "npv",
    "f1": "f1",
    "auroc": "auroc",
}
_PARENT_ATTR = {
    "fpr": "parent_fpr",
    "sensitivity": "parent_sensitivity",
    "specificity": "parent_specificity",
    "ppv": "parent_ppv",
    "f1": "parent_f1",
    "auroc": "parent_auroc",
}
_KIND_METRIC = {"false_positives": "fpr", "false_negatives": "recall", "auroc_drop": "auroc"}
_LOWER_BETTER_KINDS = frozenset({"false_positives", "calibration_drift", "footprint"})


@dataclass(frozen=True)
class Check:
    """One rule of the gate; `value` is what was measured and `limit` the bound it was held to."""

    name: str
    passed: bool
    detail: str
    value: float | None = None
    limit: float | None = None


@dataclass(frozen=True)
class GateResult:
    """The verdict: `passed` only when every check passed; `summary` in plain language."""

    passed: bool
    checks: tuple[Check, ...]
    summary: str

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _slo_limit(metric: str, slo) -> float | None:
    return {
        "fpr": slo.max_fpr,
        "recall": slo.min_recall,
        "sensitivity": slo.min_recall,
        "tpr": slo.min_recall,
        "auroc": slo.min_auroc,
    }.get(metric)


def _target_check(report: ReportView, r: PathologyEval | None, policy: Policy, measured: Mapping[str, float]) -> Check:
    rule, min_gain = policy.gate.target_rule, policy.gate.min_improvement
    asked = report.metric.strip().lower()
    metric = asked if (asked in measured or asked in _EVAL_ATTR) else _KIND_METRIC.get(report.kind)
    if metric is None:
        return Check("target_fixed", False, f"metric {report.metric!r} cannot be computed from the evaluation")
    lower = metric in _LOWER_BETTER or (metric not in _EVAL_ATTR and report.kind in _LOWER_BETTER_KINDS)
    limit = report.target if metric == asked and report.target is not None else None
    if limit is None:
        limit = _slo_limit(metric, policy.slos.for_pathology(report.pathology))
    if metric in measured:
        value, baseline = float(measured[metric]), report.value
    elif r is None:
        return Check("target_fixed", False, f"{report.pathology} is not in the evaluation", None, limit)
    else:
        attr = _EVAL_ATTR[metric]
        value = getattr(r, attr)
        parent_attr = _PARENT_ATTR.get(attr)
        baseline = getattr(r.comparison, parent_attr) if r.comparison is not None and parent_attr else None
        baseline = report.value if baseline is None else baseline
    if value is None:
        why = r.reason if r is not None and r.reason else "no threshold or no cases"
        return Check("target_fixed", False, f"{metric} of {report.pathology} is undefined ({why})", None, limit)
    op = "<=" if lower else ">="
    meets = limit is not None and (value <= limit if lower else value >= limit)
    gain = None if baseline is None else (baseline - value if lower else value - baseline)
    improves = gain is not None and gain > 0 and gain >= min_gain
    passed = {"meet_target": meets, "improve": improves, "meet_or_improve": meets or improves}[rule]
    target_txt = "no target" if limit is None else f"target {op} {limit:.3f} {'met' if meets else 'missed'}"
    gain_txt = "" if gain is None else f", change {-gain if lower else gain:+.3f} vs parent {baseline:.3f}"
    detail = f"{report.pathology} {metric} {value:.3f}: {target_txt}{gain_txt} (rule {rule})"
    if rule == "improve" and baseline is not None:
        limit = baseline - min_gain if lower else baseline + min_gain
    return Check("target_fixed", passed, detail, float(value), limit)


def _noninferiority(r: PathologyEval, margin: float) -> Check:
    name = f"noninferiority[{r.pathology}]"
    if not r.evaluable:
        return Check(name, True, f"{r.pathology} not evaluable ({r.reason}): not checked")
    c = r.comparison
    if c is None or c.delta is None:
        return Check(name, False, f"{r.pathology}: no paired comparison with the parent", None, -margin)
    if c.delta_lo is None:
        ok = c.delta >= -margin
        return Check(
            name,
            ok,
            f"{r.pathology}: AUROC change {c.delta:+.4f} (too few cases for an interval: "
            f"point estimate vs -{margin:.3f})",
            c.delta,
            -margin,
        )
    ok = c.delta_lo >= -margin
    detail = (
        f"{r.pathology}: AUROC change {c.delta:+.4f} [{c.delta_lo:+.4f}, {c.delta_hi:+.4f}], lower bound "
        f"{'>=' if ok else '<'} -{margin:.3f}"
    )
    return Check(name, ok, detail, c.delta_lo, -margin)


def _tp_loss(r: PathologyEval | None, policy: Policy) -> Check:
    cap, frac_cap = policy.gate.max_tp_loss, policy.gate.max_tp_loss_fraction
    if cap is None and frac_cap is None:
        return Check("tp_loss", True, "no true-positive loss bound configured")
    c = r.comparison if r is not None else None
    if c is None or c.tp_loss is None:
        return Check("tp_loss", False, "no true-positive loss measured (needs the parent and both thresholds)")
    frac = c.tp_loss_fraction if c.tp_loss_fraction is not None else 0.0
    ok = (cap is None or c.tp_loss <= cap) and (frac_cap is None or frac <= frac_cap)
    bounds = " and ".join(
        b for b in (None if cap is None else f"<= {cap}", None if frac_cap is None else f"<= {frac_cap:.0%}") if b
    )
    detail = f"{c.tp_loss} of the parent's {c.parent_tp} true positives lost ({frac:.1%}, bound {bounds})"
    return Check("tp_loss", ok, detail, float(c.tp_loss), float(cap) if cap is not None else frac_cap)


def _recall_floor(report: ReportView, r: PathologyEval | None, policy: Policy) -> Check:
    floor = policy.gate.recall_floor
    if floor is None:
        floor = policy.slos.for_pathology(report.pathology).min_recall
    if floor is None:
        return Check("recall_floor", True, "no recall floor configured")
    value = r.sensitivity if r is not None else None
    if value is None:
        return Check("recall_floor", False, f"recall of {report.pathology} is undefined", None, floor)
    ok = value >= floor
    return Check(
        "recall_floor",
        ok,
        f"{report.pathology} recall {value:.3f} {'>=' if ok else '<'} floor {floor:.3f}",
        value,
        floor,
    )


def gate(
    report: ReportView, evaluation: EvaluationReport, policy: Policy, *, measured: Mapping[str, float] | None = None
) -> GateResult:
    """Judge a candidate: takes the report it answers, its evaluation against the parent, and the policy.

    `measured` supplies metrics the evaluation cannot compute (e.g. `ece` for calibration drift,
    `parameters` for footprint); it takes precedence for the target check. Returns a `GateResult`
    whose `passed` is True only when every check passed. Raises nothing for well-typed input.
    """
    measured = dict(measured or {})
    target = evaluation.get(report.pathology)
    margin = policy.gate.noninferiority_margin
    checks = [_target_check(report, target, policy, measured)]
    checks += [_noninferiority(r, margin) for r in evaluation.results if r.pathology != report.pathology]
    if not evaluation.has_parent:
        checks.append(Check("noninferiority", False, "the evaluation has no parent to compare with"))
    checks += [_tp_loss(target, policy), _recall_floor(report, target, policy)]
    if abs(evaluation.alpha - policy.gate.alpha) > 1e-12:  # intervals at another level than the policy's
        level = f"evaluated at alpha {evaluation.alpha:g}, the policy asks for {policy.gate.alpha:g}"
        checks.append(Check("interval_level", False, level, evaluation.alpha, policy.gate.alpha))
    passed = all(c.passed for c in checks)
    return GateResult(passed, tuple(checks), _summary(passed, checks))


def _summary(passed: bool, checks: list[Check]) -> str:
    failed = [c for c in checks if not c.passed]
    if passed:
        target = checks[0].detail
        ni = [c for c in checks if c.name.startswith("noninferiority[") and c.value is not None]
        worst = min(ni, key=lambda c: c.value) if ni else None  # type: ignore[arg-type,return-value]
        worst_txt = f"; worst other AUROC lower bound {worst.value:+.4f} ({worst.name[15:-1]})" if worst else ""
        rest = "; ".join(c.detail for c in checks if c.name in ("tp_loss", "recall_floor"))
        return f"Accepted: all {len(checks)} checks passed. {target}{worst_txt}; {rest}."
    listed = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    return f"Rejected: {len(failed)} of {len(checks)} checks failed. {listed}."


def other_site_checks(report: ReportView, evaluation: EvaluationReport, policy: Policy) -> list[Check]:
    """Checks on an evaluation set of another site than the report's: a fix here must not break there.

    Every evaluable pathology, the target included, must stay non-inferior; and the target must not
    newly breach its SLO there (a threshold moved for one hospital applies to all of them): if the
    parent met the SLO's recall (FPR) on this set, the candidate must too.
    """
    margin = policy.gate.noninferiority_margin
    checks = [_noninferiority(r, margin) for r in evaluation.results]
    target = evaluation.get(report.pathology)
    if target is None or target.comparison is None:
        return checks
    slo, c = policy.slos.for_pathology(report.pathology), target.comparison
    pairs = (("recall", slo.min_recall, target.sensitivity, c.parent_sensitivity, True),
             ("fpr", slo.max_fpr, target.fpr, c.parent_fpr, False))
    for metric, limit, cand, par, higher in pairs:
        if limit is None or par is None or cand is None:
            continue
        parent_ok = par >= limit if higher else par <= limit
        ok = (not parent_ok) or (cand >= limit if higher else cand <= limit)
        rel = ">=" if higher else "<="
        detail = (f"{report.pathology} {metric} {cand:.3f} (parent {par:.3f}); SLO {rel} {limit:g} "
                  + ("kept" if ok else "newly breached"))
        checks.append(Check(f"slo_kept[{report.pathology}.{metric}]", ok, detail, cand, limit))
    return checks
