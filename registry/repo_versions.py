"""Models, versions and their lineage, evaluations, datasets and aliases.

Plain functions over a `Session` (the caller owns the transaction through
`session_scope()`); each state change appends its audit event in that same
transaction. New version numbers come from the unique (model, version) pair
plus a lock on the model row (`SELECT … FOR UPDATE`; SQLite's writers are
already serialized by `BEGIN IMMEDIATE`), never from a retry loop.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound
from registry import audit, blobs
from registry.blobs import check_digest, relative_path
from registry.entities import (
    BlobRef,
    DatasetEntity,
    DatasetRole,
    EvaluationEntity,
    ModelEntity,
    VersionEntity,
    VersionStatus,
    alias_label,
)
from registry.models import (
    AliasRow,
    BlobRow,
    DatasetRow,
    EvaluationRow,
    ModelRow,
    VersionDatasetRow,
    VersionRow,
    utcnow,
)
from registry.repo_common import actor_of, count, finite_or_none, insert_ignore
from registry.repo_common import code_version as _code_version
from registry.subgroup_rows import check_subgroups

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
EVAL_FLOATS = ("auroc", "auroc_lo", "auroc_hi", "sensitivity", "specificity", "ppv", "f1", "threshold")


def canonical_spec(spec_json: str | Mapping[str, Any]) -> tuple[str, str]:
    """(canonical text, sha256) of an architecture spec."""
    try:
        obj = json.loads(spec_json) if isinstance(spec_json, str) else dict(spec_json)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not JSON ({exc.msg})", field="spec") from None
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


# -- models -------------------------------------------------------------------
def get_or_create_model(session: Session, name: str, *, description: str = "", actor: str | None = None,
                        lock: bool = False) -> ModelRow:
    """The model row (locked FOR UPDATE when `lock`), created and audited if new."""
    if not _NAME.match(name or ""):
        raise InvalidInput(f"model names are letters, digits and ._- (≤128), got {name!r}", field="model")
    q = select(ModelRow).where(ModelRow.name == name)
    row = session.scalars(q.with_for_update() if lock else q).one_or_none()
    if row is None:
        who = actor_of(actor)
        # ON CONFLICT DO NOTHING: a concurrent creator wins and we read its row.
        created = insert_ignore(session, ModelRow, {"name": name, "description": description, "created_by": who,
                                                    "created_at": utcnow()}).rowcount
        row = session.scalars(q.with_for_update() if lock else q).one()
        if created:
            audit.record(session, "model.create", "model", row.id, new={"name": name}, actor=who)
    return row


def list_models(session: Session) -> list[ModelEntity]:
    return [r.to_entity() for r in session.scalars(select(ModelRow).order_by(ModelRow.name))]


# -- blobs and datasets -------------------------------------------------------
def record_blob(session: Session, blob: BlobRef) -> None:
    """Make the blob known to the database (idempotent)."""
    check_digest(blob.digest)
    insert_ignore(session, BlobRow, {"digest": blob.digest, "size": blob.size, "path": relative_path(blob.digest),
                                     "created_at": utcnow()})


def collect_garbage(session: Session, *, home: Any = None, apply: bool = False, min_age_seconds: float = 3600.0,
                    actor: str | None = None) -> tuple[list[blobs.Orphan], int]:
    """Files in the blob store that no `blobs` row names (and stale temp files), older than
    `min_age_seconds`; with `apply`, delete them and record one audit event. Returns (orphans, bytes freed).

    Every registered blob is kept, whatever the status of the versions that use it: a rejected
    candidate's weights are part of the record.
    """
    if min_age_seconds < 0:
        raise InvalidInput("must be ≥ 0", field="min_age_seconds")
    known = set(session.scalars(select(BlobRow.digest)))
    orphans = blobs.find_orphans(known, home, min_age_seconds=min_age_seconds)
    if not apply or not orphans:
        return orphans, 0
    freed = blobs.remove_orphans(orphans, home)
    audit.record(session, "blobs.gc", "blob_store", "blobs", new={
        "removed": len(orphans), "bytes": freed, "paths": [o.path for o in orphans[:100]],
    }, reason=f"unregistered files older than {min_age_seconds:g} s", actor=actor)
    return orphans, freed


def get_or_create_dataset(session: Session, name: str, role: DatasetRole | str, digest: str, size: int,
                          source: Mapping[str, Any] | None = None, *, actor: str | None = None) -> DatasetEntity:
    """A dataset by (name, role, digest), created and audited if new."""
    role = DatasetRole(role)
    count(size, "dataset.size")
    q = select(DatasetRow).where(DatasetRow.name == name, DatasetRow.role == role, DatasetRow.digest == digest)
    row = session.scalars(q).one_or_none()
    if row is None:
        created = insert_ignore(session, DatasetRow, {
            "name": name, "role": role, "digest": digest, "size": size,
            "source": audit.jsonable(dict(source or {})), "created_at": utcnow(),
        }).rowcount
        row = session.scalars(q).one()
        if created:
            audit.record(session, "dataset.create", "dataset", row.id,
                         new={"name": name, "role": role, "digest": digest, "size": size}, actor=actor)
    return row.to_entity()


# -- versions -----------------------------------------------------------------
def _check_thresholds(thresholds: Mapping[str, Any], pathologies: Sequence[str]) -> dict[str, float | None]:
    known = set(pathologies)
    out: dict[str, float | None] = {}
    for p, v in thresholds.items():
        if p not in known:
            raise InvalidInput(f"{p!r} is not one of this version's pathologies", field="thresholds")
        out[p] = finite_or_none(v, f"thresholds.{p}", lo=0.0, hi=1.0)
    return out


def _check_site_thresholds(site_thresholds: Mapping[str, Any], pathologies: Sequence[str]
                           ) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for site, thr in site_thresholds.items():
        if not isinstance(site, str) or not _NAME.match(site) or len(site) > 64:
            raise InvalidInput(f"site names are letters, digits and ._- (≤64), got {site!r}", field="site_thresholds")
        if not isinstance(thr, Mapping):
            raise InvalidInput("expected {pathology: threshold}", field=f"site_thresholds.{site}")
        if thr:
            out[site] = _check_thresholds(thr, pathologies)
    return out


def _eval_rows(version_id: int, dataset_id: int, rows: Iterable[Mapping[str, Any]],
               pathologies: Sequence[str]) -> list[dict[str, Any]]:
    known, now, out, seen = set(pathologies), utcnow(), [], set()
    for i, r in enumerate(rows):
        p = r.get("pathology")
        if p not in known:
            raise InvalidInput(f"{p!r} is not one of the version's pathologies", field=f"evaluations[{i}].pathology")
        if p in seen:
            raise InvalidInput(f"{p!r} appears twice for one dataset", field=f"evaluations[{i}].pathology")
        seen.add(p)
        row = {k: finite_or_none(r.get(k), f"evaluations[{i}].{k}") for k in EVAL_FLOATS}
        for k in ("auroc", "auroc_lo", "auroc_hi", "sensitivity", "specificity", "ppv", "f1"):
            if row[k] is not None and not 0.0 <= row[k] <= 1.0:
                raise InvalidInput(f"{row[k]} outside [0, 1]", field=f"evaluations[{i}].{k}")
        row.update(version_id=version_id, dataset_id=dataset_id, pathology=p, created_at=now,
                   n_pos=count(r.get("n_pos", 0), f"evaluations[{i}].n_pos"),
                   n_neg=count(r.get("n_neg", 0), f"evaluations[{i}].n_neg"),
                   subgroups=check_subgroups(r.get("subgroups"), f"evaluations[{i}].subgroups"))
        out.append(row)
    return out


def register_version(
    session: Session,
    model: str,
    *,
    spec_json: str | Mapping[str, Any],
    weights_digest: str,
    backbone_digest: str,
    tensors_digest: str,
    pathologies: Sequence[str],
    parameter_count: int,
    thresholds: Mapping[str, float | None] | None = None,
    site_thresholds: Mapping[str, Mapping[str, float | None]] | None = None,
    footprint: Mapping[str, Any] | None = None,
    tensor_digests: Mapping[str, str] | None = None,
    blob: BlobRef | None = None,
    parent_id: int | None = None,
    status: VersionStatus | str = VersionStatus.candidate,
    trainable_parameters: int | None = None,
    code_version: str | None = None,
    decision_id: int | None = None,
    treatment_run_id: int | None = None,
    dataset_ids: Sequence[int] = (),
    evaluations: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
    notes: str = "",
    actor: str | None = None,
    reason: str = "",
) -> VersionEntity:
    """Register a new version with its lineage, dataset links, evaluations and audit event.

    `weights_digest` names a blob: pass `blob` when it is new (from `blobs.put_bytes`),
    or reuse the parent's digest for a thresholds-only version. `site_thresholds` holds
    per-site overrides of `thresholds` ({site: {pathology: threshold}}); `footprint` what the
    version costs to run. `evaluations` maps a dataset id to rows (see `add_evaluations`).
    Everything happens in the caller's transaction. Raises `InvalidInput`/`NotFound` naming the field.
    """
    who = actor_of(actor)
    status = VersionStatus(status)
    if status is VersionStatus.production:
        raise InvalidInput("register as candidate, then move the `production` alias (set_alias)", field="status")
    spec_text, spec_digest = canonical_spec(spec_json)
    pathologies = list(pathologies)
    thr = _check_thresholds(thresholds or {}, pathologies)
    site_thr = _check_site_thresholds(site_thresholds or {}, pathologies)
    count(parameter_count, "parameter_count")
    if blob is not None:
        if blob.digest != weights_digest:
            raise InvalidInput("blob digest differs from weights_digest", field="weights_digest")
        record_blob(session, blob)
    elif session.scalar(select(BlobRow.digest).where(BlobRow.digest == check_digest(weights_digest))) is None:
        raise NotFound(f"blob {weights_digest[:12]}… is not registered; store the weights first", field="weights")
    parent_ref = None
    if parent_id is not None:
        parent = session.execute(select(ModelRow.name, VersionRow.version).join(ModelRow)
                                 .where(VersionRow.id == parent_id)).one_or_none()
        if parent is None:
            raise NotFound(f"no version with id {parent_id}", field="parent")
        parent_ref = f"{parent.name}:{parent.version}"
    m = get_or_create_model(session, model, actor=who, lock=True)
    number = (session.scalar(select(func.max(VersionRow.version)).where(VersionRow.model_id == m.id)) or 0) + 1
    row = VersionRow(
        model_id=m.id, version=number, parent_id=parent_id, status=status, spec_json=spec_text,
        spec_digest=spec_digest, weights_digest=weights_digest, backbone_digest=backbone_digest,
        tensors_digest=tensors_digest, tensor_digests=dict(tensor_digests or {}), thresholds=thr,
        site_thresholds=site_thr, footprint=audit.jsonable(dict(footprint or {})), pathologies=pathologies,
        parameter_count=parameter_count, trainable_parameters=trainable_parameters,
        code_version=code_version or _code_version(), created_by=who, created_at=utcnow(),
        decision_id=decision_id, treatment_run_id=treatment_run_id, notes=notes,
    )
    row.model = m
    session.add(row)
    session.flush()
    ds_ids = sorted(set(dataset_ids) | set((evaluations or {}).keys()))
    if ds_ids:
        session.execute(insert(VersionDatasetRow.__table__), [{"version_id": row.id, "dataset_id": d} for d in ds_ids])
    n_eval = 0
    for dataset_id, rows in (evaluations or {}).items():
        eval_rows = _eval_rows(row.id, dataset_id, rows, pathologies)
        if eval_rows:
            session.execute(insert(EvaluationRow.__table__), eval_rows)
            n_eval += len(eval_rows)
    audit.record(session, "version.register", "model_version", row.id, new={
        "ref": f"{model}:{number}", "parent": parent_ref, "status": status, "weights_digest": weights_digest,
        "spec_digest": spec_digest, "thresholds": thr, **({"site_thresholds": site_thr} if site_thr else {}),
        "datasets": ds_ids, "evaluations": n_eval,
        "decision_id": decision_id, "treatment_run_id": treatment_run_id,
    }, reason=reason, actor=who)
    return row.to_entity(parent_ref=parent_ref, dataset_ids=ds_ids)


def derive_version(session: Session, parent_id: int, *, thresholds: Mapping[str, float | None] | None = None,
                   site_thresholds: Mapping[str, Mapping[str, float | None]] | None = None,
                   actor: str | None = None, reason: str = "", **kwargs: Any) -> VersionEntity:
    """A thresholds-only child of `parent_id`: same spec and weights blob, new thresholds.

    `thresholds` update the defaults; `site_thresholds` update (per site, per pathology) the parent's
    site overrides. Everything else is the parent's.
    """
    p = _version_row(session, parent_id)
    merged = {**p.thresholds, **(thresholds or {})}
    sites = {site: dict(v) for site, v in (p.site_thresholds or {}).items()}
    for site, thr in (site_thresholds or {}).items():
        sites[site] = {**sites.get(site, {}), **thr}
    kwargs.setdefault("footprint", p.footprint)
    return register_version(
        session, p.model.name, spec_json=p.spec_json, weights_digest=p.weights_digest,
        backbone_digest=p.backbone_digest, tensors_digest=p.tensors_digest, tensor_digests=p.tensor_digests,
        pathologies=p.pathologies, parameter_count=p.parameter_count, thresholds=merged, site_thresholds=sites,
        parent_id=p.id, actor=actor, reason=reason, **kwargs,
    )


def add_evaluations(session: Session, version_id: int, dataset_id: int, rows: Sequence[Mapping[str, Any]], *,
                    actor: str | None = None) -> int:
    """Bulk-insert per-pathology metrics of a version on a dataset (floats may be None); audited."""
    v = _version_row(session, version_id)
    eval_rows = _eval_rows(version_id, dataset_id, rows, v.pathologies)
    if eval_rows:
        session.execute(insert(EvaluationRow.__table__), eval_rows)
        insert_ignore(session, VersionDatasetRow, {"version_id": version_id, "dataset_id": dataset_id})
    audit.record(session, "evaluation.add", "model_version", version_id,
                 new={"dataset_id": dataset_id, "pathologies": [r["pathology"] for r in eval_rows]}, actor=actor)
    return len(eval_rows)


def list_evaluations(session: Session, version_id: int, dataset_id: int | None = None) -> list[EvaluationEntity]:
    q = (select(EvaluationRow, DatasetRow.name).join(DatasetRow, DatasetRow.id == EvaluationRow.dataset_id)
         .where(EvaluationRow.version_id == version_id).order_by(EvaluationRow.dataset_id, EvaluationRow.id))
    if dataset_id is not None:
        q = q.where(EvaluationRow.dataset_id == dataset_id)
    out = []
    for e, ds_name in session.execute(q):
        out.append(EvaluationEntity(
            e.id, e.version_id, e.dataset_id, ds_name, e.pathology, e.auroc, e.auroc_lo, e.auroc_hi,
            e.sensitivity, e.specificity, e.ppv, e.f1, e.threshold, e.n_pos, e.n_neg, e.created_at,
            e.subgroups,
        ))
    return out


def set_version_status(session: Session, version_id: int, status: VersionStatus | str, *, reason: str = "",
                       actor: str | None = None) -> VersionEntity:
    """Change a version's status (e.g. `rejected` by the gate); `production` only moves with the alias."""
    status = VersionStatus(status)
    if status is VersionStatus.production:
        raise InvalidInput("use set_alias(…, 'production', …) to promote", field="status")
    row = _version_row(session, version_id)
    old = VersionStatus(row.status)
    if old is not status:
        row.status = status
        audit.record(session, "version.status", "model_version", row.id, old={"status": old},
                     new={"status": status}, reason=reason, actor=actor)
    return get_version(session, version_id)


# -- site names -----------------------------------------------------------------
def _check_site(site: str) -> str:
    site = site or ""
    if site and (not _NAME.match(site) or len(site) > 64):
        raise InvalidInput(f"site names are letters, digits and ._- (≤64), got {site!r}", field="site")
    return site


# -- finding versions -----------------------------------------------------------
def _version_row(session: Session, version_id: int) -> VersionRow:
    row = session.get(VersionRow, version_id)
    if row is None:
        raise NotFound(f"no version with id {version_id}", field="version")
    return row


def get_version(session: Session, version_id: int) -> VersionEntity:
    """The full version (with aliases, dataset ids and the parent's ref); `NotFound` if absent."""
    row = _version_row(session, version_id)
    parent_ref = None
    if row.parent_id is not None:
        p = _version_row(session, row.parent_id)
        parent_ref = f"{p.model.name}:{p.version}"
    aliases = [alias_label(name, site) for name, site in session.execute(
        select(AliasRow.name, AliasRow.site).where(AliasRow.version_id == row.id)
        .order_by(AliasRow.name, AliasRow.site))]
    ds = list(session.scalars(select(VersionDatasetRow.dataset_id).where(VersionDatasetRow.version_id == row.id)
                              .order_by(VersionDatasetRow.dataset_id)))
    return row.to_entity(parent_ref=parent_ref, aliases=aliases, dataset_ids=ds)


def find_version_id(session: Session, model: str, version: int) -> int:
    vid = session.scalar(select(VersionRow.id).join(ModelRow, ModelRow.id == VersionRow.model_id)
                         .where(ModelRow.name == model, VersionRow.version == version))
    if vid is None:
        raise NotFound(f"no version {model}:{version}", field="version")
    return vid


def resolve_version(session: Session, ref: str | int, *, site: str | None = None) -> VersionEntity:
    """`NAME:N`, `NAME@alias`, `NAME@alias@site`, or `N` when the registry holds one model.

    With `site`, `NAME@alias` means the version that alias serves at that site: the site's own alias
    when it has one, else the all-sites alias.
    """
    return get_version(session, resolve_version_id(session, ref, site=site))


def _alias_version_id(session: Session, name: str, alias: str, site: str) -> int | None:
    return session.scalar(select(AliasRow.version_id).join(ModelRow, ModelRow.id == AliasRow.model_id)
                          .where(ModelRow.name == name, AliasRow.name == alias, AliasRow.site == site))


def resolve_version_id(session: Session, ref: str | int, *, site: str | None = None) -> int:
    text = str(ref).strip()
    if "@" in text:
        name, alias = text.split("@", 1)
        alias, _, own_site = alias.partition("@")
        if own_site:
            vid = _alias_version_id(session, name, alias, _check_site(own_site))
            if vid is None:
                raise NotFound(f"no alias {alias_label(alias, own_site)!r} on model {name!r}", field="version")
            return vid
        vid = _alias_version_id(session, name, alias, _check_site(site)) if site else None
        if vid is None:
            vid = _alias_version_id(session, name, alias, "")
        if vid is None:
            raise NotFound(f"no alias {alias!r} on model {name!r}", field="version")
        return vid
    if ":" in text:
        name, _, num = text.rpartition(":")
        if not num.isdigit():
            raise InvalidInput(f"expected NAME:N, NAME@alias or N, got {text!r}", field="version")
        return find_version_id(session, name, int(num))
    if text.isdigit():
        names = list(session.scalars(select(ModelRow.name).limit(2)))
        if len(names) != 1:
            raise InvalidInput(
                "several models: write NAME:N" if names else "the registry holds no model yet", field="version"
            )
        return find_version_id(session, names[0], int(text))
    raise InvalidInput(f"expected NAME:N, NAME@alias or N, got {text!r}", field="version")
