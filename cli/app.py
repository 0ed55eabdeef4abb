"""The `decide` command line: Typer app, global options, error → exit code.

Exit codes (ARCHITECTURE.md): 0 success, 1 the work ran and failed (e.g. the
gate rejected), 2 bad input or usage. A `DecideError` becomes one red line on
stderr; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
from importlib import import_module
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from cli.output import error_line
from cxr.errors import DecideError

log = logging.getLogger("decide")


class DecideGroup(TyperGroup):
    """Turns our errors into one line and the right exit code, for every subcommand."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DecideError as exc:
            if _debug(ctx):
                raise
            error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except ValidationError as exc:
            if _debug(ctx):
                raise
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "input"
            error_line(f"{field}: {err['msg']}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None


def _debug(ctx: typer.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("debug")) or os.environ.get("DECIDE_DEBUG") == "1"


app = typer.Typer(
    name="decide",
    cls=DecideGroup,
    help=(
        "cxr-decide: watch chest X-ray classifiers, pick the cheapest treatment likely to fix "
        "what went wrong, prove the fix, and keep a record an auditor can trust.\n\n"
        "Home: $DECIDE_HOME (default ./.decide) holds the registry database, blobs and caches; "
        "$DECIDE_DATABASE_URL points at PostgreSQL instead of the home's SQLite file."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    ctx: typer.Context,
    home: Path | None = typer.Option(
        None, "--home", envvar="DECIDE_HOME", help="Decide home (registry, blobs, caches).", show_default=False
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr."),
) -> None:
    ctx.obj = {"debug": debug}
    if home is not None:
        os.environ["DECIDE_HOME"] = str(home)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


# Command modules register themselves on `app`; each owns one concern.
_COMMAND_MODULES = (
    "cli.cmd_imaging",   # phantom, train, predict, import-weights
    "cli.cmd_registry",  # init, db, ingest, reports, history, show, lineage, diff, audit, ...
    "cli.cmd_decide",    # policy, plan, run, approve, reject, costs
    "cli.cmd_monitor",   # monitor run / schedule
    "cli.cmd_demo",      # demo
)

for _name in _COMMAND_MODULES:
    try:
        _mod = import_module(_name)
    except ModuleNotFoundError as _exc:  # a module not written yet
        if _exc.name != _name:
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()
