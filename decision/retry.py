"""No re-try without new evidence: a treatment that failed the gate for the same question is not run again.

The question is (the version serving the site, the site, the pathology, the issue kind). A run that
the gate rejected for it — or whose held candidate a person rejected — answered it; running the same
treatment on the same version with the same data and the same policy asks it again and, for every
deterministic treatment here, gets the same answer at the same price. So the planner skips it, and
says which run answered, unless something it depends on changed since that run started:

* new labelled feedback registered for the site (a data set of role `feedback` whose `source.site`
  is the site, created after the run started: the run could not have read it), or
* another policy (the run's decision was made under another policy digest: other parameters,
  bounds or targets).

Runs that ended in an error or were abandoned, and treatments that *declined* (their own cheap check
said no before any candidate existed), answered nothing: they are not held against a re-try. Only the
newest run of a treatment for the question counts (a later success or error supersedes a failure).
A pure function over plain values; `decision.past_runs.gate_failures` reads them from the registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["Attempt", "NotRetried", "not_retried"]


@dataclass(frozen=True)
class Attempt:
    """One earlier run of a treatment on a version for a report, as this rule reads it."""

    run_id: int
    treatment: str
    version_id: int
    version: str  # the version's reference, e.g. "cxr:3"
    site: str | None
    pathology: str
    kind: str
    started_at: datetime
    policy_digest: str
    failed_gate: bool  # rejected by the gate or by a person (not declined, not an error)
    reasons: tuple[str, ...] = ()  # the failing checks, e.g. ("tp_loss",)


@dataclass(frozen=True)
class NotRetried:
    """Why a treatment is skipped: the run that answered the question, and what did not change since."""

    treatment: str
    run_id: int
    version: str
    site: str | None
    pathology: str
    kind: str
    reasons: tuple[str, ...]
    since: datetime

    @property
    def sentence(self) -> str:
        why = f" ({', '.join(self.reasons)})" if self.reasons else ""
        where = f" at {self.site}" if self.site else ""
        return (f"{self.treatment} failed on {self.version}{where} for {self.pathology} {self.kind} in run "
                f"{self.run_id}{why}; no new feedback and the same policy since: not re-tried")

    def to_json(self) -> dict[str, Any]:
        return {"treatment": self.treatment, "run": self.run_id, "version": self.version, "site": self.site,
                "pathology": self.pathology, "kind": self.kind, "reasons": list(self.reasons),
                "since": self.since.isoformat()}


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def not_retried(attempts: Iterable[Attempt], *, version_id: int, site: str | None, pathology: str, kind: str,
                policy_digest: str, feedback_at: Sequence[datetime]) -> dict[str, NotRetried]:
    """The treatments not to run again for this question, by name, with the run that answered it.

    `attempts`: earlier runs (any order); `feedback_at`: when each feedback data set of `site` was
    registered. A treatment is listed when its newest attempt for (version_id, site, pathology, kind)
    failed the gate under `policy_digest` and no feedback of the site was registered after that attempt
    started. Raises nothing.
    """
    newest: dict[str, Attempt] = {}
    for a in attempts:
        if (a.version_id, a.site, a.pathology, a.kind) != (version_id, site, pathology, kind):
            continue
        seen = newest.get(a.treatment)
        if seen is None or (a.started_at, a.run_id) > (seen.started_at, seen.run_id):
            newest[a.treatment] = a
    fresh = [_utc(t) for t in feedback_at]
    out = {}
    for name, a in newest.items():
        if not a.failed_gate or a.policy_digest != policy_digest:
            continue
        if any(t > _utc(a.started_at) for t in fresh):
            continue
        out[name] = NotRetried(name, a.run_id, a.version, a.site, a.pathology, a.kind, a.reasons, a.started_at)
    return out
