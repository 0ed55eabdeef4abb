"""Options that several command modules share, spelled once: `--json`, `--policy`, `--max-cost`; and the
note that every command needing a registry carries in its help (`needs_db`)."""

from __future__ import annotations

import typer

JSON_OPT = typer.Option(False, "--json", help="Print JSON instead of tables.")
POLICY_OPT = typer.Option(None, "--policy", help="Policy TOML (default: $DECIDE_POLICY, else the bundled default).")
MAX_COST_OPT = typer.Option(
    None, "--max-cost", help="Do not run a treatment whose expected cost exceeds this: it awaits approval."
)

NEEDS_DB = "Needs a registry (`decide init`) at the current schema (`decide db upgrade`)."


def needs_db(fn):
    """Add `NEEDS_DB` to a command's help."""
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\n" + NEEDS_DB
    return fn
