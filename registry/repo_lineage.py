"""Read-side questions an auditor asks: lineage, history, and what changed between two versions.

Lineage walks `parent_id` with recursive CTEs in the database (one query
each way, any depth) and returns light `VersionSummary` rows, not full
versions, so a 1,000-deep chain does not parse 1,000 specs.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import literal, select
from sqlalchemy.orm import Session, aliased

from cxr.errors import NotFound
from registry.entities import AliasMove, History, Lineage, VersionDiff, VersionStatus, VersionSummary
from registry.models import AliasHistoryRow, DatasetRow, EvaluationRow, ModelRow, VersionRow
from registry.repo_aliases import list_aliases
from registry.repo_versions import EVAL_FLOATS, _version_row

_MAX_DEPTH = 1_000_000  # parents are always older rows, so there are no cycles; this is a backstop

_SUMMARY_COLS = (VersionRow.id, ModelRow.name, VersionRow.version, VersionRow.parent_id, VersionRow.status,
                 VersionRow.weights_digest, VersionRow.created_by, VersionRow.created_at, VersionRow.decision_id,
                 VersionRow.treatment_run_id)


def _summary(r: Any, depth: int = 0) -> VersionSummary:
    return VersionSummary(r.id, r.name, r.version, r.parent_id, VersionStatus(r.status), r.weights_digest,
                          r.created_by, r.created_at, r.decision_id, r.treatment_run_id, depth)


def _walk(session: Session, version_id: int, *, up: bool) -> list[VersionSummary]:
    start = select(VersionRow.id, VersionRow.parent_id, literal(0).label("depth")).where(VersionRow.id == version_id)
    cte = start.cte("walk", recursive=True)
    v = aliased(VersionRow)
    link = v.id == cte.c.parent_id if up else v.parent_id == cte.c.id
    cte = cte.union_all(
        select(v.id, v.parent_id, (cte.c.depth + 1).label("depth")).join(cte, link).where(cte.c.depth < _MAX_DEPTH)
    )
    q = (select(*_SUMMARY_COLS, cte.c.depth).join(cte, cte.c.id == VersionRow.id)
         .join(ModelRow, ModelRow.id == VersionRow.model_id).where(cte.c.depth > 0)
         .order_by(cte.c.depth, VersionRow.id))
    return [_summary(r, r.depth) for r in session.execute(q)]


def lineage(session: Session, version_id: int) -> Lineage:
    """Ancestors (parent first, up to the root) and descendants (children first) of a version."""
    row = session.execute(select(*_SUMMARY_COLS).join(ModelRow, ModelRow.id == VersionRow.model_id)
                          .where(VersionRow.id == version_id)).one_or_none()
    if row is None:
        _version_row(session, version_id)  # raises NotFound
    return Lineage(_summary(row), _walk(session, version_id, up=True), _walk(session, version_id, up=False))


def list_versions(session: Session, model: str | None = None) -> list[VersionSummary]:
    q = select(*_SUMMARY_COLS).join(ModelRow, ModelRow.id == VersionRow.model_id).order_by(ModelRow.name,
                                                                                            VersionRow.version)
    if model is not None:
        q = q.where(ModelRow.name == model)
    return [_summary(r) for r in session.execute(q)]


def alias_moves(session: Session, model: str | None = None) -> list[AliasMove]:
    src, dst = aliased(VersionRow), aliased(VersionRow)
    q = (select(AliasHistoryRow, ModelRow.name, src.version, dst.version)
         .join(ModelRow, ModelRow.id == AliasHistoryRow.model_id)
         .outerjoin(src, src.id == AliasHistoryRow.from_version_id)
         .join(dst, dst.id == AliasHistoryRow.to_version_id).order_by(AliasHistoryRow.id))
    if model is not None:
        q = q.where(ModelRow.name == model)
    return [AliasMove(h.id, name, h.alias, a, b, h.actor, h.at, h.reason, h.site)
            for h, name, a, b in session.execute(q)]


def history(session: Session, model: str | None = None) -> History:
    """Every version, the current aliases, and every alias move (who, when, from, to, why)."""
    if model is not None and session.scalar(select(ModelRow.id).where(ModelRow.name == model)) is None:
        raise NotFound(f"no model named {model!r}", field="model")
    return History(list_versions(session, model), list_aliases(session, model), alias_moves(session, model))


# -- diff -----------------------------------------------------------------------
def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: obj}


def _metrics(session: Session, version_id: int, dataset_id: int) -> dict[str, dict[str, float | None]]:
    q = select(EvaluationRow).where(EvaluationRow.version_id == version_id, EvaluationRow.dataset_id == dataset_id)
    return {e.pathology: {k: getattr(e, k) for k in EVAL_FLOATS} for e in session.scalars(q)}


SUBGROUP_METRICS = ("auroc", "recall", "fpr")


def _subgroups(session: Session, version_id: int, dataset_id: int) -> dict[tuple[str, str, str], dict[str, Any]]:
    q = select(EvaluationRow).where(EvaluationRow.version_id == version_id, EvaluationRow.dataset_id == dataset_id)
    return {(e.pathology, g["attribute"], g["group"]): g for e in session.scalars(q) for g in (e.subgroups or [])}


def _subgroup_diff(ga: dict[tuple[str, str, str], dict[str, Any]],
                   gb: dict[tuple[str, str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Both sides' groups (a group on one side only has None on the other), with deltas where both are known."""
    if not ga or not gb:
        return []
    out = []
    for key in sorted(ga.keys() | gb.keys()):
        a, b = ga.get(key, {}), gb.get(key, {})
        row: dict[str, Any] = dict(zip(("pathology", "attribute", "group"), key, strict=True))
        for k in SUBGROUP_METRICS:
            va, vb = a.get(k), b.get(k)
            row[k] = {"a": va, "b": vb, "delta": None if va is None or vb is None else vb - va}
        row["judgeable"] = {"a": a.get("judgeable"), "b": b.get("judgeable")}
        row["n_pos"] = {"a": a.get("n_pos"), "b": b.get("n_pos")}
        out.append(row)
    return out


def diff_versions(session: Session, a_id: int, b_id: int) -> VersionDiff:
    """What changed from version a to b: spec fields, thresholds, per-pathology metrics, tensors.

    Metrics are compared on the newest dataset both versions were evaluated on
    (comparing across datasets would mislead); `metrics_dataset` names it.
    """
    a, b = _version_row(session, a_id), _version_row(session, b_id)
    fa, fb = _flatten(json.loads(a.spec_json)), _flatten(json.loads(b.spec_json))
    spec = {k: {"a": fa.get(k), "b": fb.get(k)} for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)}
    thresholds = {
        p: {"a": a.thresholds.get(p), "b": b.thresholds.get(p)}
        for p in sorted(a.thresholds.keys() | b.thresholds.keys())
        if a.thresholds.get(p) != b.thresholds.get(p)
    }
    # A site's operating point is its override, else the default: compare what is in force there.
    sa_, sb_ = a.site_thresholds or {}, b.site_thresholds or {}
    for site in sorted(sa_.keys() | sb_.keys()):
        ta, tb = {**a.thresholds, **sa_.get(site, {})}, {**b.thresholds, **sb_.get(site, {})}
        for p in sorted(sa_.get(site, {}).keys() | sb_.get(site, {}).keys()):
            if ta.get(p) != tb.get(p):
                thresholds[f"{p}@{site}"] = {"a": ta.get(p), "b": tb.get(p)}
    ds_a = set(session.scalars(select(EvaluationRow.dataset_id).where(EvaluationRow.version_id == a.id)))
    ds_b = set(session.scalars(select(EvaluationRow.dataset_id).where(EvaluationRow.version_id == b.id)))
    common = ds_a & ds_b
    metrics: dict[str, dict[str, dict[str, float | None]]] = {}
    ds_name = None
    subgroups: list[dict[str, Any]] = []
    if common:
        ds = max(common)
        ds_name = session.scalar(select(DatasetRow.name).where(DatasetRow.id == ds))
        ma, mb = _metrics(session, a.id, ds), _metrics(session, b.id, ds)
        for p in sorted(ma.keys() | mb.keys()):
            per: dict[str, dict[str, float | None]] = {}
            for k in EVAL_FLOATS:
                va, vb = ma.get(p, {}).get(k), mb.get(p, {}).get(k)
                per[k] = {"a": va, "b": vb, "delta": None if va is None or vb is None else vb - va}
            metrics[p] = per
        subgroups = _subgroup_diff(_subgroups(session, a.id, ds), _subgroups(session, b.id, ds))
    ta, tb = a.tensor_digests or {}, b.tensor_digests or {}
    return VersionDiff(
        a=f"{a.model.name}:{a.version}", b=f"{b.model.name}:{b.version}", spec=spec, thresholds=thresholds,
        metrics=metrics, metrics_dataset=ds_name,
        tensors_changed=sorted(k for k in ta.keys() & tb.keys() if ta[k] != tb[k]),
        tensors_added=sorted(tb.keys() - ta.keys()), tensors_removed=sorted(ta.keys() - tb.keys()),
        same_weights=a.weights_digest == b.weights_digest, same_backbone=a.backbone_digest == b.backbone_digest,
        parameter_count={"a": a.parameter_count, "b": b.parameter_count}, subgroups=subgroups,
    )
