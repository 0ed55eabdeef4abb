"""Error reports: bulk ingest (idempotent), listing, atomic claims with leases, status moves.

Claims must never hand one report to two workers. The claim selects open ids
(`FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent claimers take
different rows instead of waiting) and then flips them with
`UPDATE … WHERE status = 'open' RETURNING id`: only rows that were still open
come back, so even without row locks (SQLite, where `BEGIN IMMEDIATE` already
serializes writers) a report is claimed exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound
from registry import audit
from registry.entities import IngestResult, ReportEntity, ReportKind, ReportStatus
from registry.models import ModelRow, ReportRow, VersionRow, utcnow
from registry.repo_common import actor_of, insert_ignore

S = ReportStatus
#: Allowed moves (claims go through claim_reports / release_expired_claims).
TRANSITIONS: dict[ReportStatus, set[ReportStatus]] = {
    S.open: {S.claimed, S.rejected},
    S.claimed: {S.open, S.decided, S.resolved, S.rejected},
    S.decided: {S.open, S.resolved, S.rejected},
    S.resolved: set(),
    S.rejected: set(),
}
_CHUNK = 500
_INGEST_LOCK = 0x52455054  # pg_advisory_xact_lock key: "REPT"


def _key(vid: int, r: Mapping[str, Any]) -> tuple:
    return (vid, r["site"], r["pathology"], ReportKind(r["kind"]).value,
            r["window_start"].astimezone(UTC), r["window_end"].astimezone(UTC))


def _row_key(r: Any) -> tuple:
    return (r.version_id, r.site, r.pathology, ReportKind(r.kind).value, r.window_start, r.window_end)


_KEY_COLS = (ReportRow.version_id, ReportRow.site, ReportRow.pathology, ReportRow.kind, ReportRow.window_start,
             ReportRow.window_end)


def _existing(session: Session, keys: Sequence[tuple]) -> dict[tuple, int]:
    """Ids of stored reports with these keys (narrowed by version, site and window start)."""
    out: dict[tuple, int] = {}
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i:i + _CHUNK]
        q = select(ReportRow.id, *_KEY_COLS).where(
            ReportRow.version_id.in_({k[0] for k in chunk}), ReportRow.site.in_({k[1] for k in chunk}),
            ReportRow.window_start.in_({k[4] for k in chunk}),
        )
        for r in session.execute(q):
            out[_row_key(r)] = r.id
    return out


def ingest_reports(session: Session, reports: Sequence[Mapping[str, Any]], *, lines: Sequence[int] | None = None,
                   actor: str | None = None) -> IngestResult:
    """Store validated reports (dicts shaped like `decision.reports.ErrorReport.model_dump()`).

    Checks each report's version exists and names one of its pathologies; a
    failure raises `InvalidInput` naming the line (from `lines`) and field,
    before anything is written. Re-ingesting a report with the same key
    (version, site, pathology, kind, window) returns the existing id.
    """
    who = actor_of(actor)
    where = [f"line {n}: " for n in lines] if lines is not None else [f"reports[{i}]: " for i in range(len(reports))]
    versions: dict[tuple[str, int], tuple[int, set[str]]] = {}
    for (model, number) in {(r["model"], r["version"]) for r in reports}:
        row = session.execute(select(VersionRow.id, VersionRow.pathologies).join(ModelRow)
                              .where(ModelRow.name == model, VersionRow.version == number)).one_or_none()
        if row is not None:
            versions[(model, number)] = (row.id, set(row.pathologies))
    if session.get_bind().dialect.name == "postgresql":
        # One ingester at a time (SQLite's writers are serialized anyway), so the
        # "already known?" lookup below cannot race and the audit events are exact.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _INGEST_LOCK})
    keyed: list[tuple[tuple, Mapping[str, Any]]] = []
    for i, r in enumerate(reports):
        found = versions.get((r["model"], r["version"]))
        if found is None:
            raise InvalidInput(f"no version {r['model']}:{r['version']} in the registry", field=f"{where[i]}version")
        vid, pathologies = found
        if r["pathology"] not in pathologies:
            raise InvalidInput(f"{r['pathology']!r} is not an output of {r['model']}:{r['version']}",
                               field=f"{where[i]}pathology")
        for f in ("window_start", "window_end"):
            if not isinstance(r[f], datetime) or r[f].tzinfo is None:
                raise InvalidInput("must be a timezone-aware datetime", field=f"{where[i]}{f}")
        keyed.append((_key(vid, r), r))
    now, new_rows, new_keys, seen = utcnow(), [], [], set()
    for key, r in keyed:
        if key in seen:  # a duplicate within this batch
            continue
        seen.add(key)
        c = r["counts"]
        new_rows.append({
            "version_id": key[0], "pathology": r["pathology"], "kind": ReportKind(r["kind"]), "metric": r["metric"],
            "value": r["value"], "target": r["target"], "site": r["site"], "window_start": key[4],
            "window_end": key[5], "tp": c["tp"], "fp": c["fp"], "tn": c["tn"], "fn": c["fn"],
            "cases": audit.jsonable(list(r.get("cases") or [])), "source": r.get("source") or "api",
            "notes": r.get("notes") or "", "status": ReportStatus.open, "created_by": who, "created_at": now,
        })
        new_keys.append(key)
    known: dict[tuple, int] = {}
    missing: list[tuple] = []
    if new_rows:
        # ON CONFLICT DO NOTHING … RETURNING: only rows really inserted come back, so an
        # already-stored report costs one targeted lookup instead of scanning for every key.
        res = insert_ignore(session, ReportRow, new_rows, returning=(ReportRow.id, *_KEY_COLS))
        known = {_row_key(r): r.id for r in res}
        created = [(k, row) for k, row in zip(new_keys, new_rows, strict=True) if k in known]
        missing = [k for k in new_keys if k not in known]
        if missing:
            known.update(_existing(session, missing))
        audit.record_many(session, [{
            "action": "report.ingest", "entity_type": "error_report", "entity_id": known[key],
            "new": {"version_id": key[0], "pathology": row["pathology"], "kind": row["kind"], "metric": row["metric"],
                    "value": row["value"], "target": row["target"], "site": row["site"],
                    "window": [key[4], key[5]], "source": row["source"], "status": "open"},
        } for key, row in created], actor=who)
    ids = [known[k] for k, _ in keyed]
    n_created = len(new_rows) - len(missing)
    return IngestResult(ids=ids, created=n_created, existing=len(ids) - n_created)


def _load(session: Session, ids: Sequence[int]) -> list[ReportEntity]:
    out: list[ReportEntity] = []
    for i in range(0, len(ids), _CHUNK):
        out += [r.to_entity() for r in session.scalars(select(ReportRow).where(ReportRow.id.in_(ids[i:i + _CHUNK])))]
    return sorted(out, key=lambda e: e.id)


def get_report(session: Session, report_id: int) -> ReportEntity:
    row = session.get(ReportRow, report_id)
    if row is None:
        raise NotFound(f"no report with id {report_id}", field="report")
    return row.to_entity()


def list_reports(session: Session, *, status: ReportStatus | str | None = None, model: str | None = None,
                 limit: int | None = None) -> list[ReportEntity]:
    q = select(ReportRow).order_by(ReportRow.id)
    if status is not None:
        q = q.where(ReportRow.status == ReportStatus(status))
    if model is not None:
        q = q.join(VersionRow, VersionRow.id == ReportRow.version_id).join(ModelRow).where(ModelRow.name == model)
    if limit is not None:
        q = q.limit(limit)
    return [r.to_entity() for r in session.scalars(q)]


def claim_reports(session: Session, worker: str, limit: int = 10, lease_seconds: float = 3600, *,
                  actor: str | None = None) -> list[ReportEntity]:
    """Atomically move up to `limit` open reports to `claimed` by `worker`, with a lease; audited."""
    if limit < 1:
        return []
    now = utcnow()
    candidates = list(session.scalars(
        select(ReportRow.id).where(ReportRow.status == ReportStatus.open).order_by(ReportRow.id).limit(limit)
        .with_for_update(skip_locked=True)
    ))
    if not candidates:
        return []
    expires = now + timedelta(seconds=lease_seconds)
    claimed = list(session.scalars(
        update(ReportRow)
        .where(ReportRow.id.in_(candidates), ReportRow.status == ReportStatus.open)
        .values(status=ReportStatus.claimed, claimed_by=worker, claimed_at=now, claim_expires_at=expires)
        .returning(ReportRow.id)
        .execution_options(synchronize_session=False)
    ))
    audit.record_many(session, [{
        "action": "report.claim", "entity_type": "error_report", "entity_id": rid, "old": {"status": "open"},
        "new": {"status": "claimed", "claimed_by": worker, "claim_expires_at": expires},
    } for rid in sorted(claimed)], actor=actor)
    return _load(session, sorted(claimed))


def release_expired_claims(session: Session, *, now: datetime | None = None, actor: str | None = None) -> list[int]:
    """Claims past their lease go back to `open` (their worker died); audited. Returns the ids."""
    now = now or utcnow()
    rows = list(session.execute(
        select(ReportRow.id, ReportRow.claimed_by).where(
            ReportRow.status == ReportStatus.claimed, ReportRow.claim_expires_at < now
        ).with_for_update(skip_locked=True)
    ))
    if not rows:
        return []
    released = set(session.scalars(
        update(ReportRow).where(ReportRow.id.in_([r.id for r in rows]), ReportRow.status == ReportStatus.claimed)
        .values(status=ReportStatus.open, claimed_by=None, claimed_at=None, claim_expires_at=None)
        .returning(ReportRow.id).execution_options(synchronize_session=False)
    ))
    audit.record_many(session, [{
        "action": "report.release", "entity_type": "error_report", "entity_id": r.id,
        "old": {"status": "claimed", "claimed_by": r.claimed_by}, "new": {"status": "open"},
        "reason": "claim lease expired",
    } for r in rows if r.id in released], actor=actor)
    return sorted(released)


def set_report_status(session: Session, report_id: int, status: ReportStatus | str, *, reason: str = "",
                      actor: str | None = None) -> ReportEntity:
    """Move a report along TRANSITIONS (e.g. claimed → decided → resolved); audited."""
    status = ReportStatus(status)
    row = session.scalars(select(ReportRow).where(ReportRow.id == report_id).with_for_update()).one_or_none()
    if row is None:
        raise NotFound(f"no report with id {report_id}", field="report")
    old = ReportStatus(row.status)
    if status is old:
        return row.to_entity()
    if status not in TRANSITIONS[old]:
        raise InvalidInput(f"report {report_id} is {old.value}; it cannot become {status.value}", field="status")
    row.status = status
    if status is ReportStatus.open:
        row.claimed_by = row.claimed_at = row.claim_expires_at = None
    audit.record(session, "report.status", "error_report", report_id, old={"status": old},
                 new={"status": status}, reason=reason, actor=actor)
    session.flush()
    return row.to_entity()
