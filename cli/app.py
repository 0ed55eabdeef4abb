"""The `decide` command line: Typer app, global options, error → exit code.

Exit codes (ARCHITECTURE.md): 0 success, 1 the work ran and failed (e.g. the
gate rejected), 2 bad input or usage. A `DecideError` becomes one red line on
stderr; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

import typer
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
        except ValueError as exc:  # pydantic's ValidationError (pydantic itself is imported only when used)
            if _debug(ctx) or type(exc).__module__.partition(".")[0] not in ("pydantic", "pydantic_core"):
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


def _new_app() -> typer.Typer:
    return typer.Typer(
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


app = _new_app()


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
    "cli.cmd_footprint", # export-onnx
    "cli.cmd_analyze",   # analyze exclusivity / channels / figures, report (per-study clinical report)
)

#: each command module's commands and groups, registered once on a Typer of its own
_MODULE_APPS: dict[str, typer.Typer] = {}
#: top-level command or group name → the module that defines it
_OWNER: dict[str, str] = {}

for _name in _COMMAND_MODULES:
    try:
        _mod = import_module(_name)
    except ModuleNotFoundError as _exc:  # a module not written yet
        if _exc.name != _name:
            raise
        continue
    _part = _MODULE_APPS[_name] = typer.Typer()
    _mod.register(_part)
    for _info in _part.registered_commands:
        _OWNER[_info.name or _info.callback.__name__.replace("_", "-")] = _name
    for _group in _part.registered_groups:
        _OWNER[_group.name or _group.typer_instance.info.name] = _name
    app.registered_commands.extend(_part.registered_commands)
    app.registered_groups.extend(_part.registered_groups)

_GLOBAL_FLAGS = {"--debug", "--verbose", "-v"}


def command_word(argv: list[str]) -> str | None:
    """The command named on a `decide` command line (after the global options), or None."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--home":
            i += 2
        elif arg.startswith("--home=") or arg in _GLOBAL_FLAGS:
            i += 1
        else:
            return None if arg.startswith("-") else arg
    return None


def app_for(argv: list[str]) -> typer.Typer:
    """`app`, or for a known command an app holding only its module's commands.

    Typer turns every registered command into a click command each time it starts (about a
    fifth of a second for all of them on a busy two-core machine): `decide reports` builds
    the registry module's commands only. Unknown words and `--help` get the whole app.
    """
    owner = _OWNER.get(command_word(argv) or "")
    if owner is None:
        return app
    one = _new_app()
    one.callback()(_root)
    one.registered_commands.extend(_MODULE_APPS[owner].registered_commands)
    one.registered_groups.extend(_MODULE_APPS[owner].registered_groups)
    return one


def main() -> None:
    app_for(sys.argv[1:])()
