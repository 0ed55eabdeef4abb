"""The rich side of `cli.output`: a console that fits tables to the terminal instead of truncating them.

Imported on first use (rich costs every command a tenth of a second to import, and `--json` never
draws): `cli.output.console` and `err_console` make their FittingConsole here when first touched.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

_UNBOUNDED = 10**6


def _measure(console: Console, options: ConsoleOptions, renderable: Any) -> Measurement:
    return Measurement.get(console, options, renderable if renderable is not None else "")


def fit_table(table: Table, console: Console, width: int | None = None) -> RenderableType:
    """`table` as it is, with word-keeping column widths, or as records: whichever fits `width` first."""
    width = width or console.width
    options = console.options.update(width=_UNBOUNDED, max_width=_UNBOUNDED)
    natural = _measure(console, options, table)
    if natural.maximum <= width or not table.columns:
        return table
    lo, hi = [], []
    for col in table.columns:
        cells = [col.header, *col.cells]
        if not all(isinstance(c, str | Text) for c in cells):  # nested renderables: let rich lay it out
            return table
        sizes = [_measure(console, options, c) for c in cells]
        lo.append(max(m.minimum for m in sizes))
        hi.append(max(m.maximum for m in sizes))
    chrome = natural.maximum - sum(hi)  # borders and padding
    spare = width - chrome - sum(lo)
    if spare < 0:
        return _records(table, console, width)
    want = [h - m for m, h in zip(lo, hi, strict=True)]
    total = sum(want) or 1
    widths = [m + min(w, spare * w // total) for m, w in zip(lo, want, strict=True)]
    for col, w in zip(table.columns, widths, strict=True):
        col.width, col.no_wrap, col.overflow = max(1, w), False, "fold"
    return table


def _records(table: Table, console: Console, width: int) -> RenderableType:
    """One block per row: `column value · column value …`, a pair never split across lines (no cell is cut)."""
    headers = [Text.from_markup(h) if isinstance(h, str) else h.copy() for h in (c.header for c in table.columns)]
    columns = [list(c.cells) for c in table.columns]
    n = max((len(c) for c in columns), default=0)
    parts: list[RenderableType] = []
    if table.title:
        title = Text.from_markup(table.title) if isinstance(table.title, str) else table.title.copy()
        title.stylize("bold")
        parts.append(title.append(f"  ({n} row{'s' if n != 1 else ''}, one block each)", style="dim"))
    for i in range(n):
        pairs = []
        for head, cells in zip(headers, columns, strict=True):
            cell = cells[i] if i < len(cells) else ""
            value = console.render_str(cell) if isinstance(cell, str) else cell.copy()
            if value.plain.strip():
                label = head.copy()
                label.stylize("dim")
                pairs.append(Text.assemble(label, " ", value))
        line = Text("• ")
        for pair in pairs:
            if len(line) > 2 and len(line) + 3 + len(pair) > width:
                parts.append(line)
                line = Text("  ")
            elif len(line) > 2:
                line.append(" · ", style="dim")
            line.append_text(pair)
        parts.append(line)
    if table.caption:
        parts.append(Text.from_markup(table.caption) if isinstance(table.caption, str) else table.caption)
    return Group(*parts)


class FittingConsole(Console):
    """A rich Console whose `print` fits tables to the terminal instead of truncating their cells."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().print(*(fit_table(o, self) if isinstance(o, Table) else o for o in objects), **kwargs)
