"""The whole record, as one JSON-ready dict, for an auditor (`decide export --format json`).

Everything an auditor needs to reconstruct what happened without our code:
models, versions (spec, thresholds, digests, lineage links), aliases with
every move, datasets, evaluations, error reports, decisions with all their
candidates and approvals, treatment runs, monitoring schedules and their
passes, version references and unlabelled windows, notification endpoints (never a key), events and
delivery attempts, blobs, and the audit chain with its verification result. Read in one read-only
transaction, so it is consistent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr import clock
from registry import audit
from registry.models import BlobRow, DatasetRow, EvaluationRow, VersionDatasetRow, VersionRow
from registry.models_label_free import ReferenceRow
from registry.repo_aliases import list_aliases
from registry.repo_decisions import list_decisions, list_runs
from registry.repo_jobs import list_passes, list_schedules
from registry.repo_label_free import list_windows
from registry.repo_lineage import alias_moves
from registry.repo_notify import export_endpoints, list_attempts, list_events
from registry.repo_reports import list_reports
from registry.repo_versions import get_version, list_models
from registry.session import current_revision

FORMAT = "cxr-decide/export-1"


def export_all(session: Session, *, url: str | None = None) -> dict[str, Any]:
    """Every table's content as plain JSON values (datetimes ISO 8601 UTC, enums as text)."""
    versions = []
    for vid in session.scalars(select(VersionRow.id).order_by(VersionRow.id)):
        v = get_version(session, vid)
        row = session.get(VersionRow, vid)
        versions.append({**audit.jsonable(v), "tensor_digests": dict(row.tensor_digests or {})})
    evaluations = [
        {c: getattr(e, c) for c in ("id", "version_id", "dataset_id", "pathology", "auroc", "auroc_lo", "auroc_hi",
                                    "sensitivity", "specificity", "ppv", "f1", "threshold", "n_pos", "n_neg",
                                    "created_at", "subgroups")}
        for e in session.scalars(select(EvaluationRow).order_by(EvaluationRow.id))
    ]
    verified = audit.verify_all(session)
    decisions = list_decisions(session)
    return audit.jsonable({
        "format": FORMAT,
        "exported_at": clock.now(),
        "schema_revision": current_revision(url) if url is not None else None,
        "models": list_models(session),
        "versions": versions,
        "aliases": list_aliases(session),
        "alias_history": alias_moves(session),
        "datasets": [d.to_entity() for d in session.scalars(select(DatasetRow).order_by(DatasetRow.id))],
        "version_datasets": [{"version_id": r.version_id, "dataset_id": r.dataset_id}
                             for r in session.scalars(select(VersionDatasetRow))],
        "evaluations": evaluations,
        "reports": list_reports(session),
        "decisions": decisions,
        # site-level decisions (decision/site_group_pass.py): one decision, one candidate per rung, several reports
        "site_groups": [{"decision_id": d.id, "status": d.status, "report_ids": d.report_ids,
                         **dict(d.evidence["site_group"])}
                        for d in decisions if isinstance((d.evidence or {}).get("site_group"), dict)],
        "runs": list_runs(session),
        "schedules": list_schedules(session),
        "scheduled_passes": list_passes(session),
        "references": [r.to_entity() for r in session.scalars(select(ReferenceRow).order_by(ReferenceRow.version_id))],
        "unlabelled_windows": list_windows(session),
        "blobs": [{"digest": b.digest, "size": b.size, "path": b.path, "created_at": b.created_at}
                  for b in session.scalars(select(BlobRow).order_by(BlobRow.created_at, BlobRow.digest))],
        # notifications: endpoints say where their key is (`secret_source`), never the key; events; every attempt
        "notify_endpoints": export_endpoints(session),
        "notify_events": list(reversed(list_events(session, limit=None))),
        "notify_attempts": list_attempts(session, limit=None),
        "audit_events": audit.list_events(session),
        "audit_verification": verified,
    })
