"""A request for labels (prior cost 0.5): the answer to a `distribution_shift` report.

A window of a site's studies differs from what the version was validated on (`decision.unlabelled`), but
nothing says whether the model got worse: retraining on an unlabelled signal could only make things up.
So the bundled policy answers with people: the decision lists the studies to label first (the report's
cases, most shifted first; `decide labels DECISION` writes them as CSV) and waits for a person
(`needs_approval`). A person's approval carries it out — the engine never runs `apply` — and the labels,
once the labelled monitor ingests them, are judged like any other week (the window's label-free estimate
is checked against them).
"""

from __future__ import annotations

from cxr.kinds import IssueKind
from treatments.base import PlanningContext, ReportInfo, TreatmentContext, TreatmentDeclined, TreatmentResult


class RequestLabels:
    name = "request_labels"
    fixes = frozenset({IssueKind.distribution_shift})
    head_only = True
    #: carried out by people: the engine never calls `apply`; a person's approval completes it
    by_people = True

    def applicable(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        if report.kind != IssueKind.distribution_shift:
            return False, f"answers {IssueKind.distribution_shift} reports only"
        if not report.cases:
            return False, "the report lists no studies to label"
        return True, f"{len(report.cases)} studies to label, most shifted first"

    def outcome(self, report: ReportInfo, done: bool) -> str:
        """What the decision says while it waits for a person, and once one approved."""
        studies = f"{len(report.cases)} studies of {report.site}"
        if done:
            return (f"labels requested for {studies} (the list: `decide labels`): nothing is retrained on an "
                    "unlabelled signal; the labelled monitor checks the window's estimate when they arrive")
        return f"a person must have {studies} labelled (`decide labels` lists them) and approve the request"

    def apply(self, ctx: TreatmentContext) -> TreatmentResult:
        raise TreatmentDeclined("a label request is carried out by people: the engine never runs it")
