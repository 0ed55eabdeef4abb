"""What leaves the registry about monitoring without labels: a version's reference statistics, and the
unlabelled windows judged against them.

A reference is computed once per version from its calibration split (score distributions, a pooled-feature
reference, image statistics, calibration maps), stored as one content-addressed blob, and found by version.
An unlabelled window records what the label-free monitor found for one site and time window: its drift
tests, its estimated performance, its out-of-distribution share — and, once labels for the same window
arrive, how the estimate compared with what was realised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ReferenceEntity:
    """A version's reference statistics: the blob holding them and a JSON summary (sizes, cut-offs, sources)."""

    version_id: int
    digest: str
    summary: dict[str, Any]
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class WindowEntity:
    """One unlabelled window of a site's studies judged against its serving version's reference."""

    id: int
    version_id: int
    site: str
    window_start: datetime
    window_end: datetime
    n_studies: int
    shifted: bool
    alpha: float
    #: the family of tests with raw and Holm-adjusted p-values, worst first
    tests: dict[str, Any]
    #: per pathology: estimated recall / FPR / positive rate at the site's operating point, with validity
    estimates: dict[str, Any]
    #: the share of studies outside the reference, the cut-off and rate, reasons counted
    ood: dict[str, Any]
    #: the studies that moved most (image ids, worst first): what to label first
    moved: list[Any]
    dataset_id: int | None
    report_id: int | None
    #: filled when labels for the same window arrive: per pathology estimate vs realised, error, contradicted
    realised: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    created_at: datetime | None = None
