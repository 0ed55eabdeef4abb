"""Notifications: what the outbox costs the decision loop.

    python bench/notify.py [--quick] [--json] [--pg-url URL] [--passes N]

Figures:
* enqueue, on SQLite and PostgreSQL (goal: p99 < 10 ms): writing one event is one row insert in the
  transaction of the change it reports. `in_txn`: `repo_notify.enqueue` + flush inside an open
  transaction (what a change's transaction pays more); `own_txn`: a transaction holding only that event,
  commit included (the upper bound). PostgreSQL at `--pg-url` (default the local test server): a
  throw-away database is created and dropped; if the server is down, that part is skipped with a message.
* pass: `Engine.run_pass` on one fresh report (a `tiny` DenseNet on phantom films, features cached, a
  head-level treatment that the gate accepts: plan, treat, evaluate, gate, register, promote — and the
  `version.promoted` event it writes) in two copies of one registry: `none` with no webhook endpoint,
  `three` with three — one answers at once, one after `SLOW_S`, one a loopback port nobody listens on
  (refused: retried with backoff). The two alternate in the same run (A B B A …, so that drift on a
  shared machine falls on both); after each pass the delivery round the scheduler runs
  (`decision.notify.deliver`, here without the policy's grouping, so that each round sends its pass's
  event at once) is timed apart. Goal: the median of the paired relative differences (each
  pass with three endpoints against its neighbour in time with none) within 5 %, in wall time; the
  process's CPU time is shown beside it. Sending never slows the loop: the delivery round is where the
  slow and the dead endpoint cost time.

Report windows are one day each, the last ending at the start of today by the one clock (`cxr.clock`),
so the bench runs on any day and with the clock moved.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import _common

from cxr import clock
from registry import repo_notify
from registry.session import dispose_engines, session_scope, upgrade

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
KEY = "whsec_" + "QmVuY2htYXJrS2V5Rm9yTm90aWZpY2F0aW9uczEyMzQ="  # 32 bytes; a bench key, signs nothing real
SLOW_S = 0.25
PATHOLOGY = "Effusion"  # common enough in the phantom's NIH labels for calibration to certify its recall
GOAL_ENQUEUE_P99_MS = 10.0
GOAL_PASS_DIFF = 0.05


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _ms(xs: list[float]) -> dict:
    return {"p50_ms": round(_pct(xs, 0.5) * 1e3, 3), "p99_ms": round(_pct(xs, 0.99) * 1e3, 3),
            "max_ms": round(max(xs) * 1e3, 3), "n": len(xs)}


# -- enqueue -------------------------------------------------------------------------------
def bench_enqueue(url: str, n: int) -> dict:
    """Time `n` enqueues each way on the registry at `url` (migrated here)."""
    upgrade(url)
    for _ in range(20):  # warm the pool and the statement cache
        with session_scope(url) as s:
            repo_notify.enqueue(s, "version.promoted", summary="warm-up", command="decide history cxr")
    in_txn, own_txn = [], []
    for i in range(n):
        with session_scope(url) as s:
            t = time.perf_counter()
            repo_notify.enqueue(s, "report.distribution_shift", site=f"site-{i % 3}", pathology="Effusion",
                                summary=f"distribution shift {i}", command="decide reports", report_id=i,
                                version="cxr:1")
            s.flush()
            in_txn.append(time.perf_counter() - t)
        t = time.perf_counter()
        with session_scope(url) as s:
            repo_notify.enqueue(s, "version.promoted", site="site-a", summary=f"cxr:{i} promoted",
                                command="decide history cxr", version=f"cxr:{i}")
        own_txn.append(time.perf_counter() - t)
    return {"in_txn": _ms(in_txn), "own_txn": _ms(own_txn)}


def bench_enqueue_pg(pg_url: str, n: int) -> dict | str:
    """The same on a throw-away PostgreSQL database; a message instead when the server cannot be reached."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin_url = make_url(pg_url)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"decide_bench_notify_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as c:
            version = c.execute(text("SHOW server_version")).scalar()
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        return f"skipped: PostgreSQL at {admin_url.render_as_string(hide_password=True)} is not reachable " \
               f"({str(exc.orig).strip().splitlines()[0] if exc.orig else exc})"
    try:
        out = bench_enqueue(admin_url.set(database=name).render_as_string(hide_password=False), n)
        return {**out, "server_version": version}
    finally:
        dispose_engines()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- receivers -----------------------------------------------------------------------------
class Receivers:
    """Three loopback endpoints: `ok` answers 200 at once, `slow` after SLOW_S, `down` refuses connections
    (a port bound and never listened on)."""

    def __init__(self) -> None:
        def handler(delay: float):
            class Handler(BaseHTTPRequestHandler):
                def do_POST(self) -> None:
                    self.rfile.read(int(self.headers.get("content-length", 0)))
                    time.sleep(delay)
                    self.send_response(200)
                    self.send_header("content-length", "0")
                    self.end_headers()

                def log_message(self, *args) -> None:
                    return

            return Handler

        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler(d)) for d in (0.0, SLOW_S)]
        for srv in self.servers:
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.down = socket.socket()
        self.down.bind(("127.0.0.1", 0))
        ok, slow = (f"http://127.0.0.1:{srv.server_address[1]}/hook" for srv in self.servers)
        self.urls = {"ok": ok, "slow": slow, "down": f"http://127.0.0.1:{self.down.getsockname()[1]}/hook"}

    def close(self) -> None:
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        self.down.close()


# -- the decision loop's pass ----------------------------------------------------------------
def _phantom(site: str, split: str, n: int):
    from cxr.data import phantom_dataset
    from cxr.phantom import PhantomConfig

    src = {"kind": "phantom", "site": site, "split": split, "n": n, "resolution": 32, "seed": 0,
           "missing_sign_rate": 0.1}
    return phantom_dataset(PhantomConfig(site=site, split=split, n=n, resolution=32), workers=1), src


def build_home(home: Path) -> tuple[str, object]:
    """A registry with a `tiny` baseline in production, its data sets and a week of site-b feedback;
    return (url, feedback data set)."""
    from cxr.spec import preset
    from cxr.train import TrainConfig, train
    from cxr.weights import to_bytes
    from decision.baseline import DataBinding, register_baseline
    from decision.catalog import record_dataset
    from policies import load_policy
    from registry.session import init_registry

    url = f"sqlite:///{home / 'registry.db'}"
    init_registry(url)
    tr, cal, ev = (_phantom("site-a", "train", 400), _phantom("site-a", "calibration", 1000),
                   _phantom("site-b", "evaluation", 600))
    spec = preset("tiny")
    model = train(spec, tr[0], TrainConfig(epochs=1, batch_size=32, threads=1)).model
    _, weights = to_bytes(spec, model.state_dict())
    register_baseline(url, home, "cxr", weights, [DataBinding(tr[0], "train", tr[1]),
                      DataBinding(cal[0], "calibration", cal[1]), DataBinding(ev[0], "evaluation", ev[1])],
                      load_policy())
    fb = _phantom("site-b", "feedback", 300)
    with session_scope(url) as s:
        record_dataset(s, fb[0], "feedback", fb[1])
    return url, fb[0]


def _report(day, feedback, version: int) -> dict:
    col = list(feedback.label_names).index(PATHOLOGY)
    negatives = [feedback.image_ids[k] for k in range(len(feedback)) if feedback.labels[k, col] == 0][:40]
    return {"model": "cxr", "version": version, "pathology": PATHOLOGY, "kind": "false_positives", "metric": "fpr",
            "value": 0.8, "target": 0.7, "site": "site-b", "window_start": day, "window_end": day + timedelta(days=1),
            "counts": {"tp": 5, "fp": 60, "tn": 15, "fn": 1},
            "cases": [{"image_id": i, "score": 0.9, "label": 0} for i in negatives]}


class NudgeHead:
    """A head-level treatment that always helps a little: the head's bias moved by 1e-6 (a new weights blob
    to write) and the parent's operating points, which meet the report's target already — so every pass
    goes the whole way: plan, treat, evaluate, gate (accepted), register, promote, and its event."""

    name = "nudge_head"
    fixes = frozenset({"false_positives"})
    head_only = True

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        import numpy as np

        from treatments.base import TreatmentResult

        bias = np.asarray(ctx.head_bias, dtype=np.float32) + np.float32(1e-6)
        return TreatmentResult(thresholds=dict(ctx.thresholds), head_bias=bias, notes="bench: nudged head")


POLICY = """\
name = "bench-notify"
[treatments.nudge_head]
prior_cost = 0.1
fixes = ["false_positives"]
p_success_default = 0.9
[slos.default]
"""


def bench_passes(tmp: Path, passes: int) -> tuple[list[dict], dict]:
    """Alternate timed passes (and the delivery round after each) between `none` and `three`."""
    import tomllib

    from decision.engine import Engine
    from decision.error_reports import ingest, parse_report
    from decision.notify import deliver
    from policies import parse_policy
    from registry import repo

    home_none, home_three = tmp / "none", tmp / "three"
    home_none.mkdir()
    os.environ["DECIDE_HOME"] = str(home_none)
    url_none, feedback = build_home(home_none)
    dispose_engines()  # the WAL is checkpointed into the file before the copy
    shutil.copytree(home_none, home_three)
    url_three = f"sqlite:///{home_three / 'registry.db'}"
    receivers = Receivers()
    with session_scope(url_three) as s:
        for url in receivers.urls.values():
            repo_notify.add_endpoint(s, url, KEY, actor="bench")
    policy = parse_policy(tomllib.loads(POLICY))
    plugin = {NudgeHead.name: NudgeHead()}
    arms = {"none": (url_none, Engine(url_none, home_none, policy, plugins=plugin)),
            "three": (url_three, Engine(url_three, home_three, policy, plugins=plugin))}
    times: dict[str, dict[str, list[float]]] = {a: {"pass": [], "cpu": [], "deliver": []} for a in arms}
    counts = {a: {"events": 0, "delivered": 0, "retrying": 0, "outcomes": set()} for a in arms}
    today = clock.now().replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=passes + 1)  # one day per report, the last ending at the start of today
    try:
        for i in range(passes + 1):  # pass 0 of each arm warms the feature cache: not timed
            order = ("none", "three") if i % 2 == 0 else ("three", "none")
            for arm in order:
                url, engine = arms[arm]
                os.environ["DECIDE_HOME"] = str(engine.home)
                with session_scope(url) as s:
                    serving = repo.resolve_version(s, "cxr@production").version
                    ingest(s, [parse_report(_report(first + timedelta(days=i), feedback, serving))])
                t, c = time.perf_counter(), time.process_time()
                summary = engine.run_pass(limit=1)
                dt_pass, dt_cpu = time.perf_counter() - t, time.process_time() - c
                t = time.perf_counter()
                out = deliver(url)
                dt_deliver = time.perf_counter() - t
                if i:
                    times[arm]["pass"].append(dt_pass)
                    times[arm]["cpu"].append(dt_cpu)
                    times[arm]["deliver"].append(dt_deliver)
                counts[arm]["delivered"] += out.delivered
                counts[arm]["retrying"] += out.retrying
                counts[arm]["outcomes"] |= {r.outcome.value for d in summary.decisions for r in d.runs}
        for arm, (url, _) in arms.items():
            with session_scope(url, read_only=True) as s:
                counts[arm]["events"] = len(repo_notify.list_events(s, limit=100_000))
    finally:
        receivers.close()
        dispose_engines()
    rows = []
    for arm in arms:
        p, d = times[arm]["pass"], times[arm]["deliver"]
        rows.append({"arm": arm, "endpoints": 0 if arm == "none" else 3, "passes": len(p),
                     "pass_median_s": round(statistics.median(p), 4), "pass_p90_s": round(_pct(p, 0.9), 4),
                     "pass_cpu_median_s": round(statistics.median(times[arm]["cpu"]), 4),
                     "deliver_median_s": round(statistics.median(d), 4),
                     "deliver_p90_s": round(_pct(d, 0.9), 4), "events": counts[arm]["events"],
                     "delivered": counts[arm]["delivered"], "retries": counts[arm]["retrying"],
                     "run_outcomes": ",".join(sorted(counts[arm]["outcomes"]))})
    # each timed pass of one arm has its neighbour in time in the other: the median of the paired ratios
    # is the figure least moved by what else the machine does meanwhile
    paired = [b / a - 1 for a, b in zip(times["none"]["pass"], times["three"]["pass"], strict=True)]
    paired_cpu = [b / a - 1 for a, b in zip(times["none"]["cpu"], times["three"]["cpu"], strict=True)]
    diff = statistics.median(paired)
    return rows, {"pass_relative_difference": round(diff, 4),
                  "pass_relative_difference_cpu": round(statistics.median(paired_cpu), 4),
                  "pass_relative_difference_of_medians": round(rows[1]["pass_median_s"] / rows[0]["pass_median_s"] - 1,
                                                               4),
                  "pass_within_goal": abs(diff) <= GOAL_PASS_DIFF}


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--pg-url", default=os.environ.get("DECIDE_BENCH_POSTGRES_URL", DEFAULT_PG),
                   help=f"a PostgreSQL server you can CREATE DATABASE on (default {DEFAULT_PG})")
    p.add_argument("--passes", type=int, default=None, help="timed passes per arm (default 60; --quick 20)")
    args = p.parse_args()
    n_enqueue = 500 if args.quick else 2000
    passes = args.passes or (20 if args.quick else 60)
    os.environ.setdefault("DECIDE_ACTOR", "bench")
    figures: dict = {"quick": args.quick, "goals": {"enqueue_p99_ms": GOAL_ENQUEUE_P99_MS,
                                                    "pass_relative_difference": GOAL_PASS_DIFF}}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="decide-bench-notify-") as tmp:
        os.environ["DECIDE_HOME"] = tmp
        enqueue = {"sqlite": bench_enqueue(f"sqlite:///{tmp}/enqueue.db", n_enqueue),
                   "postgres": bench_enqueue_pg(args.pg_url, n_enqueue)}
        dispose_engines()
        for backend, res in enqueue.items():
            if isinstance(res, str):
                print(f"enqueue on {backend}: {res}", file=sys.stderr)
                figures[f"{backend}_skipped"] = res
                continue
            for way in ("in_txn", "own_txn"):
                r = res[way]
                rows.append({"measure": f"enqueue ({way})", "backend": backend, "n": r["n"], "p50_ms": r["p50_ms"],
                             "tail_ms": r["p99_ms"], "tail": "p99"})
        measured = [res for res in enqueue.values() if not isinstance(res, str)]
        figures["enqueue_p99_within_goal"] = all(res["in_txn"]["p99_ms"] < GOAL_ENQUEUE_P99_MS for res in measured)
        pass_rows, pass_figures = bench_passes(Path(tmp), passes)
    for what, key in (("pass", "pass"), ("delivery round", "deliver")):
        for r in pass_rows:
            rows.append({"measure": f"{what}, {r['endpoints']} endpoints", "backend": "sqlite", "n": r["passes"],
                         "p50_ms": round(r[f"{key}_median_s"] * 1e3, 1),
                         "tail_ms": round(r[f"{key}_p90_s"] * 1e3, 1), "tail": "p90"})
    figures |= pass_figures
    figures["events"] = {r["arm"]: {k: r[k] for k in ("events", "delivered", "retries", "run_outcomes")}
                         for r in pass_rows}
    if args.json:
        figures |= {"enqueue": enqueue, "passes": pass_rows}
    _common.output("notifications: enqueue latency, and the loop's pass with 0 vs 3 webhook endpoints", rows,
                   figures, args.json)


if __name__ == "__main__":
    main()
