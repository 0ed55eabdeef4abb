"""The auditor's commands: the hash-chained audit trail (`audit verify`, `audit log`), the full export, and
the JSON Schemas of what `decide` accepts.

Each opens one read-only transaction; `audit verify` exits 1 naming the first broken event.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from cli.options import JSON_OPT, needs_db
from cli.output import Table, console, emit, error_line, esc, to_json

commands = typer.Typer()
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
schema_app = typer.Typer(help="JSON Schemas of the inputs decide accepts.", no_args_is_help=True)
commands.add_typer(audit_app, name="audit")
commands.add_typer(schema_app, name="schema")


@audit_app.command("verify")
@needs_db
def audit_verify_cmd(as_json: bool = JSON_OPT) -> None:
    """Recompute the audit chain; exit 1 naming the first broken event, 0 when intact."""
    from registry import audit
    from registry.session import session_scope

    with session_scope(read_only=True) as s:
        res = audit.verify_all(s)
    if as_json:
        sys.stdout.write(to_json(res) + "\n")
    elif res.ok:
        console.print(f"audit chain intact: {res.checked} event(s)")
    if not res.ok:
        from decision.notify import audit_failed  # its own transaction: a verification changes nothing

        audit_failed(res.first_bad_seq, res.checked, res.reason)
        where = f"at event seq {res.first_bad_seq}" if res.first_bad_seq is not None else "(the state it vouches for)"
        error_line(f"audit chain broken {where}: {res.reason}")
        raise typer.Exit(1)


@audit_app.command("log")
@needs_db
def audit_log_cmd(entity: str | None = typer.Option(None, "--entity", help="TYPE or TYPE:ID, e.g. model_version:3"),
                  limit: int = typer.Option(100, "--limit"), as_json: bool = JSON_OPT) -> None:
    """Show audit events, oldest first."""
    from registry import audit
    from registry.session import session_scope

    etype, _, eid = (entity or "").partition(":")
    with session_scope(read_only=True) as s:
        events = audit.list_events(s, entity_type=etype or None, entity_id=eid or None, limit=limit)

    def render() -> None:
        t = Table("seq", "at", "actor", "action", "entity", "reason", title=f"{len(events)} event(s)")
        for e in events:
            t.add_row(str(e.seq), f"{e.at:%Y-%m-%d %H:%M:%S}", esc(e.actor), e.action,
                      f"{e.entity_type}:{e.entity_id}", esc(e.reason))
        console.print(t)

    emit(events, as_json, render)


@commands.command("export")
@needs_db
def export_cmd(fmt: str = typer.Option("json", "--format", help="Only json."),
               out: Path | None = typer.Option(None, "--out", help="Write to a file instead of stdout.")) -> None:
    """Export the full history for an auditor: models, versions, aliases (+moves), evaluations, reports,
    decisions with candidates, runs, audit events, and the change record of every promoted version."""
    from cli.cmd_record import policy_at_hand
    from decision.documents.change_record import change_records
    from registry.export import export_all
    from registry.session import database_url, session_scope

    if fmt != "json":
        raise typer.BadParameter("only --format json is supported", param_hint="--format")
    with session_scope(read_only=True) as s:
        data = export_all(s, url=database_url())
    data["change_records"] = change_records(data, policy=policy_at_hand(strict=False))  # schema: docs/schemas/
    text = to_json(data) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        console.print(f"exported {len(data['versions'])} version(s), {len(data['audit_events'])} event(s) → {out}")


@schema_app.command("change-record")
def schema_change_record_cmd() -> None:
    """Print the JSON Schema of a change record (`decide record --json`, `decide export`'s `change_records`)."""
    from decision.documents.change_record_schema import change_record_schema

    sys.stdout.write(json.dumps(change_record_schema(), indent=2, ensure_ascii=False) + "\n")


@schema_app.command("report")
def schema_report_cmd() -> None:
    """Print the JSON Schema of one error report line (for `decide ingest`)."""
    from decision.error_reports import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
