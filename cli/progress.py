"""Progress on stderr, fed by the library's plain progress callbacks.

In a terminal: rich progress bars (epochs and batches, feature extraction) and a
live status line for long steps. Anywhere else (a pipe, a CI log, a file): plain
lines, one per finished epoch or step and a few per long loop, because a bar that
only prints when it ends tells a log reader nothing while the work runs.

A treatment can run for minutes: `decide run`, `decide monitor run` and `decide demo`
print a line when each one starts and when it ends (`engine_progress`), by default;
`decide -q` silences them, and the epoch lines of `decide train` (`quiet(ctx)`); errors still print.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cli.output import err_console, esc, real_console

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from typer import Context

#: plain mode: a long loop reports at most this often (seconds), and when it ends
PLAIN_EVERY_S = 10.0


def quiet(ctx: Context) -> bool:
    """`decide -q` was given on the command line that `ctx` runs."""
    return bool((ctx.find_root().obj or {}).get("quiet"))


def make_progress(transient: bool = False, console: Console | None = None) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=real_console(console or err_console),
        transient=transient,
    )


def _plain(console: Console, text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


@contextmanager
def train_progress(epochs: int, enabled: bool = True, console: Console | None = None) -> Iterator:
    """Yield a `progress(phase, done, total, info)` callback: epoch and batch bars, or a line per epoch."""
    con = console or err_console
    if not enabled:
        yield None
        return
    if not con.is_terminal:
        def line(phase: str, done: int, total: int, info: dict) -> None:
            if phase == "epoch":
                _plain(con, f"epoch {done}/{total}: loss {info['loss']:.4f}, {info['images_per_s']:.0f} img/s, "
                            f"{info['seconds']:.1f}s")

        yield line
        return
    with make_progress(console=con) as prog:
        ep = prog.add_task("epochs", total=epochs, info="")
        bt = prog.add_task("batches", total=1, info="")

        def cb(phase: str, done: int, total: int, info: dict) -> None:
            if phase == "batch":
                prog.update(bt, completed=done, total=total, info=f"epoch {info['epoch']} loss {info['loss']:.4f}")
            else:
                prog.update(ep, completed=done, info=f"{info['images_per_s']:.0f} img/s")

        yield cb


@contextmanager
def batch_progress(description: str, enabled: bool = True, console: Console | None = None) -> Iterator:
    """Yield a `progress(done, total)` callback for one loop (e.g. feature extraction): a bar, or a few lines."""
    con = console or err_console
    if not enabled:
        yield None
        return
    if not con.is_terminal:
        last = [float("-inf")]  # the first update is shown: the loop has started

        def line(done: int, total: int) -> None:
            now = time.monotonic()
            if done >= total or now - last[0] >= PLAIN_EVERY_S:
                last[0] = now
                _plain(con, f"{description}: {done}/{total}")

        yield line
        return
    with make_progress(transient=True, console=con) as prog:
        task = prog.add_task(description, total=None, info="")

        def cb(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield cb


@contextmanager
def step_reporter(enabled: bool = True, console: Console | None = None) -> Iterator[Callable[[str, str], None]]:
    """Yield a `say(step, detail)` callback: a timestamped line per step, and in a terminal a live status
    line (spinner, the running step, seconds in it) so that a quiet minute never looks like a hang."""
    con = console or err_console
    t0 = time.perf_counter()
    if not enabled:
        yield lambda step, detail: None
        return

    def line(step: str, detail: str) -> None:
        _plain(con, f"[dim]{time.perf_counter() - t0:6.1f}s[/] [bold]{esc(step)}[/] {esc(detail)}")

    if not con.is_terminal:
        yield line
        return
    with con.status("starting") as status:
        def say(step: str, detail: str) -> None:
            line(step, detail)
            status.update(f"[bold]{esc(step)}[/] {esc(detail)} [dim](since {time.perf_counter() - t0:.0f}s)[/]")

        yield say


@contextmanager
def engine_progress(enabled: bool = True, console: Console | None = None) -> Iterator[Callable[[str], None]]:
    """Yield the decision engine's `progress(line)` (`Engine.progress`): a timestamped `treat` line as each
    treatment starts and ends (elapsed, outcome, gate summary), plain off a terminal, with a live status
    line on one."""
    with step_reporter(enabled=enabled, console=console) as say:
        yield lambda line: say("treat", line)
