"""`decide record`: the change record of a promoted version, as a self-contained HTML page (or JSON).

The record is assembled from the registry export in one read-only transaction
(`decision.documents.change_record`); the page is `decision.documents.change_record_html`. Both, and the
policy they quote, are imported inside the command: `decide --help` stays light.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cli.options import JSON_OPT, POLICY_OPT, needs_db
from cli.output import console, esc, to_json

commands = typer.Typer()


def policy_at_hand(path: Path | None = None, *, strict: bool = True) -> dict | None:
    """The policy in force (`--policy`, else $DECIDE_POLICY, else the bundled one) as a change record quotes it.

    Not `strict` (the export): a policy file that does not load gives None — the records then quote no policy
    and say so — instead of failing an auditor's export over a file the export does not need."""
    from cxr.errors import DecideError
    from decision.documents.change_record import policy_facts
    from policies import load_policy
    from registry.settings import get_settings

    try:
        return policy_facts(load_policy(path or get_settings().policy))
    except (DecideError, ValueError):  # ValueError: pydantic's ValidationError
        if strict:
            raise
        return None


@commands.command("record")
@needs_db
def record_cmd(version: str = typer.Argument(..., help="NAME:N, NAME@alias or NAME@alias@SITE of a promoted version."),
               out: Path | None = typer.Option(None, "--out", help="Write the HTML page here (default: "
                                               "change-record-NAME-N.html; with --json only when given)."),
               policy: Path | None = POLICY_OPT, as_json: bool = JSON_OPT) -> None:
    """Write the change record of a promoted version: what triggered it, what changed, the protocol and the
    acceptance criteria declared before the run, the verification overall and per subgroup (forest plots),
    the approvals, the impact vs the parent and vs the site's authorised baseline, the sequestration check,
    the version-control fields and the audit events with their hashes.

    The policy's gate and subgroup sections are quoted only when the policy at hand has the digest the
    decision recorded. A version never promoted has no record: exit 2. `--json` prints the record (the same
    object `decide export` carries under `change_records`)."""
    from decision.documents.change_record import change_record
    from registry import repo
    from registry.export import export_all
    from registry.session import session_scope

    with session_scope(read_only=True) as s:
        vid = repo.resolve_version_id(s, version)
        export = export_all(s)
    record = change_record(export, vid, policy=policy_at_hand(policy))
    if as_json:
        sys.stdout.write(to_json(record) + "\n")
        if out is None:
            return
    from decision.documents.change_record_html import write_record

    v = record["version"]
    path = write_record(record, out or Path(f"change-record-{v['model']}-{v['number']}.html"))
    if not as_json:
        gate = record["verification"]["gate"]
        console.print(f"change record of {esc(v['ref'])} → {esc(str(path))} "
                      f"({len(record['verification']['subgroups'])} subgroup results, "
                      f"{len(record['audit']['events'])} audit events"
                      + (f"; gate {'passed' if gate['passed'] else 'failed'}" if gate else "") + ")")
