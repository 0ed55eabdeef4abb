"""Error reports: bulk ingest (idempotent), listing, atomic claims with leases, status moves.

Claims must never hand one report to two workers. The claim selects open ids
(`FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent claimers take
different rows instead of waiting) and then flips them with
`UPDATE … WHERE status = 'open' RETURNING id`: only rows that were still open
come back, so even without row locks (SQLite, where `BEGIN IMMEDIATE` already
serializes writers) a report is claimed exactly once.

Ingest is idempotent per key (version, site, subgroup, pathology, kind, window) like a
payment API's idempotency key: the same key with the same content returns the
stored id; the same key with different content is refused, naming the stored
report and the differing fields, so a sender never believes a changed report
was stored. Integers are bounded before they reach the driver (SQLite raises
OverflowError past 2⁶³, PostgreSQL's INTEGER past 2³¹).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound, TransientError
from cxr.kinds import IssueKind
from registry import audit, repo_notify
from registry.entities import IngestResult, ReportEntity, ReportStatus
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
#: PostgreSQL INTEGER (counts and version numbers are 32-bit columns)
MAX_INT = 2**31 - 1
#: what a report says, as opposed to its key and where it came from: the fields compared on re-ingest
CONTENT = ("metric", "value", "target", "counts", "cases", "notes")


def _key(vid: int, r: Mapping[str, Any]) -> tuple:
    # key[4], key[5]: the window (read by position below)
    return (vid, r["site"], r["pathology"], IssueKind(r["kind"]).value,
            r["window_start"].astimezone(UTC), r["window_end"].astimezone(UTC), r.get("subgroup") or "")


def _row_key(r: Any) -> tuple:
    return (r.version_id, r.site, r.pathology, IssueKind(r.kind).value, r.window_start, r.window_end, r.subgroup)


_KEY_COLS = (ReportRow.version_id, ReportRow.site, ReportRow.pathology, ReportRow.kind, ReportRow.window_start,
             ReportRow.window_end, ReportRow.subgroup)


_CONTENT_COLS = (ReportRow.metric, ReportRow.value, ReportRow.target, ReportRow.tp, ReportRow.fp, ReportRow.tn,
                 ReportRow.fn, ReportRow.cases, ReportRow.notes)


def _existing(session: Session, keys: Sequence[tuple]) -> dict[tuple, Any]:
    """Stored reports with these keys (id and content), narrowed by version, site and window start."""
    out: dict[tuple, Any] = {}
    wanted = set(keys)
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i:i + _CHUNK]
        q = select(ReportRow.id, *_KEY_COLS, *_CONTENT_COLS).where(
            ReportRow.version_id.in_({k[0] for k in chunk}), ReportRow.site.in_({k[1] for k in chunk}),
            ReportRow.window_start.in_({k[4] for k in chunk}),
        )
        for r in session.execute(q):
            if _row_key(r) in wanted:
                out[_row_key(r)] = r
    return out


def _content(r: Mapping[str, Any]) -> dict[str, Any]:
    c = r["counts"]
    return {"metric": r["metric"], "value": r["value"], "target": r["target"],
            "counts": {k: c[k] for k in ("tp", "fp", "tn", "fn")}, "cases": audit.jsonable(list(r.get("cases") or [])),
            "notes": r.get("notes") or ""}


def _stored_content(row: Any) -> dict[str, Any]:
    return {"metric": row.metric, "value": row.value, "target": row.target,
            "counts": {"tp": row.tp, "fp": row.fp, "tn": row.tn, "fn": row.fn}, "cases": list(row.cases or []),
            "notes": row.notes or ""}


def _differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The content fields that differ (counts by count: `counts.fp`)."""
    out = []
    for f in CONTENT:
        if f == "counts":
            out += [f"counts.{k}" for k in ("tp", "fp", "tn", "fn") if a["counts"][k] != b["counts"][k]]
        elif a[f] != b[f]:
            out.append(f)
    return out


def _bounded(value: Any, field: str, lo: int) -> int:
    """An integer in [lo, MAX_INT] (bools refused); huge ones never reach the driver."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= MAX_INT:
        shown = value if isinstance(value, int) and abs(value) < 10**12 else f"{type(value).__name__} out of range"
        raise InvalidInput(f"expected an integer in [{lo}, {MAX_INT}], got {shown}", field=field)
    return value


def ingest_reports(session: Session, reports: Sequence[Mapping[str, Any]], *, lines: Sequence[int] | None = None,
                   actor: str | None = None) -> IngestResult:
    """Store validated reports (dicts shaped like `decision.error_reports.ErrorReport.model_dump()`).

    Checks each report's version exists and names one of its pathologies; a
    failure raises `InvalidInput` naming the line (from `lines`) and field,
    before anything is written. Re-ingesting a report with the same key
    (version, site, subgroup, pathology, kind, window) and the same content (`CONTENT`)
    returns the existing id; with different content it raises `InvalidInput`
    naming the stored report and the differing fields (also for two lines of
    one batch), and nothing is written.
    """
    who = actor_of(actor)
    where = [f"line {n}: " for n in lines] if lines is not None else [f"reports[{i}]: " for i in range(len(reports))]
    for i, r in enumerate(reports):
        _bounded(r["version"], f"{where[i]}version", 1)
        for k in ("tp", "fp", "tn", "fn"):
            _bounded(r["counts"][k], f"{where[i]}counts.{k}", 0)
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
    # Same key, different content: refused before anything is written (the lock above, or SQLite's
    # write lock, keeps another ingester from storing one of these keys in between).
    stored = _existing(session, list(dict.fromkeys(k for k, _ in keyed)))
    first: dict[tuple, tuple[int, dict[str, Any]]] = {}
    for i, (key, r) in enumerate(keyed):
        mine = _content(r)
        if key in stored:
            if diff := _differing(mine, _stored_content(stored[key])):
                raise InvalidInput(
                    f"report {stored[key].id} with this key (version, site, subgroup, pathology, kind, window) is "
                    f"stored with different {', '.join(diff)}: refused (a changed report needs its own window)",
                    field=f"{where[i]}report")
        elif key in first:
            j, theirs = first[key]
            if diff := _differing(mine, theirs):
                raise InvalidInput(f"same key as {where[j].removesuffix(': ')} but different {', '.join(diff)}",
                                   field=f"{where[i]}report")
        else:
            first[key] = (i, mine)
    now, new_rows, new_keys, seen = utcnow(), [], [], set(stored)
    for key, r in keyed:
        if key in seen:  # already stored, or a duplicate within this batch
            continue
        seen.add(key)
        c = r["counts"]
        new_rows.append({
            "version_id": key[0], "pathology": r["pathology"], "kind": IssueKind(r["kind"]), "metric": r["metric"],
            "value": r["value"], "target": r["target"], "site": r["site"], "subgroup": key[6],
            "window_start": key[4],
            "window_end": key[5], "tp": c["tp"], "fp": c["fp"], "tn": c["tn"], "fn": c["fn"],
            "cases": audit.jsonable(list(r.get("cases") or [])), "source": r.get("source") or "api",
            "notes": r.get("notes") or "", "status": ReportStatus.open, "created_by": who, "created_at": now,
        })
        new_keys.append(key)
    known: dict[tuple, int] = {k: r.id for k, r in stored.items()}
    if new_rows:
        # ON CONFLICT DO NOTHING … RETURNING: the ingest lock makes a conflict impossible here; should
        # one happen anyway, the row that is missing from RETURNING is reported, never silently merged.
        res = insert_ignore(session, ReportRow, new_rows, returning=(ReportRow.id, *_KEY_COLS))
        known.update({_row_key(r): r.id for r in res})
        if lost := [k for k in new_keys if k not in known]:
            raise TransientError(f"{len(lost)} report(s) were stored by another ingester meanwhile: try again")
        created = list(zip(new_keys, new_rows, strict=True))
        audit.record_many(session, [{
            "action": "report.ingest", "entity_type": "error_report", "entity_id": known[key],
            "new": {"version_id": key[0], "pathology": row["pathology"], "kind": row["kind"], "metric": row["metric"],
                    "value": row["value"], "target": row["target"], "site": row["site"],
                    "subgroup": row["subgroup"], "window": [key[4], key[5]], "source": row["source"],
                    "status": "open"},
        } for key, row in created], actor=who)
        given = {k: r for k, r in reversed(keyed)}  # key → the first input line with it
        for key, row in created:
            if row["kind"] is IssueKind.distribution_shift:  # same transaction: exists iff the report commits
                ref = f"{given[key]['model']}:{given[key]['version']}"
                repo_notify.enqueue(
                    session, "report.distribution_shift", site=row["site"], report_id=known[key], version=ref,
                    pathology=row["pathology"],
                    summary=f"distribution shift at {row['site'] or 'every site'} on {ref} ({row['pathology']}: "
                            f"{row['metric']} {_g(row['value'])} vs target {_g(row['target'])})",
                    command=f"decide reports --status open --model {given[key]['model']}")
    ids = [known[k] for k, _ in keyed]
    return IngestResult(ids=ids, created=len(new_rows), existing=len(ids) - len(new_rows))


def _g(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, int | float) else str(x)


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
                 limit: int | None = None, site: str | None = None, subgroups_only: bool = False,
                 ) -> list[ReportEntity]:
    """Reports in id order; `site`: at that site only; `subgroups_only`: only reports about a subgroup."""
    q = select(ReportRow).order_by(ReportRow.id)
    if site is not None:
        q = q.where(ReportRow.site == site)
    if subgroups_only:
        q = q.where(ReportRow.subgroup != "")
    if status is not None:
        q = q.where(ReportRow.status == ReportStatus(status))
    if model is not None:
        q = q.join(VersionRow, VersionRow.id == ReportRow.version_id).join(ModelRow).where(ModelRow.name == model)
    if limit is not None:
        q = q.limit(limit)
    return [r.to_entity() for r in session.scalars(q)]


def claim_reports(session: Session, worker: str, limit: int = 10, lease_seconds: float = 3600, *,
                  exclude: Sequence[int] = (), actor: str | None = None) -> list[ReportEntity]:
    """Atomically move up to `limit` open reports (none of `exclude`) to `claimed` by `worker`, with a
    lease; audited."""
    if limit < 1:
        return []
    now = utcnow()
    q = select(ReportRow.id).where(ReportRow.status == ReportStatus.open)
    if exclude:
        q = q.where(ReportRow.id.not_in(list(exclude)))
    candidates = list(session.scalars(q.order_by(ReportRow.id).limit(limit).with_for_update(skip_locked=True)))
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


def release_expired_claims(session: Session, *, now: datetime | None = None, claimed_before: datetime | None = None,
                           actor: str | None = None) -> list[int]:
    """Claims past their lease go back to `open` (their worker died); audited. Returns the ids.

    `claimed_before` also releases claims taken before that moment whatever their lease (a take-over:
    the engine turns a claim into a decision within moments, so an old claim's worker is gone).
    """
    now = now or utcnow()
    stale = ReportRow.claim_expires_at < now
    if claimed_before is not None:
        stale = or_(stale, ReportRow.claimed_at < claimed_before)
    rows = list(session.execute(
        select(ReportRow.id, ReportRow.claimed_by, ReportRow.claim_expires_at).where(
            ReportRow.status == ReportStatus.claimed, stale
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
        "reason": "claim lease expired" if r.claim_expires_at < now else "claim taken over: its worker is gone",
    } for r in rows if r.id in released], actor=actor)
    return sorted(released)


def holds_claim(session: Session, report_id: int, worker: str) -> bool:
    """Whether `worker` still holds its claim on the report, the row locked until the transaction ends.

    The fence of a claim: a worker acts on a claimed report (records its decision) only in a
    transaction where this is true, so a claim released meanwhile (lease expired, taken over) and
    taken by another worker is never acted on twice.
    """
    row = session.scalars(select(ReportRow).where(ReportRow.id == report_id).with_for_update()).one_or_none()
    return row is not None and ReportStatus(row.status) is ReportStatus.claimed and row.claimed_by == worker


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
