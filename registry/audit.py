"""The append-only, hash-chained audit trail.

Every state change in the registry appends an event in the same transaction
as the change, so an event exists if and only if its change committed. Each
event's `hash` is sha256(prev_hash + canonical JSON of its other fields), and
`audit_head` holds the newest seq and hash: editing any column of any event,
deleting one in the middle (a seq gap, a prev_hash mismatch) or at the end (the
head no longer matches) is found by `verify_chain`.

Appends are serialized across processes by locking the `audit_head` row
(`SELECT … FOR UPDATE` on PostgreSQL; on SQLite the writer already holds the
database write lock from `BEGIN IMMEDIATE`), so the chain never forks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from registry.entities import AuditEventEntity, VerifyResult
from registry.models import AuditEventRow, AuditHeadRow, utcnow
from registry.repo_common import actor_of

GENESIS = "0" * 64
HEAD_ID = 1


def jsonable(obj: Any) -> Any:
    """Plain JSON values (dicts, lists, str, numbers, bool, None) for hashing and storage."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            return None  # JSON has no NaN; the registry never stores one on purpose
        return obj
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v) for v in obj]
    if is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(asdict(obj))
    if hasattr(obj, "model_dump"):
        return jsonable(obj.model_dump(mode="json"))
    raise TypeError(f"not JSON serialisable for the audit trail: {type(obj).__name__}")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """sha256 over the previous hash and the canonical JSON of the event's own fields."""
    return hashlib.sha256((prev_hash + canonical(fields)).encode()).hexdigest()


def _fields(seq: int, at: datetime, actor: str, action: str, entity_type: str, entity_id: str,
            old: Any, new: Any, reason: str) -> dict[str, Any]:
    return {
        "seq": seq, "at": at.isoformat(), "actor": actor, "action": action, "entity_type": entity_type,
        "entity_id": entity_id, "old": old, "new": new, "reason": reason,
    }


def _lock_head(session: Session) -> tuple[int, str]:
    row = session.execute(
        select(AuditHeadRow.seq, AuditHeadRow.hash).where(AuditHeadRow.id == HEAD_ID).with_for_update()
    ).one_or_none()
    if row is None:  # created by the initial migration; a missing row means tampering
        raise RuntimeError("audit_head row missing: run `decide audit verify`")
    return row.seq, row.hash


def record_many(session: Session, events: Sequence[dict[str, Any]], *, actor: str | None = None) -> list[int]:
    """Append events (dicts with action, entity_type, entity_id, old, new, reason); return their seqs.

    Must be called inside the transaction that makes the change it records.
    """
    if not events:
        return []
    actor = actor_of(actor)
    seq, prev = _lock_head(session)
    at = utcnow()
    rows = []
    for e in events:
        seq += 1
        f = _fields(
            seq, at, e.get("actor") or actor, e["action"], e["entity_type"], str(e["entity_id"]),
            jsonable(e.get("old")), jsonable(e.get("new")), e.get("reason") or "",
        )
        h = event_hash(prev, f)
        rows.append({**f, "id": seq, "at": at, "prev_hash": prev, "hash": h})
        prev = h
    session.execute(insert(AuditEventRow.__table__), rows)  # Core executemany: no ORM bookkeeping
    session.execute(update(AuditHeadRow).where(AuditHeadRow.id == HEAD_ID).values(seq=seq, hash=prev))
    return [r["seq"] for r in rows]


def record(session: Session, action: str, entity_type: str, entity_id: Any, *, old: Any = None, new: Any = None,
           reason: str = "", actor: str | None = None) -> int:
    """Append one event; see `record_many`."""
    return record_many(
        session,
        [{"action": action, "entity_type": entity_type, "entity_id": entity_id, "old": old, "new": new,
          "reason": reason}],
        actor=actor,
    )[0]


def verify_chain(session: Session, *, batch: int = 2000) -> VerifyResult:
    """Recompute the chain; return the first broken event (by seq) and why."""
    expected, prev, checked = 1, GENESIS, 0
    cols = (AuditEventRow.id, AuditEventRow.seq, AuditEventRow.at, AuditEventRow.actor, AuditEventRow.action,
            AuditEventRow.entity_type, AuditEventRow.entity_id, AuditEventRow.old, AuditEventRow.new,
            AuditEventRow.reason, AuditEventRow.prev_hash, AuditEventRow.hash)
    result = session.execute(select(*cols).order_by(AuditEventRow.seq).execution_options(yield_per=batch))
    for r in result:
        if r.seq != expected:
            bad = min(r.seq, expected)
            return VerifyResult(False, checked, bad, f"event seq {expected} is missing (next is {r.seq}): deleted?")
        if r.id != r.seq:
            return VerifyResult(False, checked, r.seq, f"event seq {r.seq} has id {r.id}: edited")
        if r.prev_hash != prev:
            return VerifyResult(False, checked, r.seq, f"event seq {r.seq}: prev_hash does not match the event before")
        f = _fields(r.seq, r.at, r.actor, r.action, r.entity_type, r.entity_id, r.old, r.new, r.reason or "")
        if event_hash(prev, f) != r.hash:
            return VerifyResult(False, checked, r.seq, f"event seq {r.seq} ({r.action} {r.entity_type} "
                                                       f"{r.entity_id}): contents do not match its hash: edited")
        prev, expected, checked = r.hash, expected + 1, checked + 1
    head = session.execute(select(AuditHeadRow.seq, AuditHeadRow.hash).where(AuditHeadRow.id == HEAD_ID)).one_or_none()
    if head is None:
        return VerifyResult(False, checked, expected, "audit_head row is missing")
    if head.seq != checked or head.hash != prev:
        if head.seq > checked:
            return VerifyResult(False, checked, checked + 1,
                                f"events {checked + 1}..{head.seq} are missing at the end of the chain: deleted?")
        return VerifyResult(False, checked, head.seq or None, "audit_head does not match the last event")
    return VerifyResult(True, checked)


def verify_aliases(session: Session) -> list[str]:
    """Aliases that disagree with the audit trail: each alias row must point where the last
    `alias.move` / `alias.rollback` event of that alias says, and a dropped alias must be gone. Finds an
    alias edited outside decide (by hand in SQL, with the triggers disabled)."""
    from registry.models import AliasRow, ModelRow, VersionRow

    last: dict[str, AuditEventRow] = {}
    q = (select(AuditEventRow).where(AuditEventRow.entity_type == "alias")
         .where(AuditEventRow.action.in_(("alias.move", "alias.rollback", "alias.drop"))).order_by(AuditEventRow.seq))
    for e in session.scalars(q):
        last[e.entity_id] = e
    problems, seen = [], set()
    rows = session.execute(select(ModelRow.name, AliasRow.name, AliasRow.site, VersionRow.version)
                           .join(ModelRow, ModelRow.id == AliasRow.model_id)
                           .join(VersionRow, VersionRow.id == AliasRow.version_id))
    for model, name, site, version in rows:
        key = f"{model}@{name}@{site}" if site else f"{model}@{name}"
        seen.add(key)
        e = last.get(key)
        says = (e.new or {}).get("version") if e is not None and e.action != "alias.drop" else None
        if says != f"{model}:{version}":
            problems.append(f"alias {key} points at {model}:{version} but the audit trail says "
                            f"{says or 'it does not exist'}: edited outside decide")
    for key, e in last.items():
        if key not in seen and e.action != "alias.drop":
            problems.append(f"alias {key} is missing; the audit trail says {(e.new or {}).get('version')}")
    return problems


def verify_all(session: Session) -> VerifyResult:
    """The chain (`verify_chain`), then the state it vouches for (`verify_aliases`)."""
    res = verify_chain(session)
    if not res.ok:
        return res
    problems = verify_aliases(session)
    if problems:
        return VerifyResult(False, res.checked, None, "; ".join(problems))
    return res


def list_events(session: Session, *, entity_type: str | None = None, entity_id: Any = None,
                since_seq: int = 0, limit: int | None = None) -> list[AuditEventEntity]:
    """Events in chain order, optionally for one entity."""
    q = select(AuditEventRow).where(AuditEventRow.seq > since_seq).order_by(AuditEventRow.seq)
    if entity_type is not None:
        q = q.where(AuditEventRow.entity_type == entity_type)
    if entity_id is not None:
        q = q.where(AuditEventRow.entity_id == str(entity_id))
    if limit is not None:
        q = q.limit(limit)
    return [r.to_entity() for r in session.scalars(q)]
