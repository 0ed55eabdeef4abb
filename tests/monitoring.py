"""Helpers shared by the monitoring and scheduling tests (tests/cli/test_monitor_*.py,
tests/decision/test_scheduler.py): a toy treatment installed through an entry point (as a
third party would ship it), a policy that lists only the toy, a way to start `decide monitor
schedule` as a real process, and the "nothing half-written" check.

The toy returns its parent's thresholds at once; when `SLOW_TOY_MARKER` names a file that does
not exist yet, it first writes that file and sleeps (a test kills the process there).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from registry import audit, repo
from registry.entities import RunOutcome
from registry.session import session_scope
from tests import dates
from tests.toy_plugins import install_plugin

ROOT = Path(__file__).resolve().parents[1]
DECIDE = Path(sys.executable).parent / "decide"
TOY_NAME = "slow_toy"
KINDS = '"false_positives", "false_negatives", "auroc_drop", "calibration_drift"'
TOY = f"""
    import os
    import time

    from treatments.base import TreatmentResult

    class Toy:
        name = "{TOY_NAME}"
        fixes = frozenset({{{KINDS}}})
        head_only = True

        def applicable(self, report, planning):
            return True, "always"

        def apply(self, ctx):
            marker = os.environ.get("SLOW_TOY_MARKER")
            if marker and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(600)  # a test kills the process here
            return TreatmentResult(thresholds=dict(ctx.thresholds), notes="toy: thresholds unchanged")
"""


def install_toy(where: Path) -> Path:
    """The toy, installed as a third party's distribution would be (see tests/toy_plugins.py)."""
    return install_plugin(where, TOY, "slow_toy_plugin", TOY_NAME)


def write_policy(path: Path, *, strict_slos: bool) -> Path:
    """Only the toy is a treatment; SLOs the tiny model breaches (strict) or none at all (lax)."""
    slo = "min_recall = 0.8\nmax_fpr = 0.3\nmin_auroc = 0.7\n" if strict_slos else ""
    path.write_text(textwrap.dedent(f"""\
        name = "monitor-test"
        [treatments.{TOY_NAME}]
        prior_cost = 0.1
        fixes = [{KINDS}]
        p_success_default = 0.9
        [slos.default]
        """) + slo)
    return path


def scheduler_env(home: Path, policy: Path, toy_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a `decide` child process: this home, this policy, the toy plugin importable."""
    return {**os.environ, "DECIDE_HOME": str(home), "DECIDE_POLICY": str(policy),
            "PYTHONPATH": os.pathsep.join([str(toy_dir), str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra}


def start_scheduler(env: dict[str, str], *, cron: str = "*/2 * * * * *", per_window: int = 100) -> subprocess.Popen:
    cmd = [str(DECIDE), "monitor", "schedule", "--cron", cron, "--source", "phantom:site-b", "--site", "site-b",
           "--per-window", str(per_window)]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(what: str, check, procs: list[subprocess.Popen], limit: float = 180.0):
    """Poll `check()` until it returns something truthy; fail (never hang) if a child died or `limit` passed."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        for proc in procs:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"scheduler exited ({proc.returncode}) before {what}:\n{out[-4000:]}")
        time.sleep(0.2)
    pytest.fail(f"gave up waiting for {what}")


def ingest_report(url: str | None = None, site: str = "site-b", pathology: str = "Effusion") -> int:
    from decision.error_reports import ingest, parse_report

    report = {"model": "cxr", "version": 1, "pathology": pathology, "kind": "false_positives", "metric": "fpr",
              "value": 0.6, "target": 0.3, "site": site, "window_start": dates.day(-35),
              "window_end": dates.day(-28), "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 2},
              "cases": [{"image_id": "x1", "score": 0.9, "label": 0}], "source": "api", "notes": ""}
    with session_scope(url) as s:
        return ingest(s, [parse_report(report)]).ids[0]


def assert_versions_complete(url: str | None = None) -> None:
    """Every version has its evaluations and (unless it is the baseline) a finished run that names it."""
    with session_scope(url, read_only=True) as s:
        versions = repo.list_versions(s, "cxr")
        runs = {r.id: r for r in repo.list_runs(s)}
        for v in versions:
            assert repo.list_evaluations(s, v.id), f"{v.ref} has no evaluations"
            if v.parent_id is None:
                continue
            run = runs[v.treatment_run_id]
            assert run.outcome in (RunOutcome.accepted, RunOutcome.rejected) and run.output_version_id == v.id
        made = {r.output_version_id for r in runs.values() if r.output_version_id is not None}
        assert made <= {v.id for v in versions}
        assert audit.verify_chain(s).ok
