"""Nothing lost, nothing invented: the outbox and its delivery worker across outages and `kill -9`.

* A receiver on 127.0.0.1 is down for six simulated hours (the one clock, `cxr.clock`, moved in this process
  and in every worker process alike) while events keep arriving; delivery workers run as real `decide notify
  deliver` processes; one of them is killed with SIGKILL while its request hangs in a receiver that has
  taken the event but never answers. When the receiver is back and the killed worker's claim has lapsed,
  the workers deliver every event, and the receiver's idempotency check (dedupe on `webhook-id`, every
  request verified by the reference `standardwebhooks` verifier, its clock moved with ours) has taken each
  event exactly once; every attempt a worker finished is in `decide notify log --json`.
* An event exists only for a committed change: a real `decide run` stands still inside the transaction
  that registers and promotes its candidate (the `registration` failpoint) and is killed there; its
  `version.promoted` event was never visible and nothing is ever sent. The same run done to its end
  (the take-over) sends exactly one.

SQLite always, PostgreSQL too when `DECIDE_TEST_POSTGRES_URL` is set.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import standardwebhooks.webhooks as swh
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cxr import clock
from decision import notify
from registry import repo_notify
from registry.session import session_scope
from tests.faults.conftest import (  # noqa: F401 - the fault homes (a tiny registry and a real `decide run`)
    _pg_fault_template,
    _sqlite_fault_template,
    fault_home,
    fault_policy,
    fault_server,
    fault_toy_dir,
)
from tests.faults.fault_env import check_settled, check_whole, recover

ROOT = Path(__file__).resolve().parents[2]
DECIDE = Path(sys.executable).parent / "decide"
KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOUR = 3600.0
#: a `decide notify deliver --json` process whose clock reads `argv[1]` seconds ahead (the scenario's time)
WORKER = """
import sys
from datetime import timedelta

from cxr import clock

clock.set_offset(timedelta(seconds=float(sys.argv[1])))
from cli.app import main

sys.argv = ["decide", "notify", "deliver", "--json"]
main()
"""


class _ReceiverTime(datetime):
    """The reference verifier's `datetime`, reading our clock: the receiver lives in the simulated hours too,
    so a signature's timestamp is checked against the same time the worker signed it at."""

    @classmethod
    def now(cls, tz=None):
        return clock.now().astimezone(tz)


class Receiver:
    """A webhook receiver on a fixed loopback port: `down` (the port refuses connections), `hang` (it takes
    and processes the event, then never answers) or `up`. Its idempotency check processes each `webhook-id`
    once and acknowledges a repeat with 200 without processing it again."""

    def __init__(self) -> None:
        self._reserve = self._bound(0)  # bound, never listening: connections are refused
        self.port = self._reserve.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.mode = "down"
        self.arrivals: list[str] = []  # webhook-id of every request that reached us
        self.processed: dict[str, dict] = {}  # webhook-id → the verified payload, processed once
        self.refused: list[str] = []  # requests the reference verifier refused
        self.hanging = threading.Event()
        self.release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _bound(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the served connections linger in TIME_WAIT
        sock.bind(("127.0.0.1", port))
        return sock

    def _handler(self):
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                uid = headers.get("webhook-id", "")
                with rec._lock:
                    rec.arrivals.append(uid)
                    try:
                        payload = Webhook(KEY).verify(body, headers)
                    except WebhookVerificationError as exc:
                        rec.refused.append(f"{uid}: {exc}")
                        status = 400
                    else:
                        rec.processed.setdefault(uid, payload)  # the idempotency check: a repeat changes nothing
                        status = 200
                if rec.mode == "hang" and status == 200:
                    rec.hanging.set()
                    rec.release.wait(120)  # the sender dies meanwhile: this answer goes nowhere
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args) -> None:
                return

        return Handler

    def serve(self, mode: str) -> None:
        """Listen on the port, answering as `mode` says (`up` or `hang`)."""
        self.mode = mode
        if self._server is None:
            self._reserve.close()
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
            self._server.daemon_threads = True
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()

    def down(self, *, keep_port: bool = True) -> None:
        """Stop listening: every connection is refused again (the port stays ours unless `keep_port` is off)."""
        self.release.set()
        self.mode = "down"
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(30)
            self._server = None
            if keep_port:
                self._reserve = self._bound(self.port)
        elif not keep_port:
            self._reserve.close()

    def close(self) -> None:
        self.down(keep_port=False)


@pytest.fixture
def hook(monkeypatch) -> Iterator[Receiver]:
    monkeypatch.setattr(swh, "datetime", _ReceiverTime)
    r = Receiver()
    yield r
    r.close()
    clock.set_offset(timedelta(0))


def _at(hours: float) -> float:
    """Move this process's clock to the scenario's hour `hours`; return the offset in seconds."""
    clock.set_offset(timedelta(seconds=hours * HOUR))
    return hours * HOUR


def _worker(offset: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(offset)], cwd=ROOT, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _round(hours: float) -> dict:
    """One worker round, a real process, at the scenario's hour `hours`: its `--json` report."""
    proc = _worker(_at(hours))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out)


#: (hour, site, pathology): each event its own (type, site, pathology), so no grouping may merge or collapse two;
#: the one at 2.5 h is claimed (past any group wait) by the worker killed at 3 h
EVENTS = [(0.0, "site-a", "Effusion"), (0.0, "site-b", "Cardiomegaly"), (0.17, "site-a", "Atelectasis"),
          (1.0, "site-c", "Pneumothorax"), (2.5, "site-b", "Edema"), (5.0, "site-a", "Mass")]


def _enqueue(site: str, pathology: str) -> str:
    with session_scope() as s:
        return repo_notify.enqueue(s, "report.distribution_shift", site=site, pathology=pathology,
                                   summary=f"distribution shift for {pathology} at {site}",
                                   command=f"decide reports --site {site}", version="cxr:1")


@pytest.mark.slow
def test_receiver_down_six_hours_and_a_worker_killed_mid_send_lose_nothing(db_url, tmp_path, monkeypatch, hook):
    monkeypatch.setenv("DECIDE_HOME", str(tmp_path / "home"))
    t0 = clock.now()
    with session_scope() as s:
        repo_notify.add_endpoint(s, hook.url, KEY)
    uids: list[str] = []
    rounds: list[dict] = []

    def enqueue_until(hours: float) -> None:
        for h, site, pathology in EVENTS[len(uids):]:
            if h <= hours:
                _at(h)
                uids.append(_enqueue(site, pathology))

    def logged() -> list:
        with session_scope(read_only=True) as s:
            return repo_notify.list_attempts(s, limit=1000)

    # the receiver is down from hour 0 to hour 6; the worker keeps trying, events keep coming
    for hours in (0.0, 0.17, 1.0, 2.0):
        enqueue_until(hours)
        rounds.append(_round(hours))
    assert all(r["delivered"] == 0 for r in rounds)
    assert sum(r["retrying"] for r in rounds) == sum(r["attempted"] for r in rounds) > len(uids)

    # hour 3: the receiver hangs (it takes the event and never answers); the worker is killed mid-send
    enqueue_until(3.0)
    hook.serve("hang")
    killed = _worker(_at(3.0))
    assert hook.hanging.wait(60), killed.communicate(timeout=60)
    [hung] = set(hook.arrivals)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    hook.down()
    assert len(logged()) == sum(r["attempted"] for r in rounds)  # the killed worker recorded nothing
    # its claims hold for the lease: a worker two minutes later leaves those deliveries alone
    assert _round(3.03)["attempted"] == 0

    for hours in (4.0, 5.0):  # the lease lapsed: what the killed worker held is tried again (still down)
        enqueue_until(hours)
        rounds.append(_round(hours))
    assert len(uids) == len(EVENTS)
    retried = [a for a in logged() if a.event_uid == hung and a.at >= t0 + timedelta(hours=4)]
    assert retried and all(a.outcome == "retry" and a.status_code is None for a in retried)

    # hour 6: the receiver is back; every step of the schedule after a failure before hour 6 lands by hour 18
    hook.serve("up")
    for hours in (6.02, 7.0, 9.0, 12.0, 19.0):
        rounds.append(_round(hours))
    assert _round(45.0)["attempted"] == 0  # everything delivered: nothing more is sent

    # the receiver's idempotency check took every event exactly once, each verified by the reference library
    assert hook.refused == []
    assert set(hook.processed) == set(uids) and len(hook.processed) == len(EVENTS)
    assert Counter(hook.arrivals) == {**dict.fromkeys(uids, 1), hung: 2}  # at least once: the hung one twice
    for uid, payload in hook.processed.items():
        assert payload["data"]["event_id"] == uid and payload["type"] == "report.distribution_shift"
    assert {p["data"]["pathology"] for p in hook.processed.values()} == {p for _, _, p in EVENTS}

    # every attempt a worker finished is in the log: failures while down, one delivery per event after
    _at(0.0)
    log = subprocess.run([str(DECIDE), "notify", "log", "--json", "--limit", "1000"], cwd=ROOT,
                         env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert log.returncode == 0, log.stderr[-4000:]
    attempts = json.loads(log.stdout)
    assert len(attempts) == sum(r["attempted"] for r in rounds)
    back = t0 + timedelta(hours=6)
    delivered = [a for a in attempts if a["outcome"] == "delivered"]
    assert sorted(a["event_uid"] for a in delivered) == sorted(uids)
    assert all(a["status_code"] == 200 and datetime.fromisoformat(a["at"]) >= back for a in delivered)
    before = [a for a in attempts if datetime.fromisoformat(a["at"]) < back]
    assert before and all(a["outcome"] == "retry" and a["status_code"] is None and a["error"] for a in before)
    assert {a["event_uid"] for a in attempts} == set(uids)


def _events(url: str) -> list:
    with session_scope(url, read_only=True) as s:
        return repo_notify.list_events(s)


@pytest.mark.slow
@pytest.mark.xdist_group("faults")  # beside tests/faults/, whose session templates it shares under xdist
def test_an_event_exists_only_for_a_committed_change(fault_home, tmp_path, monkeypatch):  # noqa: F811 - imported
    monkeypatch.setattr(swh, "datetime", _ReceiverTime)
    hook = Receiver()
    hook.serve("up")
    go = tmp_path / "go"
    try:
        with session_scope(fault_home.url) as s:
            repo_notify.add_endpoint(s, hook.url, KEY)
        notify.deliver(fault_home.url)  # what the home's history holds (its baseline's promotion) is sent first
        before, sent = _events(fault_home.url), len(hook.arrivals)
        # a real `decide run` stops inside the transaction that registers its candidate and moves `production`
        child = fault_home.start("run", "--yes", failpoints=f"registration=wait:{go}")
        waiting = Path(f"{go}.waiting")
        for _ in range(6000):
            if waiting.exists() or not child.alive():
                break
            time.sleep(0.05)
        assert waiting.exists(), child.wait().stdout[-4000:]
        assert waiting.read_text().startswith("registration ")
        assert _events(fault_home.url) == before  # its version.promoted is written, not committed: invisible
        os.kill(child.pid, signal.SIGKILL)  # between the change and its commit
        assert child.wait().returncode == -signal.SIGKILL

        left = check_whole(fault_home)
        assert left.production == "cxr:1" and [v.version for v in left.versions] == [1]
        assert _events(fault_home.url) == before
        out = notify.deliver(fault_home.url)
        assert (out.fanned_out, out.attempted) == (0, 0) and len(hook.arrivals) == sent

        # the same change, committed this time (the take-over): exactly one event more, sent and verified
        recover(fault_home)
        check_settled(fault_home, left.reports[0].id)
        new = [e for e in _events(fault_home.url) if e not in before]
        assert [(e.type, e.payload["version"], e.payload["previous"]) for e in new] == [
            ("version.promoted", "cxr:2", "cxr:1")]
        assert notify.deliver(fault_home.url).delivered == 1
        assert hook.arrivals[sent:] == [new[0].uid] and new[0].uid in hook.processed and hook.refused == []
    finally:
        go.touch()
        hook.close()
