"""`bench/registry.py` builds its reports' windows from the clock, not from a fixed date: a year of hourly
windows from 2026-01-01 made it refuse its own reports on 2026-12-06 (a window may not end in the future).
Its ingest path, imported as the bench runs it, ingests everything today, a year ahead and a year back."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cxr import clock

BENCH = Path(__file__).resolve().parents[2] / "bench" / "registry.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_registry", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("moved", [timedelta(0), timedelta(days=365), timedelta(days=-365)],
                         ids=["today", "a-year-ahead", "a-year-back"])
def test_the_registry_bench_ingests_every_report_on_any_day(bench, db_url, moved):
    bench.register_root(db_url)
    with clock.moved(moved):
        full = bench.report_lines(bench.N_REPORTS, "site-0")  # the bench's own size: every window by now
        first, last = json.loads(full[0]), json.loads(full[-1])
        now = clock.now()
        assert datetime.fromisoformat(last["window_end"]) <= now < datetime.fromisoformat(last["window_end"]) + \
            timedelta(hours=1)
        assert datetime.fromisoformat(first["window_start"]) == \
            datetime.fromisoformat(last["window_end"]) - timedelta(hours=bench.N_REPORTS)
        lines = full[-1000:]  # the newest windows, those that ran into the future
        created, _ = bench.ingest_lines(db_url, lines)
    assert created == len(lines)
