"""The subgroup gate: a candidate must not harm any subgroup (a sex, an age band, a view, a site, an intersection).

A candidate can improve its target on average while losing recall in one group (PA films, say). For each
evaluation set, this module runs one-sided paired tests of *harm* vs the parent in every group with enough
cases, on the pieces `decision.subgroups` stores with the evaluation (the group's paired DeLong change and its
discordant positives):

* `subgroup_noninferiority[P|attribute=group]` — AUROC. H0: Δ ≥ -m (the candidate is non-inferior in the
  group) against H1: Δ < -m, where Δ = AUROC(candidate) - AUROC(parent) on the group's labelled rows and m the
  `[subgroups]` margin (default: `gate.noninferiority_margin`). z = (Δ + m) / SE with SE the paired DeLong
  standard error on those rows (`cxr.stats.delong_paired`); p = Φ(z). This is the same statistic as the
  non-inferiority test of H0: Δ ≤ -m (whose p is 1 - Φ(z)), read from the other side: see "Why harm" below.
* `subgroup_recall[P|attribute=group]` (policy `gate_recall`) — recall at the operating points (candidate at its
  threshold, parent at its own). H0: recall(candidate) ≥ recall(parent) on the group's positives. Exact
  one-sided McNemar test: of the b + c discordant positives (b caught by the parent only, c by the candidate
  only), b ~ Binomial(b + c, 1/2) at the boundary, p = P(Bin(b + c, 1/2) ≥ b). Exact at any group size.

**The family** whose error Holm controls: on one evaluation set, every (group, pathology, test) tested —
every group of every attribute and declared intersection that `decision.subgroups` marks judgeable (at least
`min_positives` positives and `min_negatives` negatives), × the report's pathology (policy `gate_pathologies =
"all"`: every pathology with a paired comparison in that group), × the AUROC test and, with `gate_recall`, the
recall test (where both models have an operating point). Holm's step-down (`cxr.drift.holm`) at `gate.alpha`
rejects a test iff its adjusted p is ≤ alpha; a rejected test fails its check. So the probability that a
candidate non-inferior in every group (equal to its parent, say) fails any subgroup check is at most alpha,
whatever the dependence between groups (which overlap: "F" and "F & 65+"). Groups too small are listed in
`subgroup_family`'s detail, never tested and never silently passed as tested.

**Why harm, not demonstrated non-inferiority.** Requiring every group to *show* non-inferiority (reject H0:
Δ ≤ -m at Holm level) would reject nearly every candidate: a group of 20 positives cannot show a 0.02 AUROC
margin even when nothing changed (`decision.subgroups`' `positives_needed`). The whole-set checks of
`decision.gate` keep that role; here the guarantee is the one a false alarm needs — at most alpha family-wise
— and the power to catch a confined harm is measured (`bench/subgroups.py`, docs/subgroups.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy.stats import binom

from cxr.drift import holm
from decision.evaluate import EvaluationReport
from decision.gate import Check
from decision.subgroups import SubgroupEval
from policies import Policy

__all__ = ["SubgroupTest", "auroc_harm_p", "recall_harm_p", "subgroup_checks", "subgroup_tests"]


@dataclass(frozen=True)
class SubgroupTest:
    """One member of the family: which test on which group, its one-sided p and what it measured."""

    name: str  # "subgroup_recall[Cardiomegaly|view=PA]"
    group: SubgroupEval
    kind: str  # "auroc" or "recall"
    p_value: float
    detail: str


def auroc_harm_p(delta: float, se: float, margin: float) -> float:
    """p = Φ((Δ + m) / SE): one-sided p of H0 Δ ≥ -m (harm beyond the margin is H1). SE 0: 1 if Δ ≥ -m, else 0."""
    if se <= 0:
        return 1.0 if delta >= -margin else 0.0
    return NormalDist().cdf((delta + margin) / se)


def recall_harm_p(lost: int, gained: int) -> float:
    """Exact one-sided McNemar p = P(Bin(lost + gained, 1/2) ≥ lost); 1 without a discordant positive."""
    n = lost + gained
    return 1.0 if n == 0 else float(min(1.0, binom.sf(lost - 1, n, 0.5)))


def _label(g: SubgroupEval) -> str:
    return f"{g.pathology}|{g.attribute}={g.group}"


def subgroup_tests(evaluation: EvaluationReport, pathology: str, policy: Policy) -> tuple[list[SubgroupTest],
                                                                                         list[SubgroupEval]]:
    """The family on one evaluation set (module doc) and the groups left untested (too small or unpaired)."""
    sg = policy.subgroups
    tests: list[SubgroupTest] = []
    untested: list[SubgroupEval] = []
    for g in evaluation.subgroups:
        if sg.gate_pathologies == "target" and g.pathology != pathology:
            continue
        if not g.judgeable or (g.se_delta is None and g.recall_lost is None):
            untested.append(g)
            continue
        head = f"{g.pathology}, {g.attribute} = {g.group} ({g.n_pos} positives, {g.n_neg} negatives)"
        if g.se_delta is not None and g.delta_auroc is not None:
            p = auroc_harm_p(g.delta_auroc, g.se_delta, g.margin)
            tests.append(SubgroupTest(f"subgroup_noninferiority[{_label(g)}]", g, "auroc", p,
                                      f"{head}: AUROC change {g.delta_auroc:+.4f} (paired SE {g.se_delta:.4f}), "
                                      f"margin -{g.margin:.3f}, one-sided p {p:.4g}"))
        if sg.gate_recall and g.recall_lost is not None and g.recall_gained is not None and g.recall is not None:
            p = recall_harm_p(g.recall_lost, g.recall_gained)
            tests.append(SubgroupTest(f"subgroup_recall[{_label(g)}]", g, "recall", p,
                                      f"{head}: recall {g.recall:.3f} vs parent {g.parent_recall:.3f} "
                                      f"({g.recall_lost} positives lost, {g.recall_gained} gained), "
                                      f"exact one-sided p {p:.4g}"))
    return tests, untested


def subgroup_checks(evaluation: EvaluationReport, pathology: str, policy: Policy) -> list[Check]:
    """One `Check` per test of the family (failed iff Holm rejects it at `gate.alpha`), then `subgroup_family`.

    Nothing when the subgroup gate is off or the evaluation carries no paired subgroup results (no parent, or
    not evaluated per subgroup): the whole-set checks of `decision.gate` still apply.
    """
    if not policy.subgroups.gate or not evaluation.subgroups:
        return []
    tests, untested = subgroup_tests(evaluation, pathology, policy)
    if not tests and not any(g.delta_auroc is not None or g.recall_lost is not None for g in untested):
        return []
    alpha = policy.gate.alpha
    adjusted = holm([t.p_value for t in tests]) if tests else np.empty(0)
    k = len(tests)
    checks = []
    for t, adj in zip(tests, adjusted, strict=True):
        harm = bool(adj <= alpha)
        verdict = "significant harm" if harm else "no significant harm"
        checks.append(Check(t.name, not harm, f"{t.detail}; Holm-adjusted {adj:.4g} over {k} tests, alpha "
                                              f"{alpha:g}: {verdict}", float(adj), alpha))
    small = sorted({f"{g.pathology}|{g.attribute}={g.group}" for g in untested})
    shown = ", ".join(small[:8]) + (f" and {len(small) - 8} more" if len(small) > 8 else "")
    scope = "every evaluable pathology" if policy.subgroups.gate_pathologies == "all" else pathology
    rejected = sum(not c.passed for c in checks)
    detail = (f"Holm over {k} one-sided harm tests ({scope}; subgroups x pathologies x "
              f"{'AUROC and recall' if policy.subgroups.gate_recall else 'AUROC'}) at alpha {alpha:g}: "
              f"{rejected} rejected; untested (too small or unpaired): {shown or 'none'}")
    checks.append(Check("subgroup_family", True, detail, float(k), None))
    return checks

