"""PostgreSQL: the worker's connection terminated by the server (`pg_terminate_backend` from another
connection, as an administrator, a failover or an idle-session killer would).

* Mid-transaction: the worker holds the registration transaction open (`registration=wait:PATH`:
  version, evaluations, run record, alias move and audit events written, not committed; the audit
  head row locked). Its backend is terminated, then the worker goes on: its commit fails, the server
  has rolled everything back, the run is recorded `failed` with the reason on a new connection, the
  report is open again, and the next pass resolves it.
* During a treatment (`in_treatment=wait:PATH`): every connection of the worker is terminated while
  its treatment runs; the pool notices the dead connections (`pool_pre_ping`) and the run ends as if
  nothing had happened.
"""

from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from registry.entities import DecisionStatus, ReportStatus, RunOutcome
from tests.faults.fault_env import check_settled, check_whole, recover

PG_ENV = "DECIDE_TEST_POSTGRES_URL"
APP = "decide-fault-worker"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults"),
              pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"needs PostgreSQL ({PG_ENV})"),
              pytest.mark.parametrize("fault_home", ["postgres"], indirect=True)]


def _wait_for(what: str, check, child, limit: float = 180.0):
    """Poll `check()` until truthy; fail (never hang) if the worker exited first or `limit` passed."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        if not child.alive():
            pytest.fail(f"the worker exited before {what}:\n{child.wait().stdout[-4000:]}")
        time.sleep(0.1)
    pytest.fail(f"gave up waiting for {what} (worker pid {child.pid})")


def _backends(fh) -> list[tuple[int, str]]:
    """The worker's server processes on this database: (pid, state)."""
    db = make_url(fh.url).database
    engine = create_engine(os.environ[PG_ENV], isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(text(
                "SELECT pid, state FROM pg_stat_activity WHERE datname = :db AND application_name = :app"),
                {"db": db, "app": APP})]
    finally:
        engine.dispose()


def _terminate(pids: list[int]) -> None:
    engine = create_engine(os.environ[PG_ENV], isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            for pid in pids:
                assert c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    finally:
        engine.dispose()


def _start_waiting(fh, point: str, release):
    url = make_url(fh.url).update_query_dict({"application_name": APP}).render_as_string(hide_password=False)
    child = fh.start("run", "--yes", failpoints=f"{point}=wait:{release}", DECIDE_DATABASE_URL=url)
    _wait_for(f"the worker to stop at {point}", lambda: os.path.exists(f"{release}.waiting"), child)
    return child


def test_connection_terminated_mid_transaction(fault_home, tmp_path):
    release = tmp_path / "release"
    child = _start_waiting(fault_home, "registration", release)
    [(pid, _state)] = _wait_for("the open registration transaction",
                               lambda: [b for b in _backends(fault_home) if b[1] == "idle in transaction"], child)
    _terminate([pid])
    release.touch()
    proc = child.wait()
    assert proc.returncode == 1, proc.stdout[-4000:]  # the work ran and failed; no traceback
    assert "Traceback" not in proc.stdout, proc.stdout[-4000:]
    st = check_whole(fault_home)
    [run] = st.runs
    assert run.outcome == RunOutcome.failed and "recording the candidate failed" in run.error_text, run
    assert [v.version for v in st.versions] == [1] and st.production == "cxr:1"  # rolled back by the server
    assert [d.status for d in st.decisions] == [DecisionStatus.exhausted]
    assert [r.status for r in st.reports] == [ReportStatus.open]
    recover(fault_home)
    check_settled(fault_home, 1)


def test_connections_terminated_during_a_treatment(fault_home, tmp_path):
    release = tmp_path / "release"
    child = _start_waiting(fault_home, "in_treatment", release)
    pids = [pid for pid, _state in _wait_for("the worker's connections", lambda: _backends(fault_home), child)]
    _terminate(pids)
    release.touch()
    proc = child.wait()
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert not set(pids) & {pid for pid, _ in _backends(fault_home)}
    st = check_settled(fault_home, 1)
    assert [r.outcome for r in st.runs] == [RunOutcome.accepted]
