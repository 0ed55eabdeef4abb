"""The registry's repository functions, in one namespace: `from registry import repo`.

Plain functions over a `Session` (no store class): the caller opens the
transaction with `registry.session.session_scope()` and every function that
changes state writes its audit event inside it. They live in `repo_*.py` by
concern (versions, lineage, reports, decisions, scheduled jobs); this module re-exports them.
Finders raise `NotFound`, bad arguments `InvalidInput` naming the field; what
comes back is a frozen entity from `registry.entities`, never an ORM row.
"""

from __future__ import annotations

from registry.audit import list_events, verify_chain
from registry.repo_common import code_version
from registry.repo_datasets import get_dataset, list_datasets
from registry.repo_decisions import (
    approve_decision,
    create_decision,
    finish_run,
    get_decision,
    get_run,
    heartbeat_run,
    list_decisions,
    mark_abandoned_runs,
    reject_decision,
    run_history,
    run_kinds,
    set_decision_status,
    start_run,
)
from registry.repo_jobs import (
    acquire_lease,
    delete_schedule,
    finish_pass,
    get_lease,
    get_pass,
    get_schedule,
    heartbeat_pass,
    list_passes,
    list_schedules,
    mark_stale_passes,
    release_lease,
    renew_lease,
    start_pass,
    upsert_schedule,
)
from registry.repo_lineage import alias_moves, diff_versions, history, lineage, list_versions
from registry.repo_reports import (
    claim_reports,
    get_report,
    ingest_reports,
    list_reports,
    release_expired_claims,
    set_report_status,
)
from registry.repo_versions import (
    add_evaluations,
    canonical_spec,
    collect_garbage,
    derive_version,
    find_version_id,
    get_or_create_dataset,
    get_or_create_model,
    get_version,
    list_aliases,
    list_evaluations,
    list_models,
    record_blob,
    register_version,
    resolve_version,
    resolve_version_id,
    rollback,
    set_alias,
    set_version_status,
)

__all__ = [
    "acquire_lease",
    "add_evaluations",
    "alias_moves",
    "approve_decision",
    "canonical_spec",
    "claim_reports",
    "code_version",
    "collect_garbage",
    "create_decision",
    "delete_schedule",
    "derive_version",
    "diff_versions",
    "find_version_id",
    "finish_pass",
    "finish_run",
    "get_dataset",
    "get_decision",
    "get_lease",
    "get_or_create_dataset",
    "get_or_create_model",
    "get_pass",
    "get_report",
    "get_run",
    "get_schedule",
    "get_version",
    "heartbeat_pass",
    "heartbeat_run",
    "history",
    "ingest_reports",
    "lineage",
    "list_aliases",
    "list_datasets",
    "list_decisions",
    "list_evaluations",
    "list_events",
    "list_models",
    "list_passes",
    "list_reports",
    "list_schedules",
    "list_versions",
    "mark_abandoned_runs",
    "mark_stale_passes",
    "record_blob",
    "register_version",
    "reject_decision",
    "release_expired_claims",
    "release_lease",
    "renew_lease",
    "resolve_version",
    "resolve_version_id",
    "rollback",
    "run_history",
    "run_kinds",
    "set_alias",
    "set_decision_status",
    "set_report_status",
    "set_version_status",
    "start_pass",
    "start_run",
    "upsert_schedule",
    "verify_chain",
]
