"""Gate checks that look past the parent: no margin creep, and sequestered evaluation data.

Both are pure functions of plain values, like `decision.gate`, which calls them per evaluation set
(`judge_sites`); what they need is gathered by `decision.lineage_evidence`.

* `baseline_noninferiority[P]` — no margin creep. The parent comparison lets each promotion lose up to
  the margin: ten promotions each -0.019 on a pathology, every one within a -0.02 margin, walk the model
  -0.19 from what was authorised. So every candidate is also compared with the site's *authorised
  baseline* (the newest version a person authorised there, else the registered root:
  `registry.repo_authorised`) on the same evaluation rows: the paired DeLong interval of
  AUROC(candidate) - AUROC(baseline) must have its lower bound at or above -`gate.cumulative_margin`,
  for every evaluable pathology (the target included: a fix must not creep either). The rule is
  `noninferiority_check`'s, power rule and all, at the cumulative margin; the detail names the baseline.
  Since the bound holds against a fixed version, the total drift a chain can accumulate unseen is
  bounded by the cumulative margin (plus the interval's own error), whatever the number of steps.
* `sequestration` — the treatment never saw the evaluation set. A treatment run records the patients of
  every row it trained or tuned on (as sha256 digests of the patient ids: `patient_digests`); each
  evaluation set records its own. Any patient in both fails the check (value: how many), because a
  model judged on patients it learnt from is judged on memory, not on new patients: the gate refuses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from decision.evaluate import EvaluationReport
from decision.gate import Check, noninferiority_check
from policies import Policy

__all__ = ["BaselineComparison", "Sequestration", "baseline_checks", "lineage_checks", "patient_digests",
           "sequestration_check"]


@dataclass(frozen=True)
class BaselineComparison:
    """The candidate against the site's authorised baseline on one evaluation set.

    `evaluation` is `evaluate_scores(labels, candidate, baseline, ...)`: its parent slot holds the baseline.
    `baseline` names it for the record ("cxr:1 (override by alice: baseline)").
    """

    baseline: str
    evaluation: EvaluationReport


@dataclass(frozen=True)
class Sequestration:
    """How many patients an evaluation set shares with the data the treatment trained on."""

    training_patients: int
    evaluation_patients: int
    overlap: int

    @classmethod
    def of(cls, training: frozenset[str], evaluation: frozenset[str]) -> Sequestration:
        """From two sets of patient digests (`patient_digests`)."""
        return cls(len(training), len(evaluation), len(training & evaluation))


def patient_digests(patient_ids: Iterable[str]) -> frozenset[str]:
    """sha256 hex digests of patient ids: what a run and an evaluation set record, never the ids themselves."""
    return frozenset(hashlib.sha256(str(p).encode()).hexdigest() for p in patient_ids)


def _baseline_policy(policy: Policy) -> Policy:
    gate = policy.gate.model_copy(update={"noninferiority_margin": policy.gate.cumulative_margin})
    return policy.model_copy(update={"gate": gate})


def baseline_checks(comparison: BaselineComparison, policy: Policy) -> list[Check]:
    """`baseline_noninferiority[P]` for every pathology of the comparison (see the module docstring)."""
    at_cumulative = _baseline_policy(policy)
    out = []
    for r in comparison.evaluation.results:
        c = noninferiority_check(r, at_cumulative)
        detail = (c.detail.replace("no paired comparison with the parent", "no output of the baseline to compare")
                  .replace("the parent's", "the baseline's"))
        out.append(Check(f"baseline_{c.name}", c.passed,
                         f"vs authorised baseline {comparison.baseline} (cumulative margin "
                         f"{policy.gate.cumulative_margin:.3f}): {detail}", c.value, c.limit, c.flag))
    if not comparison.evaluation.has_parent:
        out.append(Check("baseline_noninferiority", False,
                         f"no scores of the authorised baseline {comparison.baseline} to compare with"))
    return out


def sequestration_check(s: Sequestration) -> Check:
    """`sequestration`: passes only when no patient of the evaluation set is in the treatment's training data."""
    if s.overlap:
        detail = (f"{s.overlap} of the evaluation set's {s.evaluation_patients} patients were in the treatment's "
                  f"training data ({s.training_patients} patients): it is not judged on new patients")
    else:
        detail = (f"no patient of the evaluation set's {s.evaluation_patients} is among the treatment's "
                  f"{s.training_patients} training patients")
    return Check("sequestration", s.overlap == 0, detail, float(s.overlap), 0.0)


def lineage_checks(baseline: BaselineComparison | None, sequestration: Sequestration | None,
                   policy: Policy) -> list[Check]:
    """The checks of this module for one evaluation set; none for what the caller did not supply."""
    checks = [] if sequestration is None else [sequestration_check(sequestration)]
    return checks + ([] if baseline is None else baseline_checks(baseline, policy))
