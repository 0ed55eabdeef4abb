"""Work whose process died: rows still `running` whose heartbeat is older than the stale time.

Treatment runs (`repo.mark_abandoned_runs`) and scheduled passes (`repo.mark_stale_passes`) both carry a
heartbeat; a pass that finds one silent for the stale time marks it abandoned the same way, here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import audit
from registry.models_base import utcnow


def abandon_silent(session: Session, row_type: type, state: str, running: Any, abandoned: Any, *, cutoff: datetime,
                   action: str, entity_type: str, why: Callable[[Any], str], actor: str | None = None) -> list[int]:
    """Rows of `row_type` whose `state` column is `running` and whose `heartbeat_at` is before `cutoff` become
    `abandoned` (finished now, with `why(row)` as their error text unless they have one), each with an audit
    event `action`; returns their ids in id order. Rows another transaction holds are skipped (it is alive).
    Runs and scheduled passes share it: a heartbeat older than the stale time means a dead process."""
    col = getattr(row_type, state)
    rows = list(session.scalars(select(row_type).where(col == running, row_type.heartbeat_at < cutoff)
                                .order_by(row_type.id).with_for_update(skip_locked=True)))
    stamp = utcnow()
    for r in rows:
        setattr(r, state, abandoned)
        r.finished_at, r.error_text = stamp, r.error_text or why(r)
    audit.record_many(session, [{
        "action": action, "entity_type": entity_type, "entity_id": r.id,
        "old": {state: str(running)}, "new": {state: str(abandoned)}, "reason": r.error_text,
    } for r in rows], actor=actor)
    session.flush()
    return [r.id for r in rows]
