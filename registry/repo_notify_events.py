"""The events a person must hear about besides a decision's (`repo_notify.enqueue_decision`) and a version's
(`repo_aliases`): a candidate held for a person, a label request, a scheduled pass that failed or was
abandoned, a failed audit verification. Each builds its thin payload (ids, site, pathology, a one-line
summary, the `decide` command to look) and calls `repo_notify.enqueue` in the caller's transaction — the
one that records the change; a verification changes nothing, so its caller commits the event on its own.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.entities import RunOutcome
from registry.models import DecisionRow, ModelRow, RunRow, VersionRow
from registry.models_jobs import ScheduleRow
from registry.repo_notify import decision_subject, enqueue


def _line(text: str, n: int = 160) -> str:
    """The first line of `text`, at most `n` characters: summaries stay one line."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= n else first[:n - 1] + "…"


def enqueue_label_request(session: Session, decision_id: int) -> str | None:
    """`report.label_request` for a decision that carries a label request (its evidence lists the studies,
    `decision.evidence.LABEL_REQUEST`) and now awaits a person — unless it waits on a held candidate."""
    row = session.get(DecisionRow, decision_id)
    request = (row.evidence or {}).get("label_request") if row is not None else None
    held = session.scalars(select(RunRow.id).where(RunRow.decision_id == decision_id,
                                                   RunRow.outcome == RunOutcome.held).limit(1)).first()
    if not request or held is not None:
        return None
    subj = decision_subject(session, decision_id)
    site = subj.pop("site") or request.get("site", "")
    n = len(request.get("studies") or [])
    return enqueue(session, "report.label_request", site=site, command=f"decide labels {decision_id}",
                   summary=f"decision {decision_id} ({subj.get('version')}, {subj.get('pathology')}, {site}) "
                   f"requests labels for {n} studies, most shifted first", decision_id=decision_id, studies=n, **subj)


def enqueue_held(session: Session, run: RunRow) -> str:
    """`candidate.held`: run `run`'s candidate passed the gate with a flag (an underpowered check) and waits
    for a person's verdict; in the transaction that records the run as held."""
    subj = decision_subject(session, run.decision_id) if run.decision_id is not None else {"site": ""}
    site = subj.pop("site")
    cand = session.get(VersionRow, run.output_version_id) if run.output_version_id is not None else None
    ref = f"{session.get(ModelRow, cand.model_id).name}:{cand.version}" if cand is not None else "the candidate"
    gate = _line(str(((run.metrics or {}).get("gate") or {}).get("summary", "")), 100)
    where = ", ".join(str(x) for x in (subj.get("pathology"), site) if x)
    return enqueue(session, "candidate.held", site=site, command="decide decisions --status awaiting_approval",
                   summary=_line(f"candidate {ref} of {run.treatment} ({where}) held for a person"
                                 + (f": {gate}" if gate else "")),
                   decision_id=run.decision_id, run_id=run.id, treatment=run.treatment, candidate=ref, **subj)


def enqueue_pass(session: Session, type: str, pass_row: Any) -> str:
    """`pass.failed` / `pass.abandoned` about a scheduled pass (a `PassRow`), in the transaction that
    records it so; the summary carries the first line of its error."""
    sched = session.get(ScheduleRow, pass_row.schedule_id) if pass_row.schedule_id is not None else None
    name, model, site = (sched.name, sched.model, sched.site or "") if sched is not None else ("(deleted)", "", "")
    what = "failed" if type == "pass.failed" else "was abandoned"
    return enqueue(session, type, site=site, command=f"decide monitor passes --schedule {name}",
                   summary=_line(f"scheduled pass {pass_row.id} of {name} ({model}, {site or 'every site'}, week "
                                 f"{pass_row.window_index + 1}) {what}: {_line(pass_row.error_text, 100)}"),
                   pass_id=pass_row.id, schedule=name, model=model, window_index=pass_row.window_index)


def enqueue_audit_failure(session: Session, first_bad_seq: int | None, checked: int, reason: str) -> str:
    """`audit.verification_failed`: written in its own transaction by whoever verified (a verification
    changes nothing, so there is no change to share one with)."""
    where = f"at event seq {first_bad_seq}" if first_bad_seq is not None else "(the state it vouches for)"
    return enqueue(session, "audit.verification_failed", command="decide audit verify",
                   summary=_line(f"audit chain broken {where}: {reason}"), first_bad_seq=first_bad_seq,
                   checked=checked)
