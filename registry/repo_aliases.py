"""Aliases: `production` (every site) and `production@site`, their moves, rollbacks and the promotion grants.

Every move is checked against the database's promotion rule (a `production` alias needs a grant: a gate
verdict's run, a rollback or an override with a reason), written with its alias-history row and its
audit event in the caller's transaction. Split from `registry.repo_versions`, which registers versions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound
from registry import audit, repo_notify
from registry.entities import PRODUCTION, AliasEntity, VersionStatus, alias_label
from registry.models import AliasHistoryRow, AliasRow, ModelRow, PromotionGrantRow, VersionRow, utcnow
from registry.repo_common import actor_of
from registry.repo_versions import _NAME, _check_site, _version_row


def _serves_production(session: Session, version_id: int, *, except_alias_id: int | None = None) -> bool:
    """Whether some `production` alias (any site) other than `except_alias_id` points at the version."""
    q = select(AliasRow.id).where(AliasRow.name == PRODUCTION, AliasRow.version_id == version_id)
    if except_alias_id is not None:
        q = q.where(AliasRow.id != except_alias_id)
    return session.scalar(q.limit(1)) is not None


GRANTS = ("gate", "rollback", "override")


def set_alias(session: Session, model: str, alias: str, version_id: int, *, actor: str | None = None,
              reason: str = "", action: str = "alias.move", site: str = "", grant: str | None = None,
              run_id: int | None = None) -> AliasEntity:
    """Point `alias` of `model` (for every site, or for `site` only) at a version; record the move in
    alias_history and the audit trail.

    A site's own alias (`production@site-b`) wins over the all-sites one for that site. A version is
    `production` while any `production` alias points at it: the version a move leaves is archived only
    when no other site still runs it.

    Moving `production` needs a grant, recorded in `promotion_grants` in the same transaction (the
    database refuses the move without one): `gate` with the accepted `run_id` that made the version,
    or `rollback` / `override` with a non-empty `reason`. Default: `gate` when `run_id` is given, else
    `override`.
    """
    who = actor_of(actor)
    site = _check_site(site)
    if not _NAME.match(alias or "") or len(alias) > 64:
        raise InvalidInput(f"alias names are letters, digits and ._- (≤64), got {alias!r}", field="alias")
    m = session.scalars(select(ModelRow).where(ModelRow.name == model).with_for_update()).one_or_none()
    if m is None:
        raise NotFound(f"no model named {model!r}", field="model")
    v = _version_row(session, version_id)
    if v.model_id != m.id:
        raise InvalidInput(f"version {v.model.name}:{v.version} belongs to another model", field="version")
    if alias == PRODUCTION and v.status == VersionStatus.rejected:
        raise InvalidInput(f"{model}:{v.version} was rejected; it cannot go to production", field="version")
    if alias == PRODUCTION:
        grant = grant or ("gate" if run_id is not None else "override")
        if grant not in GRANTS:
            raise InvalidInput(f"a production move is a {', '.join(GRANTS)}; got {grant!r}", field="grant")
        if grant == "gate" and run_id is None:
            raise InvalidInput("a gate promotion names the accepted treatment run", field="run_id")
        if grant != "gate" and not (reason or "").strip():
            raise InvalidInput(f"moving production by {grant} needs a reason", field="reason")
    row = session.scalars(select(AliasRow).where(AliasRow.model_id == m.id, AliasRow.name == alias,
                                                 AliasRow.site == site)).one_or_none()
    old_vid = row.version_id if row is not None else None
    now = utcnow()
    label = alias_label(alias, site)
    if old_vid != version_id and alias == PRODUCTION:
        session.add(PromotionGrantRow(model_id=m.id, version_id=version_id, site=site, kind=grant, run_id=run_id,
                                      reason=reason or "", actor=who, at=now))
        session.flush()  # before the alias: the database checks the grant when the alias row is written
    if old_vid != version_id:
        if row is None:
            row = AliasRow(model_id=m.id, name=alias, site=site, version_id=version_id, updated_by=who, updated_at=now)
            session.add(row)
        else:
            row.version_id, row.updated_by, row.updated_at = version_id, who, now
        session.add(AliasHistoryRow(model_id=m.id, alias=alias, site=site, from_version_id=old_vid,
                                    to_version_id=version_id, actor=who, at=now, reason=reason))
        session.flush()
        old_ref = None
        events = []
        if old_vid is not None:
            old_v = _version_row(session, old_vid)
            old_ref = f"{model}:{old_v.version}"
            if (alias == PRODUCTION and old_v.status == VersionStatus.production
                    and not _serves_production(session, old_v.id)):
                old_v.status = VersionStatus.archived
                events.append(_status_event(old_v.id, VersionStatus.production, VersionStatus.archived, reason))
        new = {"version": f"{model}:{v.version}", **({"site": site} if site else {}),
               **({"grant": grant, "run_id": run_id} if alias == PRODUCTION else {})}
        events.insert(0, {"action": action, "entity_type": "alias", "entity_id": f"{model}@{label}",
                          "old": {"version": old_ref}, "new": new, "reason": reason})
        if alias == PRODUCTION and v.status != VersionStatus.production:
            events.append(_status_event(v.id, VersionStatus(v.status), VersionStatus.production, reason))
            v.status = VersionStatus.production
        session.flush()
        audit.record_many(session, events, actor=who)
        if alias == PRODUCTION:  # same transaction: the event exists iff the move commits
            back = action == "alias.rollback"
            repo_notify.enqueue(
                session, "version.rolled_back" if back else "version.promoted", site=site,
                summary=f"{model}:{v.version} {'rolled back to' if back else 'promoted to'} production at "
                        f"{site or 'every site'} (was {old_ref or 'none'})",
                command=f"decide history {model}" + (f" --site {site}" if site else ""),
                version=f"{model}:{v.version}", previous=old_ref, grant=grant, run_id=run_id)
    return AliasEntity(model, alias, version_id, v.version, row.updated_by, row.updated_at, site)


def _status_event(version_id: int, old: VersionStatus, new: VersionStatus, reason: str) -> dict[str, Any]:
    return {"action": "version.status", "entity_type": "model_version", "entity_id": version_id,
            "old": {"status": old}, "new": {"status": new}, "reason": reason}


def rollback(session: Session, version_id: int, *, reason: str, actor: str | None = None,
             site: str = "") -> AliasEntity:
    """Move `production` (every site's, or `site`'s own) back to an earlier version of the same model,
    with a required reason."""
    if not reason or not reason.strip():
        raise InvalidInput("a rollback needs a reason", field="reason")
    v = _version_row(session, version_id)
    return set_alias(session, v.model.name, PRODUCTION, version_id, actor=actor, reason=reason,
                     action="alias.rollback", site=site, grant="rollback")


def drop_site_alias(session: Session, model: str, site: str, *, reason: str, alias: str = PRODUCTION,
                    actor: str | None = None) -> None:
    """Remove a site's own alias: the site goes back to the all-sites one. Recorded in the audit trail."""
    site = _check_site(site)
    if not site:
        raise InvalidInput("only a site's own alias can be removed", field="site")
    if not reason or not reason.strip():
        raise InvalidInput("removing a site's alias needs a reason", field="reason")
    row = session.execute(select(AliasRow, ModelRow.name).join(ModelRow, ModelRow.id == AliasRow.model_id)
                          .where(ModelRow.name == model, AliasRow.name == alias, AliasRow.site == site)
                          .with_for_update()).one_or_none()
    if row is None:
        raise NotFound(f"no alias {alias_label(alias, site)!r} on model {model!r}", field="site")
    a = row[0]
    old_v = _version_row(session, a.version_id)
    session.delete(a)
    session.flush()
    events = [{"action": "alias.drop", "entity_type": "alias", "entity_id": f"{model}@{alias_label(alias, site)}",
               "old": {"version": f"{model}:{old_v.version}", "site": site}, "new": None, "reason": reason}]
    if alias == PRODUCTION and old_v.status == VersionStatus.production and not _serves_production(session, old_v.id):
        old_v.status = VersionStatus.archived
        events.append(_status_event(old_v.id, VersionStatus.production, VersionStatus.archived, reason))
    session.flush()
    audit.record_many(session, events, actor=actor_of(actor))


def list_aliases(session: Session, model: str | None = None) -> list[AliasEntity]:
    q = (select(AliasRow, ModelRow.name, VersionRow.version).join(ModelRow, ModelRow.id == AliasRow.model_id)
         .join(VersionRow, VersionRow.id == AliasRow.version_id).order_by(ModelRow.name, AliasRow.name, AliasRow.site))
    if model is not None:
        q = q.where(ModelRow.name == model)
    rows = session.execute(q)
    return [AliasEntity(name, a.name, a.version_id, ver, a.updated_by, a.updated_at, a.site) for a, name, ver in rows]


def sites_with_own_alias(session: Session, model: str, alias: str = PRODUCTION) -> dict[str, int]:
    """{site: version id} of the sites that have their own `alias`."""
    q = (select(AliasRow.site, AliasRow.version_id).join(ModelRow, ModelRow.id == AliasRow.model_id)
         .where(ModelRow.name == model, AliasRow.name == alias, AliasRow.site != ""))
    return {site: vid for site, vid in session.execute(q)}
