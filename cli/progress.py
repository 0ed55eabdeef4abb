"""Rich progress bars fed by the library's plain progress callbacks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cli.output import err_console


def make_progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


@contextmanager
def train_progress(epochs: int, enabled: bool = True) -> Iterator:
    """Yield a `progress(phase, done, total, info)` callback drawing epoch and batch bars."""
    if not enabled:
        yield None
        return
    with make_progress() as prog:
        ep = prog.add_task("epochs", total=epochs, info="")
        bt = prog.add_task("batches", total=1, info="")

        def cb(phase: str, done: int, total: int, info: dict) -> None:
            if phase == "batch":
                prog.update(bt, completed=done, total=total, info=f"epoch {info['epoch']} loss {info['loss']:.4f}")
            else:
                prog.update(ep, completed=done, info=f"{info['images_per_s']:.0f} img/s")

        yield cb


@contextmanager
def batch_progress(description: str, enabled: bool = True) -> Iterator:
    """Yield a `progress(done, total)` callback for one bar."""
    if not enabled:
        yield None
        return
    with make_progress(transient=True) as prog:
        task = prog.add_task(description, total=None, info="")

        def cb(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield cb
