"""What the demo runs: its sizes, sites and chapters (`DemoConfig`), and how it reports progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cxr.kinds import IssueKind

#: progress(step, detail) — the CLI draws it
Progress = Callable[[str, str], None]


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 0
    spec: str = "compact"
    n_train: int = 8000
    n_calibration: int = 2000
    n_evaluation: int = 2000
    epochs: int = 5
    weeks: int = 3
    per_week: int = 1000
    train_site: str = "site-a"
    feedback_site: str = "site-b"
    model: str = "cxr"
    threads: int | None = None
    #: the last chapter: a new site whose films a washed-out look-up table shifts at the input level
    #: (None: no such chapter); its evaluation set is bound to the baseline, so every gate judges it
    new_site: str | None = "site-e"
    new_site_evaluation: int = 1000
    new_site_week: int = 2000  # labelled studies in its first week (≈ 60 Cardiomegaly positives)
    #: what its radiologists audit: the monitor reports these pathologies and kinds only
    new_site_watch: tuple[tuple[str, ...], tuple[str, ...]] = (("Cardiomegaly",), (IssueKind.false_positives,))
    #: who approves a candidate held for a person (the demo plays them; the approval says so)
    approver: str = "radiology-lead"
    #: after the labelled weeks, play the person who approves the feedback site's site-level decision
    site_group: bool = True
    #: the feedback site's first week arrives without labels first (monitoring without labels)
    unlabelled_first: bool = True
