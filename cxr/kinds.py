"""The issue kinds, the metrics that measure them, and which direction is better: one vocabulary.

Every package that speaks of an issue kind imports it from here — the registry's report column,
the policy schema, the treatments' `fixes`, the monitor, the gate and report ingest — so adding a
kind touches this module, a migration (the registry stores kinds as an SQL enum) and the code that
handles the new kind, nothing else. Part of the torch-free kernel of `cxr/` (with `errors`,
`files`, `faults`, `clock`): the registry and the policies may import it.

A metric belongs to exactly one kind. `rate` says how a metric follows from a window's confusion
counts (numerator, denominator terms), so ingest can check a report's value against its counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class IssueKind(StrEnum):
    """What went wrong. A `StrEnum`: a member equals, hashes and serialises as its plain string."""

    false_positives = "false_positives"
    false_negatives = "false_negatives"
    auroc_drop = "auroc_drop"
    calibration_drift = "calibration_drift"
    footprint = "footprint"
    #: a site's unlabelled window differs from what the version was validated on (`decision.unlabelled`)
    distribution_shift = "distribution_shift"


@dataclass(frozen=True)
class MetricRule:
    """A metric: the kind of issue it measures, its range, and how counts give it (if they do)."""

    kind: IssueKind
    lo: float
    hi: float
    #: (numerator, denominator terms) over the confusion counts, when the metric is a rate of them
    rate: tuple[str, tuple[str, ...]] | None = None
    lower_is_better: bool = False


_FP, _FN = ("fp", "tn"), ("tp", "fn")
K = IssueKind

#: metric → rule: the metrics an error report may carry. A kind's metrics are the ones naming it.
METRICS: dict[str, MetricRule] = {
    "fpr": MetricRule(K.false_positives, 0.0, 1.0, ("fp", _FP), lower_is_better=True),
    "specificity": MetricRule(K.false_positives, 0.0, 1.0, ("tn", _FP)),
    "recall": MetricRule(K.false_negatives, 0.0, 1.0, ("tp", _FN)),
    "sensitivity": MetricRule(K.false_negatives, 0.0, 1.0, ("tp", _FN)),
    "fnr": MetricRule(K.false_negatives, 0.0, 1.0, ("fn", _FN), lower_is_better=True),
    "auroc": MetricRule(K.auroc_drop, 0.0, 1.0),
    "ece": MetricRule(K.calibration_drift, 0.0, 1.0, lower_is_better=True),
    "brier": MetricRule(K.calibration_drift, 0.0, 1.0, lower_is_better=True),
    "parameters": MetricRule(K.footprint, 0.0, 1e12, lower_is_better=True),
    "parameter_fraction": MetricRule(K.footprint, 0.0, 1.0, lower_is_better=True),
    "size_mb": MetricRule(K.footprint, 0.0, 1e7, lower_is_better=True),
    "latency_ms": MetricRule(K.footprint, 0.0, 1e7, lower_is_better=True),
    #: the smallest Holm-adjusted p-value of the window's drift tests (`cxr.drift`): below alpha, shifted
    "shift_p": MetricRule(K.distribution_shift, 0.0, 1.0),
}

#: the evaluation metric that judges a kind when the report's own metric is not one the evaluation
#: computes (the gate's target check); kinds without one are judged on their report metric only
HEADLINE_METRIC: dict[IssueKind, str] = {
    K.false_positives: "fpr",
    K.false_negatives: "recall",
    K.auroc_drop: "auroc",
}

#: the kinds the labelled monitor files from a site's feedback (one per SLO: max FPR, min recall, min AUROC)
LABELLED_KINDS: tuple[IssueKind, ...] = (K.false_positives, K.false_negatives, K.auroc_drop)

#: the kinds the label-free monitor files from a site's unlabelled studies: answered by a request for labels,
#: never by a treatment that changes the model
LABEL_FREE_KINDS: tuple[IssueKind, ...] = (K.distribution_shift,)

#: the kinds about what a version says (everything a re-trained model can fix), as against what it costs to run
PERFORMANCE_KINDS: frozenset[IssueKind] = frozenset({K.false_positives, K.false_negatives, K.auroc_drop,
                                                     K.calibration_drift})


def metrics_of(kind: str) -> list[str]:
    """The metrics a report of `kind` may carry."""
    return [m for m, rule in METRICS.items() if rule.kind == kind]


#: figures the evaluation computes that no report carries, all better high
HIGHER_IS_BETTER_FIGURES = frozenset({"tpr", "ppv", "precision", "npv", "f1"})


def lower_is_better(metric: str, kind: str | None = None) -> bool:
    """Whether a smaller value of `metric` is the better one: the metric's own rule; for a figure only
    the evaluation computes (PPV, NPV, F1, TPR), no; for any other figure (one a plugin measured), the
    direction of `kind`'s metrics (`metrics_of(kind)[0]`: fpr, recall, auroc, ece, parameters), and no
    without a kind."""
    rule = METRICS.get(metric)
    if rule is not None:
        return rule.lower_is_better
    if metric in HIGHER_IS_BETTER_FIGURES or kind is None or not metrics_of(kind):
        return False
    return METRICS[metrics_of(kind)[0]].lower_is_better
