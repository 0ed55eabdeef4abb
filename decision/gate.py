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
  interval of AUROC(candidate) - AUROC(parent) must not fall below -margin. Each check first
  asks whether the data can show the margin at all (`decision/power.py`): underpowered when z times
  the measured paired DeLong SE of the change exceeds the margin (the parent-candidate correlation
  measured from the DeLong covariance; the policy's `gate.power_correlation` only as a fallback for
  comparisons stored without it) and says so in its detail ("Hernia: 5 positives; the margin -0.020
  needs about N (...; SE 0.0310, ρ 0.62 measured)"). A lower bound at or above
  -margin passes whatever the power (the interval itself shows it). One below fails, unless the
  check is *underpowered* and the policy says `gate.underpowered = "no_significant_harm"`: then it
  is judged on harm alone — it fails only if the whole interval lies below zero — and is flagged
  `underpowered`, which holds an accepted candidate for a person's approval
  (`gate.underpowered_needs_approval`). Under `"block"` it fails, as it always did. A pathology
  whose scores are identical to the parent's on every case is `unchanged`.
* `tp_loss`: true positives on the target that the parent caught and the candidate
  misses, within the absolute and/or fractional bound.
* `recall_floor`: the target's recall stays at or above the floor.
* `subgroup_noninferiority[P|attribute=group]`, `subgroup_recall[P|attribute=group]`: no subgroup harmed vs
  the parent, Holm across the family (`decision.gate_subgroups`; policy `[subgroups] gate`).
Missing evidence fails a check (fail closed), except pathologies that are not evaluable,
which are listed as unchecked; intervals computed at another level than `gate.alpha` add a
failing `interval_level` check.

`judge_sites` applies this per site: the full gate on the report's site, and on every other
site's evaluation set the checks that a fix there must not break anything here
(`other_site_checks`). A candidate that passes at its site but not elsewhere may still be promoted
for that site alone (`production@site`, policy `gate.site_scoped_promotion`): the other sites keep
their own production version, so their checks are recorded but not binding. On every set it also adds
`decision.gate_lineage`'s checks: `sequestration` (the treatment saw none of the set's patients) and
`baseline_noninferiority[P]` (no margin creep: non-inferior to the site's authorised baseline).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cxr.kinds import HEADLINE_METRIC, lower_is_better
from decision.evaluate import EvaluationReport, PathologyEval
from decision.planner import ReportView
from decision.power import assess_power
from policies import Policy

if TYPE_CHECKING:
    from decision.gate_lineage import BaselineComparison, Sequestration

__all__ = ["Check", "GateResult", "SiteEvaluation", "gate", "judge_group", "judge_sites", "noninferiority_check",
           "other_site_checks"]

UNDERPOWERED = "underpowered"
UNCHANGED = "unchanged"

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


@dataclass(frozen=True)
class Check:
    """One rule of the gate; `value` is what was measured and `limit` the bound it was held to."""

    name: str
    passed: bool
    detail: str
    value: float | None = None
    limit: float | None = None
    #: "underpowered" (passed on no significant harm; a person must accept it) or "unchanged"
    flag: str | None = None
    #: False for a check recorded for information only (another site keeps its own production)
    binding: bool = True


@dataclass(frozen=True)
class GateResult:
    """The verdict: `passed` only when every binding check passed; `summary` in plain language.

    `needs_approval`: it passed with a flag a person must accept (an underpowered check). `scope`:
    "all_sites" moves the alias every site without its own follows; "site" moves `site`'s own alias.
    """

    passed: bool
    checks: tuple[Check, ...]
    summary: str
    needs_approval: bool = False
    scope: str = "all_sites"
    site: str = ""

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.binding]

    def flagged(self, flag: str = UNDERPOWERED) -> list[Check]:
        return [c for c in self.checks if c.flag == flag and c.binding]


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
    metric = asked if (asked in measured or asked in _EVAL_ATTR) else HEADLINE_METRIC.get(report.kind)
    if metric is None:
        return Check("target_fixed", False, f"metric {report.metric!r} cannot be computed from the evaluation")
    lower = lower_is_better(metric, report.kind)
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


def noninferiority_check(r: PathologyEval, policy: Policy) -> Check:
    """Non-inferiority of one pathology, power-aware (see the module docstring).

    In order: not evaluable → listed, not checked; scores identical to the parent's → passed,
    `unchanged`; lower bound ≥ -margin → passed (shown, whatever the power); otherwise, if the data
    cannot show the margin (underpowered) and the policy says `no_significant_harm` → passed when the
    interval does not lie wholly below zero (or there are too few cases for an interval at all), flagged
    `underpowered`; otherwise failed, with the power
    sentence when underpowered ("Hernia: 5 positives; the margin -0.020 needs about N").
    """
    margin, alpha, rule = policy.gate.noninferiority_margin, policy.gate.alpha, policy.gate.underpowered
    name = f"noninferiority[{r.pathology}]"
    if not r.evaluable:
        return Check(name, True, f"{r.pathology} not evaluable ({r.reason}): not checked")
    c = r.comparison
    if c is None or c.delta is None:
        return Check(name, False, f"{r.pathology}: no paired comparison with the parent", None, -margin)
    if c.identical:
        return Check(name, True, f"{r.pathology}: scores identical to the parent's on every case (unchanged)",
                     0.0, -margin, UNCHANGED)
    power = assess_power(c.parent_auroc, r.n_pos, r.n_neg, margin, alpha, policy.gate.power_correlation,
                         measured_se=c.se_delta, measured_rho=c.correlation)
    interval = ("(too few cases for an interval)" if c.delta_lo is None
                else f"[{c.delta_lo:+.4f}, {c.delta_hi:+.4f}]")
    change = f"{r.pathology}: AUROC change {c.delta:+.4f} {interval}"
    lower = c.delta_lo if c.delta_lo is not None else c.delta
    if lower >= -margin:
        what = "lower bound" if c.delta_lo is not None else "point estimate"
        return Check(name, True, f"{change}, {what} >= -{margin:.3f}", lower, -margin)
    if not power.underpowered:
        # the power behind this failure was judged on the policy's ρ: say so (an older stored evaluation)
        assumed = "" if power.measured else (f" (power judged with the policy's ρ {power.rho:.2f}: "
                                             "no measured covariance)")
        return Check(name, False, f"{change}, lower bound < -{margin:.3f}{assumed}", lower, -margin)
    sentence = power.sentence(r.pathology, margin)
    if rule == "block":
        return Check(name, False, f"{change}, lower bound < -{margin:.3f}; underpowered ({sentence}); "
                     "the policy blocks", lower, -margin, UNDERPOWERED)
    if c.delta_hi is None:
        # Too few cases for any interval: the data can show neither safety nor harm; a person must judge.
        return Check(name, True, f"{change}; underpowered, too few cases to judge harm ({sentence})",
                     c.delta, 0.0, UNDERPOWERED)
    # Judge harm only: fail when the whole interval lies below zero.
    ok = c.delta_hi >= 0
    verdict = "no significant harm" if ok else "significant harm: the interval excludes zero"
    return Check(name, ok, f"{change}; underpowered, {verdict} ({sentence})", c.delta_hi, 0.0, UNDERPOWERED)


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
    checks = [_target_check(report, target, policy, measured)]
    from decision.gate_subgroup_target import report_target_check  # a subgroup report: on the subgroup's rows

    checks[0] = report_target_check(report, evaluation, policy, measured, checks[0])
    checks += [noninferiority_check(r, policy) for r in evaluation.results if r.pathology != report.pathology]
    if not evaluation.has_parent:
        checks.append(Check("noninferiority", False, "the evaluation has no parent to compare with"))
    checks += [_tp_loss(target, policy), _recall_floor(report, target, policy)]
    from decision.gate_subgroups import subgroup_checks  # it builds on this module's Check

    checks += subgroup_checks(evaluation, report.pathology, policy)  # no group harmed (Holm over the family)
    if abs(evaluation.alpha - policy.gate.alpha) > 1e-12:  # intervals at another level than the policy's
        level = f"evaluated at alpha {evaluation.alpha:g}, the policy asks for {policy.gate.alpha:g}"
        checks.append(Check("interval_level", False, level, evaluation.alpha, policy.gate.alpha))
    passed = all(c.passed for c in checks)
    return GateResult(passed, tuple(checks), _summary(passed, checks), _approval(passed, checks, policy))


def _approval(passed: bool, checks: list[Check], policy: Policy) -> bool:
    return passed and policy.gate.underpowered_needs_approval and any(
        c.flag == UNDERPOWERED and c.binding for c in checks)


def _summary(passed: bool, checks: list[Check]) -> str:
    failed = [c for c in checks if not c.passed]
    if passed:
        target = checks[0].detail
        ni = [c for c in checks if c.name.startswith("noninferiority[") and c.value is not None and c.flag is None]
        worst = min(ni, key=lambda c: c.value) if ni else None  # type: ignore[arg-type,return-value]
        worst_txt = f"; worst other AUROC lower bound {worst.value:+.4f} ({worst.name[15:-1]})" if worst else ""
        weak = [c.name[15:-1] for c in checks if c.flag == UNDERPOWERED]
        weak_txt = f"; underpowered, no significant harm: {', '.join(weak)}" if weak else ""
        rest = "; ".join(c.detail for c in checks if c.name in ("tp_loss", "recall_floor"))
        return f"Accepted: all {len(checks)} checks passed. {target}{worst_txt}{weak_txt}; {rest}."
    listed = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    return f"Rejected: {len(failed)} of {len(checks)} checks failed. {listed}."


def other_site_checks(report: ReportView, evaluation: EvaluationReport, policy: Policy) -> list[Check]:
    """Checks on an evaluation set of another site than the report's: a fix here must not break there.

    Every evaluable pathology, the target included, must stay non-inferior; and the target must not
    newly breach its SLO there (a threshold moved for one hospital applies to all of them): if the
    parent met the SLO's recall (FPR) on this set, the candidate must too.
    """
    checks = [noninferiority_check(r, policy) for r in evaluation.results]
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


@dataclass(frozen=True)
class SiteEvaluation:
    """One held-out evaluation set: its name, its site, and the candidate-vs-parent evaluation on it."""

    dataset: str
    site: str | None
    evaluation: EvaluationReport
    #: the candidate vs the site's authorised baseline, and the patients shared with the training data
    #: (`decision.gate_lineage`); None: not supplied, not checked (the engine always supplies both)
    baseline: BaselineComparison | None = None
    sequestration: Sequestration | None = None


def _tag(c: Check, dataset: str, *, binding: bool = True, note: str = "") -> Check:
    return Check(f"{c.name}@{dataset}", c.passed, c.detail + note, c.value, c.limit, c.flag, binding)


def judge_sites(report: ReportView, evaluations: list[SiteEvaluation], policy: Policy, *,
                measured: Mapping[str, float] | None = None, own_alias_sites: frozenset[str] = frozenset(),
                ) -> GateResult:
    """The gate over every evaluation set, and the scope of the promotion it allows.

    The report's site gets the full `gate`; every other site `other_site_checks`. Sites with their own
    production alias (`own_alias_sites`, other than the report's) are not affected by this promotion:
    their checks are recorded, not binding; when the report's site has its own, no other site is. If every
    binding check passes, the promotion covers every site that follows the all-sites alias (`scope`
    "all_sites"), or only the report's site when it has its own alias. If only the report's site passes and
    the policy allows it, the candidate is promoted for that site alone (`scope` "site") and the other sites'
    checks become non-binding. Without an evaluation set the verdict is a rejection.
    """
    from decision.gate_lineage import lineage_checks  # it builds on this module's Check

    if not evaluations:
        return GateResult(False, (Check("evaluation", False, "the version has no evaluation data set"),),
                          "rejected: nothing to evaluate on")
    site = report.site or ""
    here = [e for e in evaluations if e.site == site] or evaluations
    site_checks = [_tag(c, e.dataset) for e in here for c in gate(report, e.evaluation, policy,
                                                                      measured=measured).checks]
    site_checks += [_tag(c, e.dataset) for e in here for c in lineage_checks(e.baseline, e.sequestration, policy)]
    others: list[Check] = []
    own = bool(site) and site in own_alias_sites  # then this promotion moves production@site alone
    for e in (e for e in evaluations if e not in here):
        unaffected = own or (bool(e.site) and e.site in own_alias_sites)
        note = (f" (not binding: {e.site} has its own production version)" if e.site in own_alias_sites else
                f" (not binding: this promotion moves production@{site} only)") if unaffected else ""
        others += [_tag(c, e.dataset, binding=not unaffected, note=note)
                   for c in other_site_checks(report, e.evaluation, policy)
                   + lineage_checks(e.baseline, e.sequestration, policy)]
    site_ok = all(c.passed for c in site_checks)
    others_ok = all(c.passed for c in others if c.binding)
    scope = "site" if site and site in own_alias_sites else "all_sites"
    if site_ok and not others_ok and site and policy.gate.site_scoped_promotion:
        scope = "site"
        note = f" (not binding: promoted for {site} only; other sites keep their production)"
        others = [c if not c.binding else Check(c.name, c.passed, c.detail + note, c.value, c.limit, c.flag, False)
                  for c in others]
        others_ok = True
    checks = site_checks + others
    passed = site_ok and others_ok
    approval = _approval(passed, checks, policy)
    failed = [c for c in checks if not c.passed and c.binding]
    if passed:
        head = "accepted" + (f" for {site} only (production@{site})" if scope == "site" else "")
        if approval:
            weak = sorted({c.name.split("@")[0].split("[", 1)[-1].rstrip("]") for c in checks
                           if c.flag == UNDERPOWERED and c.binding})
            head += f"; held for approval: underpowered with no significant harm ({', '.join(weak)})"
        detail = f"{checks[0].name}: {checks[0].detail}"  # the target at the report's site: never empty
        blocked_elsewhere = [c for c in checks if not c.passed and not c.binding]
        if blocked_elsewhere:
            detail += "; elsewhere " + "; ".join(f"{c.name}: {c.detail}" for c in blocked_elsewhere[:2])
    else:
        head = f"rejected: {len(failed)} check(s) failed"
        detail = "; ".join(f"{c.name}: {c.detail}" for c in failed[:3])
    return GateResult(passed, tuple(checks), f"{head} ({detail})", approval, scope, site if scope == "site" else "")


def judge_group(reports: list[ReportView], evaluations: list[SiteEvaluation], policy: Policy, *,
                measured: Mapping[str, float] | None = None, own_alias_sites: frozenset[str] = frozenset(),
                ) -> GateResult:
    """The gate for a site group (`decision.site_groups`): one candidate answers several reports at one site.

    `reports[0]` (the lead) gets `judge_sites`, everything judged for one report today; every other report adds
    its own target checks at the site — `target_fixed[P]`, `tp_loss[P]`, `recall_floor[P]` — and, on the other
    sites' sets, `slo_kept` for its pathology (binding as the lead's other-site checks are: not when the promotion
    is for the site alone). The verdict passes only when every binding check of every report passes.
    """
    from decision.gate_subgroup_target import report_target_check

    lead = judge_sites(reports[0], evaluations, policy, measured=measured, own_alias_sites=own_alias_sites)
    if len(reports) == 1 or not evaluations:
        return lead
    site = reports[0].site or ""
    here = [e for e in evaluations if e.site == site] or evaluations
    elsewhere_binding = lead.scope != "site"  # a promotion for the site alone (or its own alias) binds nowhere else
    extra: list[Check] = []
    for r in reports[1:]:
        for e in here:
            target = e.evaluation.get(r.pathology)
            fixed = report_target_check(r, e.evaluation, policy, {}, _target_check(r, target, policy, {}))
            for c in (fixed, _tp_loss(target, policy), _recall_floor(r, target, policy)):
                extra.append(Check(f"{c.name}[{r.pathology}]@{e.dataset}", c.passed, c.detail, c.value, c.limit,
                                   c.flag, True))
        for e in (e for e in evaluations if e not in here):
            binding = elsewhere_binding and not (bool(e.site) and e.site in own_alias_sites)
            extra += [_tag(c, e.dataset, binding=binding, note="" if binding else " (not binding)")
                      for c in other_site_checks(r, e.evaluation, policy) if c.name.startswith("slo_kept[")]
    checks = list(lead.checks) + extra
    failed = [c for c in checks if not c.passed and c.binding]
    passed = not failed
    approval = _approval(passed, checks, policy)
    names = ", ".join(r.pathology for r in reports)
    if passed:
        head = lead.summary.split(" (", 1)[0] if lead.passed else "accepted"
        fixed = "; ".join(c.detail for c in checks if c.name.startswith("target_fixed"))
        summary = f"{head} for the group at {site} ({names}): {fixed}"
    else:
        listed = "; ".join(f"{c.name}: {c.detail}" for c in failed[:3])
        summary = f"rejected: {len(failed)} check(s) failed for the group at {site} ({names}) ({listed})"
    return GateResult(passed, tuple(checks), summary, approval, lead.scope, lead.site)
