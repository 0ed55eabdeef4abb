"""The `decide` command line: Typer app, global options, error → exit code, help as paragraphs.

Exit codes (ARCHITECTURE.md): 0 success, 1 the work ran and failed (e.g. the
gate rejected), 2 bad input or usage. A `DecideError` becomes one red line on
stderr; `--debug` shows the traceback instead.

Each `cli.cmd_*` module holds one concern's commands on a Typer of its own
(`commands`); this module merges them into `app`. They import only what
`decide --help` needs at the top and the rest inside the commands that use it,
so that a command that never touches a model starts without torch, and
`decide --help` without SQLAlchemy or pydantic (tests/cli/test_fast_cli.py).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import typer
from typer.core import TyperGroup

from cli import (
    cmd_analyze,
    cmd_audit,
    cmd_decide,
    cmd_demo,
    cmd_footprint,
    cmd_imaging,
    cmd_monitor,
    cmd_notify,
    cmd_record,
    cmd_registry,
)
from cli.output import error_line
from cxr.errors import DecideError

log = logging.getLogger("decide")


def paragraphs(text: str | None) -> str | None:
    """`text` (a docstring or `help=`) with the lines of each paragraph joined by spaces.

    Source is wrapped for the editor (up to 120 columns); rich wraps help again for the terminal
    and keeps every line break it is given, so a docstring line longer than the terminal ended in a
    two-word line, mid-sentence. Joined, a paragraph is wrapped once, at the terminal's width.
    Paragraphs are separated by a blank line; one that starts with click's `\\b` is kept as written.
    """
    if not text:
        return text
    import inspect

    paras = re.split(r"\n[ \t]*\n", inspect.cleandoc(text))
    return "\n\n".join(p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines())
                       for p in paras)


class DecideGroup(TyperGroup):
    """Turns our errors into one line and the right exit code, for every subcommand; reflows every
    command's and group's help into paragraphs (`paragraphs`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _reflow(self)

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


def _reflow(cmd: Any) -> None:  # a click Command or Group (typer vendors click)
    cmd.help = paragraphs(cmd.help)
    for sub in getattr(cmd, "commands", {}).values():
        _reflow(sub)


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
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress lines on stderr (a line per treatment's start and end, steps, "
        "epochs); errors still print."),
) -> None:
    ctx.obj = {"debug": debug, "quiet": quiet}
    if home is not None:
        os.environ["DECIDE_HOME"] = str(home)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


#: each module owns one concern
_COMMAND_MODULES = (
    cmd_imaging,    # phantom, train, predict, explain, import-weights
    cmd_registry,   # init, db, register, ingest, reports, history, show, lineage, diff, rollback, unpin, gc
    cmd_audit,      # audit verify / log, export, schema
    cmd_decide,     # policy, plan, run, decisions, approve, reject, labels, costs
    cmd_monitor,    # monitor run / schedule / schedules / passes / drift / unschedule
    cmd_demo,       # demo
    cmd_footprint,  # export-onnx
    cmd_analyze,    # analyze exclusivity / channels / figures, findings (per-study clinical document)
    cmd_notify,     # notify add / list / remove / rotate / test / deliver / log / redeliver
    cmd_record,     # record (the change record of a promoted version)
)

#: top-level command or group name → the module that defines it
_OWNER: dict[str, ModuleType] = {}

for _mod in _COMMAND_MODULES:
    for _info in _mod.commands.registered_commands:
        _OWNER[_info.name or _info.callback.__name__.replace("_", "-")] = _mod
    for _group in _mod.commands.registered_groups:
        _OWNER[_group.name or _group.typer_instance.info.name] = _mod
    app.registered_commands.extend(_mod.commands.registered_commands)
    app.registered_groups.extend(_mod.commands.registered_groups)

_GLOBAL_FLAGS = {"--debug", "--verbose", "-v", "--quiet", "-q"}


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
    one.registered_commands.extend(owner.commands.registered_commands)
    one.registered_groups.extend(owner.commands.registered_groups)
    return one


def main() -> None:
    app_for(sys.argv[1:])()
