"""Registry speed: register a version, walk a 1,000-deep lineage, ingest 10,000 reports.

    python bench/registry.py [--quick] [--json] [--postgres postgresql+psycopg://…/db]

Figures (medians of wall time, each including its own transaction and commit):
* register: one version with lineage (a parent), 18 pathologies × 8 metrics of
  evaluations, dataset link, a DenseNet121-sized tensor-digest map, and its
  audit event (MLflow's registry: 59 ms on SQLite; goal ≤ 6 ms);
* lineage: ancestors + descendants of the leaf of a 1,000-version chain (goal ≤ 50 ms);
* ingest: 10,000 error reports parsed from JSON Lines, validated, checked against
  the registry and stored with their audit events in one transaction (goal ≤ 5 s).
On PostgreSQL (`--postgres URL`, a server you can CREATE DATABASE on) a
throw-away database is created and dropped. The reports' hourly windows end at
the start of the current hour of the one clock (`cxr.clock`) and go back from
there, so the bench runs on any day and with the clock moved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cxr import clock
from cxr.spec import XRV_PATHOLOGIES, ArchSpec
from decision import error_reports
from registry import blobs, repo
from registry.entities import BlobRef
from registry.session import dispose_engines, session_scope, upgrade

PATHOLOGIES = list(XRV_PATHOLOGIES)  # 18
N_TENSORS = 727  # torchxrayvision DenseNet121's state dict size, roughly
N_REPORTS = 10_000  # ingested in one transaction, per run


def _eval_rows() -> list[dict]:
    return [{"pathology": p, "auroc": 0.81, "auroc_lo": 0.78, "auroc_hi": 0.84, "sensitivity": 0.7,
             "specificity": 0.88, "ppv": 0.31, "f1": 0.43, "threshold": 0.52, "n_pos": 120, "n_neg": 2400}
            for p in PATHOLOGIES]


def _ms(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1e3, 3), "p95_ms": round(xs[int(0.95 * (len(xs) - 1))] * 1e3, 3),
            "n": len(xs)}


def report_lines(n: int, site: str, *, end: datetime | None = None) -> list[str]:
    """`n` JSON Lines reports on version bench:1 at `site`, one per hour: the last window ends at `end`
    (default: the start of the clock's current hour) and each earlier one an hour before."""
    end = end or clock.now().replace(minute=0, second=0, microsecond=0)
    lines = []
    for i in range(n):
        ws = end - timedelta(hours=n - i)
        lines.append(json.dumps({
            "model": "bench", "version": 1, "pathology": PATHOLOGIES[i % 18], "kind": "false_positives",
            "metric": "fpr", "value": 0.2, "target": 0.1, "site": site, "window_start": ws.isoformat(),
            "window_end": (ws + timedelta(hours=1)).isoformat(), "counts": {"tp": 3, "fp": 20, "tn": 90, "fn": 1},
            "cases": [{"image_id": f"img-{i}", "score": 0.9, "label": 0}], "source": "monitor",
        }))
    return lines


def ingest_lines(url: str, lines: list[str]) -> tuple[int, float]:
    """Parse, validate and store `lines` in one transaction: (reports created, seconds taken)."""
    t0 = time.perf_counter()
    parsed, numbers = error_reports.parse_lines(lines)
    with session_scope(url) as s:
        res = error_reports.ingest(s, parsed, lines=numbers)
    return res.created, time.perf_counter() - t0


@dataclass(frozen=True)
class Root:
    """Version bench:1, which the reports name and the lineage grows from, and what its children reuse."""

    spec: str
    tensors: dict[str, str]
    blob: BlobRef
    dataset_id: int  # the evaluation data set the timed versions are evaluated on
    version_id: int


def register_root(url: str) -> Root:
    """Migrate the registry at `url` and register version bench:1 in it."""
    upgrade(url)
    spec = ArchSpec().to_json()
    tensors = {f"features.block.layer{i}.weight": f"{i:064x}" for i in range(N_TENSORS)}
    ref = blobs.put_bytes(os.urandom(1 << 20))  # a 1 MiB stand-in blob; versions below reuse it
    with session_scope(url) as s:
        ds = repo.get_or_create_dataset(s, "bench-eval", "evaluation", "d" * 64, 2520, {"bench": True})
        root = repo.register_version(
            s, "bench", spec_json=spec, weights_digest=ref.digest, blob=ref, backbone_digest="b" * 64,
            tensors_digest="c" * 64, tensor_digests=tensors, pathologies=PATHOLOGIES, parameter_count=6_966_034)
    return Root(spec, tensors, ref, ds.id, root.id)


def bench_backend(url: str, *, quick: bool) -> dict:
    root = register_root(url)
    spec, tensors, ref = root.spec, root.tensors, root.blob
    thresholds = {p: 0.5 for p in PATHOLOGIES}

    def register(parent_id: int, evaluations: bool) -> int:
        with session_scope(url) as s:
            v = repo.register_version(
                s, "bench", spec_json=spec, weights_digest=ref.digest, backbone_digest="b" * 64,
                tensors_digest="c" * 64, tensor_digests=tensors, pathologies=PATHOLOGIES,
                parameter_count=6_966_034, thresholds=thresholds, parent_id=parent_id,
                code_version="bench", evaluations={root.dataset_id: _eval_rows()} if evaluations else None,
                reason="bench")
        return v.id

    n_timed = 100 if quick else 400
    times, leaf = [], root.version_id
    for _ in range(n_timed):
        t0 = time.perf_counter()
        leaf = register(leaf, True)
        times.append(time.perf_counter() - t0)
    out: dict = {"register": _ms(times)}

    depth = 1000
    with session_scope(url) as s:  # grow the chain to 1,000 quickly (one transaction, no evaluations)
        for _ in range(depth - n_timed - 1):
            leaf = repo.register_version(
                s, "bench", spec_json=spec, weights_digest=ref.digest, backbone_digest="b" * 64,
                tensors_digest="c" * 64, pathologies=PATHOLOGIES, parameter_count=1, parent_id=leaf,
                code_version="bench").id
    lin_times = []
    for _ in range(10 if quick else 30):
        t0 = time.perf_counter()
        with session_scope(url, read_only=True) as s:
            lin = repo.lineage(s, leaf)
        lin_times.append(time.perf_counter() - t0)
    assert len(lin.ancestors) == depth - 1, len(lin.ancestors)
    out["lineage_depth_1000"] = _ms(lin_times)

    n_reports, runs = N_REPORTS, 1 if quick else 3
    ingest_times = []
    for run in range(runs):
        created, seconds = ingest_lines(url, report_lines(n_reports, f"site-{run}"))
        ingest_times.append(seconds)
        assert created == n_reports, created
    out["ingest_10000"] = {"median_s": round(statistics.median(ingest_times), 3), "n": runs}
    with session_scope(url, read_only=True) as s:
        out["audit_chain_ok"] = repo.verify_chain(s).ok
    return out


def _machine(pg_url: str | None) -> dict:
    import sqlite3

    import sqlalchemy

    info = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "sqlalchemy": sqlalchemy.__version__, "sqlite": sqlite3.sqlite_version}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        info["torch"] = None
    if pg_url:
        eng = create_engine(pg_url)
        with eng.connect() as c:
            info["postgres"] = c.execute(text("SHOW server_version")).scalar()
        eng.dispose()
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (< 1 minute)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--postgres", metavar="URL", help="also bench PostgreSQL (a throw-away database is created)")
    args = ap.parse_args()
    results: dict = {"bench": "registry", "quick": args.quick, "goals": {
        "register_median_ms": 6, "lineage_depth_1000_median_ms": 50, "ingest_10000_s": 5}}
    with tempfile.TemporaryDirectory(prefix="decide-bench-") as home:
        os.environ["DECIDE_HOME"] = home
        os.environ.setdefault("DECIDE_ACTOR", "bench")
        results["sqlite"] = bench_backend(f"sqlite:///{home}/registry.db", quick=args.quick)
        if args.postgres:
            admin_url = make_url(args.postgres)
            name = f"decide_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                results["postgres"] = bench_backend(
                    admin_url.set(database=name).render_as_string(hide_password=False), quick=args.quick)
            finally:
                dispose_engines()
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
        dispose_engines()
    results["machine"] = _machine(args.postgres)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="registry bench (goals: register ≤ 6 ms, lineage@1000 ≤ 50 ms, 10k ingest ≤ 5 s)")
    for c in ("backend", "register median (p95)", "lineage@1000 median (p95)", "ingest 10,000"):
        t.add_column(c, justify="right")
    for name in ("sqlite", "postgres"):
        if name in results:
            r = results[name]
            t.add_row(name, f"{r['register']['median_ms']:.2f} ms ({r['register']['p95_ms']:.2f})",
                      f"{r['lineage_depth_1000']['median_ms']:.2f} ms ({r['lineage_depth_1000']['p95_ms']:.2f})",
                      f"{r['ingest_10000']['median_s']:.2f} s")
    Console().print(t)
    Console().print(results["machine"])


if __name__ == "__main__":
    main()
