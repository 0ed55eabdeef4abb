"""The treatment plugin interface.

A treatment takes a parent model version and one error report and proposes a
new candidate version: new thresholds and/or changed tensors. It never touches
SQL and never sees the evaluation split: the engine hands it a
`TreatmentContext` holding only the training and calibration splits (as cached
pooled features for head-level treatments), and judges the result itself on
held-out data. Built-in and third-party treatments are discovered the same
way (`treatments.plugins.load_treatments`, entry-point group
`cxr_decide.treatments`).

A plugin is any object with:

    name: str                     unique, snake_case (the policy's key)
    fixes: frozenset[str]         issue kinds it can fix
    head_only: bool               True if it works on cached features only
    applicable(report, planning) -> (bool, reason)
    apply(context) -> TreatmentResult
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cxr.data import CXRDataset
from cxr.spec import ArchSpec


@dataclass(frozen=True)
class Case:
    """Case-level evidence of a report: one image, its score and (if known) its label."""

    image_id: str
    score: float
    label: int | None


@dataclass(frozen=True)
class ReportInfo:
    """What a treatment knows of the report it treats (plain values)."""

    id: int
    pathology: str
    kind: str
    metric: str
    value: float
    target: float
    site: str
    cases: tuple[Case, ...] = ()
    subgroup: str = ""  # "" = the whole site, else its patients the report is about ("view=AP")

    @property
    def false_positive_cases(self) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.label == 0)


@dataclass(frozen=True)
class Slo:
    """The pathology's service levels from the policy."""

    min_recall: float
    max_fpr: float
    min_auroc: float


@dataclass(frozen=True)
class PlanningContext:
    """Cheap facts for `applicable()`: no features, no images."""

    spec: ArchSpec
    thresholds: dict[str, float | None]
    params: dict[str, Any]
    calibration_cases: int  # labelled calibration cases available at the report's site
    diagnosis: dict[str, Any] | None = None  # the shift diagnosis (`ShiftDiagnosis.as_dict()`), when known


@dataclass(frozen=True)
class FeatureSplit:
    """Cached pooled features of one split, labels aligned to the model's outputs (NaN = unknown)."""

    name: str
    features: np.ndarray  # (N, F) float32
    labels: np.ndarray  # (N, P) float32
    image_ids: tuple[str, ...]
    sites: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.image_ids)

    def rows(self, mask: np.ndarray) -> FeatureSplit:
        idx = np.flatnonzero(mask)
        return FeatureSplit(
            self.name,
            self.features[idx],
            self.labels[idx],
            tuple(self.image_ids[i] for i in idx),
            tuple(self.sites[i] for i in idx),
        )

    def for_site(self, site: str) -> FeatureSplit:
        return self.rows(np.array([s == site for s in self.sites], dtype=bool))

    def index_of(self, image_ids: list[str] | tuple[str, ...]) -> np.ndarray:
        pos = {iid: i for i, iid in enumerate(self.image_ids)}
        return np.array([pos[i] for i in image_ids if i in pos], dtype=np.int64)

    @staticmethod
    def concat(parts: list[FeatureSplit], name: str) -> FeatureSplit:
        return FeatureSplit(
            name,
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.labels for p in parts]),
            tuple(i for p in parts for i in p.image_ids),
            tuple(s for p in parts for s in p.sites),
        )


@dataclass(frozen=True)
class TreatmentContext:
    """Everything a treatment may read. There is no evaluation split here, by design."""

    report: ReportInfo
    spec: ArchSpec
    head_weight: np.ndarray  # (P, F) the parent's classifier
    head_bias: np.ndarray  # (P,)
    thresholds: dict[str, float | None]
    train: FeatureSplit | None
    calibration: FeatureSplit  # the model's calibration split plus labelled site feedback
    slo: Slo
    params: dict[str, Any] = field(default_factory=dict)
    delta: float = 0.05  # 1 - confidence of statistical guarantees
    fpr_delta: float | None = None  # certify false-positive-rate targets on new data too (None: calibration only)
    fpr_headroom: float = 0.0  # aim false-positive fixes at (1 - headroom) x the report's target
    #: a content-addressed array store (get(key) / put(key, array)) for derived data, e.g. block inputs
    cache: Any = None
    seed: int = 0
    #: backbone-level treatments only: the parent's full state, and image data sets under the keys
    #: "train" and "calibration" (the latter includes the site's labelled feedback)
    load_state: Callable[[], dict] | None = None
    image_data: dict[str, CXRDataset] | None = None
    #: footprint treatments: (spec, state) of the version the parent was adapted from, when it differs
    #: (structured pruning's dual-intervention importance: zeroing a channel vs resetting it to this)
    load_reference: Callable[[], tuple[ArchSpec, dict]] | None = None
    #: where the site's shift lives (`cxr.shift.ShiftDiagnosis.as_dict()`), when the engine computed it
    #: before a backbone treatment: its "blocks" tell F re-optimization which dense block to tune
    diagnosis: dict[str, Any] | None = None

    @property
    def target_index(self) -> int:
        return self.spec.pathologies.index(self.report.pathology)


@dataclass
class TreatmentResult:
    """A proposed change. Anything left None is inherited from the parent."""

    thresholds: dict[str, float | None] | None = None
    head_weight: np.ndarray | None = None
    head_bias: np.ndarray | None = None
    #: backbone-level treatments: replacement tensors by state-dict name
    state_updates: dict[str, Any] | None = None
    #: footprint treatments: a new architecture (pruned, compressed, float16, int8) and its *full* state,
    #: which replace the parent's; head_weight / head_bias / state_updates then apply on top of it
    spec: ArchSpec | None = None
    state: dict[str, Any] | None = None
    trainable_parameters: int = 0
    notes: str = ""
    artifacts: dict[str, Any] = field(default_factory=dict)
    #: patient ids of rows it trained or tuned on beyond the splits of its context (data it read itself). The
    #: engine records these with every patient of the splits it was handed, and the gate refuses a candidate
    #: that saw a patient of an evaluation set (`decision.gate_lineage`, check `sequestration`)
    training_patients: frozenset[str] | None = None


class TreatmentDeclined(Exception):
    """The treatment looked and found no change worth proposing (recorded as rejected, not failed).

    `artifacts` keeps what it looked at (e.g. the surgery K-sweep) for the record.
    """

    def __init__(self, reason: str, artifacts: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.artifacts = artifacts or {}


@runtime_checkable
class Treatment(Protocol):
    """A plugin. Optional: `by_people = True` with `outcome(report, done) -> str` for a treatment people carry
    out (a label request): the engine never runs `apply`; a person's approval completes it."""

    name: str
    fixes: frozenset[str]
    head_only: bool

    def applicable(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]: ...

    def apply(self, ctx: TreatmentContext) -> TreatmentResult: ...


def site_or_all(split: FeatureSplit, site: str, minimum: int) -> tuple[FeatureSplit, str]:
    """The report's site rows when there are at least `minimum`, else every row (and which it was)."""
    here = split.for_site(site)
    return (here, f"site {site}") if len(here) >= minimum else (split, "all sites")


def probabilities(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    from cxr.features import head_logits, sigmoid

    return sigmoid(head_logits(features, weight, bias))
