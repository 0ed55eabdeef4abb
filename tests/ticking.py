"""A budget clock for tests: each reading is `step` seconds after the last, so training "takes" time without waiting.

`cxr.train.budget_clock` is read once when a `Budget` starts and once after every epoch; put a `Ticking(100)`
there (monkeypatch) and every epoch takes exactly 100 s by that clock. It starts at the one clock's now
(`cxr.clock`), so nothing depends on the calendar.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cxr import clock


class Ticking:
    def __init__(self, step_s: float) -> None:
        self.step = timedelta(seconds=step_s)
        self.next = clock.now()
        self.readings = 0

    def __call__(self) -> datetime:
        self.readings += 1
        now, self.next = self.next, self.next + self.step
        return now
