"""The registry's past treatment runs as the planner reads them (empirical costs, p(success) per kind).

Kept apart from the engine so that `decide costs` and `decide plan`'s numbers can be read without
importing the treatments, torch or the data code (`decide` must start fast).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from decision.planner import RunStat
from registry import repo
from registry.entities import RunOutcome


def run_stats(session: Session) -> list[RunStat]:
    """Past runs as the planner sees them (kind of issue, success, time, parameters), oldest first."""
    facts = repo.run_reports(session)
    out = []
    for r in repo.list_runs(session):
        if r.outcome in (RunOutcome.running,):
            continue
        succeeded = True if r.outcome == RunOutcome.accepted else (False if r.outcome == RunOutcome.rejected else None)
        kind, site = facts.get(r.id, ("", None))
        out.append(RunStat(r.treatment, kind, succeeded, r.wall_seconds or 0.0, r.trainable_parameters, site))
    return out
