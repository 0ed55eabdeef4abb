"""Terminal output helpers: one console, `--json` emission, error lines, tables that fit.

`rich` lives only in `cli/`. Commands build plain data first, then either dump
it as JSON (`--json`, stable for scripts) or render it as a table.

Tables never truncate: rich squeezes a table that is too wide by cutting cells
("Atele…", "false_…"). The consoles here fit every table they print to the
terminal instead (`fit_table`): as it is when it fits; else with column widths
that keep every word whole (text wraps between words); else, when even that is
too wide, as records — one block per row, `column value · column value …`,
wrapped at the terminal's width (psql's expanded display, made compact).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table as RichTable


class _LazyConsole:
    """A `FittingConsole` made on first use: every attribute goes to it (`print`, `status`, `capture`, ...)."""

    __slots__ = ("_real", "_stderr")

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._real: Console | None = None

    def real(self) -> Console:
        if self._real is None:
            from cli.rich_console import FittingConsole

            self._real = FittingConsole(stderr=self._stderr)
        return self._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


console: Any = _LazyConsole(stderr=False)
err_console: Any = _LazyConsole(stderr=True)


def real_console(con: Any) -> Console:
    """The rich Console behind `con` (for rich APIs that need the object itself, e.g. `Progress(console=)`)."""
    return con.real() if isinstance(con, _LazyConsole) else con


def Table(*columns: str, right: Collection[str] = (), fold: bool = False, **kwargs: Any) -> RichTable:
    """A `rich.table.Table(**kwargs)` with these column headers, left-justified but for those in `right`;
    `fold`: long cells fold instead of ending in "…" (rich is imported when the first table is drawn)."""
    from rich.table import Table as RichTable

    table = RichTable(**kwargs)
    for c in columns:
        table.add_column(c, justify="right" if c in right else "left", **({"overflow": "fold"} if fold else {}))
    return table


def _default(o: Any) -> Any:
    if isinstance(o, datetime | date):
        return o.isoformat()
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "__dataclass_fields__"):
        return {k: getattr(o, k) for k in o.__dataclass_fields__}
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=_default, allow_nan=False, sort_keys=False)


def emit(data: Any, as_json: bool, render: Callable[[], None]) -> None:
    """Print `data` as JSON on stdout when `as_json`, else call `render()`."""
    if as_json:
        sys.stdout.write(to_json(data) + "\n")
        sys.stdout.flush()
    else:
        render()


def error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {esc(message)}", highlight=False, soft_wrap=True)


def esc(text: object) -> str:
    """Text from data (paths, gate checks like `noninferiority[Effusion]`) is not rich markup."""
    from rich.markup import escape

    return escape(str(text))


def fmt_float(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"
