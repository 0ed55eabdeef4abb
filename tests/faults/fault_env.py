"""What every fault test shares: a fault home, a real `decide` process, and the invariants a fault must
never break.

The fault home is the tiny real registry (`tests/conftest.py::build_tiny_home`) with one open report
(Effusion false positives at site-b) and a policy whose only treatment is `fault_toy`, a third-party
plugin installed through the entry-point door: it returns new head weights (the bias moved by 1e-6, so
every candidate writes a new weights blob) and the parent's operating points, which already meet the
report's target on the held-out set — so the gate accepts it and every step of the loop, promotion
included, is reached. Feature caches are warm, so a `decide run` spends its time in imports, not in
forward passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from cxr.errors import NotFound
from registry import audit, blobs, repo
from registry.entities import DecisionStatus, ReportStatus, RunOutcome
from registry.session import session_scope
from tests import dates

ROOT = Path(__file__).resolve().parents[2]
DECIDE = Path(sys.executable).parent / "decide"
TOY_NAME = "fault_toy"
TOY = f"""
    import numpy as np

    from treatments.base import TreatmentResult

    class Toy:
        name = "{TOY_NAME}"
        fixes = frozenset({{"false_positives"}})
        head_only = True

        def applicable(self, report, planning):
            return True, "always"

        def apply(self, ctx):
            # new weights bytes (a blob to write), the same operating points: the target is already met
            bias = np.asarray(ctx.head_bias, dtype=np.float32) + np.float32(1e-6)
            return TreatmentResult(thresholds=dict(ctx.thresholds), head_bias=bias, notes="fault toy")
"""
POLICY = textwrap.dedent(f"""\
    name = "faults"
    [treatments.{TOY_NAME}]
    prior_cost = 0.1
    fixes = ["false_positives"]
    p_success_default = 0.9
    [slos.default]
    """)
#: the parent's Effusion FPR at site-b is about 0.64 on the held-out set: a target of 0.7 is met
REPORT = {"model": "cxr", "version": 1, "pathology": "Effusion", "kind": "false_positives", "metric": "fpr",
          "value": 0.8, "target": 0.7, "site": "site-b",
          "window_start": dates.day(0), "window_end": dates.day(7),
          "counts": {"tp": 5, "fp": 60, "tn": 15, "fn": 1}, "cases": []}
LIVE = {DecisionStatus.planned, DecisionStatus.running, DecisionStatus.awaiting_approval}


class ForkServer:
    """The client of `tests/faults/forkserver.py`: `decide` commands as forked children of one process
    that imported everything once (see there). One command at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.faults.forkserver"], env=env, cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = False

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited ({self.proc.poll()})")
        return json.loads(line)

    def start(self, args: list[str], env: dict[str, str], output: Path) -> Child:
        if not self.ready:
            self._read()  # {"ready": pid}: the imports are done
            self.ready = True
        self.proc.stdin.write(json.dumps({"args": args, "env": env, "cwd": str(ROOT), "output": str(output)}) + "\n")
        self.proc.stdin.flush()
        return Child(self, self._read()["pid"], output)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@dataclass
class Child:
    """A running `decide` command (a forked child of the server)."""

    server: ForkServer
    pid: int
    output: Path
    returncode: int | None = None

    def alive(self) -> bool:
        """Still running (not exited, not a zombie the server has yet to reap)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def wait(self) -> subprocess.CompletedProcess:
        if self.returncode is None:
            self.returncode = self.server._read()["returncode"]
        return subprocess.CompletedProcess(["decide"], self.returncode, self.output.read_text(errors="replace"))


@dataclass
class FaultHome:
    """A private copy of the fault template: its home folder, database URL and the child environment."""

    home: Path
    url: str
    backend: str  # "sqlite" | "postgres"
    toy_dir: Path
    policy: Path
    server: ForkServer

    def env(self, **extra: str) -> dict[str, str]:
        """A `decide` child's environment: this home and database, the fault policy, the toy importable."""
        env = {**os.environ, "DECIDE_HOME": str(self.home), "DECIDE_POLICY": str(self.policy),
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(self.toy_dir), str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.pop("DECIDE_FAILPOINTS", None)
        if self.backend == "postgres":
            env["DECIDE_DATABASE_URL"] = self.url
        else:
            env.pop("DECIDE_DATABASE_URL", None)
        return {**env, **extra}

    def start(self, *args: str, failpoints: str | None = None, **extra: str) -> Child:
        """Start `decide ARGS` (with `DECIDE_FAILPOINTS` if given) as a child of the fork server."""
        env = self.env(**extra, **({"DECIDE_FAILPOINTS": failpoints} if failpoints else {}))
        output = self.home.parent / f"decide-{len(list(self.home.parent.glob('decide-*.out')))}.out"
        return self.server.start(list(args), env, output)

    def decide(self, *args: str, failpoints: str | None = None, **extra: str) -> subprocess.CompletedProcess:
        """Run `decide ARGS` to its end (or its death) as a child of the fork server."""
        return self.start(*args, failpoints=failpoints, **extra).wait()

    def decide_fresh(self, *args: str, failpoints: str | None = None, timeout: float = 600,
                     **extra: str) -> subprocess.CompletedProcess:
        """The same through the installed `decide` script, a fresh interpreter (imports and all)."""
        env = self.env(**extra, **({"DECIDE_FAILPOINTS": failpoints} if failpoints else {}))
        return subprocess.run([str(DECIDE), *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)


def ingest_report(url: str, **changes) -> int:
    from decision.error_reports import ingest, parse_report

    with session_scope(url) as s:
        return ingest(s, [parse_report({**REPORT, **changes})]).ids[0]


def recover(fh: FaultHome, *, stale_seconds: str = "0.001", take_over: bool = True) -> dict:
    """`decide run --yes --take-over --json` (or a plain `decide run`) in this process, every dead
    process's work being stale.

    A tiny DECIDE_STALE_SECONDS stands for "the stale time has passed": the killed process is gone, so
    nothing of its work may be left behind. Returns the command's JSON; fails on a non-zero exit.
    """
    from cli.app import app

    out = CliRunner().invoke(app, ["run", "--yes", *(["--take-over"] if take_over else []), "--json"],
                             env={"DECIDE_STALE_SECONDS": stale_seconds})
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def audit_verify_ok(fh: FaultHome) -> None:
    """`decide audit verify` (the chain, and the aliases against it) passes."""
    from cli.app import app

    out = CliRunner().invoke(app, ["audit", "verify"])
    assert out.exit_code == 0, out.output


@dataclass(frozen=True)
class State:
    reports: list
    decisions: list
    runs: list
    versions: list
    production: str | None


def state(fh: FaultHome) -> State:
    with session_scope(fh.url, read_only=True) as s:
        try:
            prod = repo.resolve_version(s, "cxr@production").ref
        except NotFound:  # no production alias
            prod = None
        return State(repo.list_reports(s), repo.list_decisions(s), repo.list_runs(s),
                      [repo.get_version(s, v.id) for v in repo.list_versions(s, "cxr")], prod)


def check_whole(fh: FaultHome) -> State:
    """What no fault may break, whatever step it hit.

    * `decide audit verify` passes (the chain, and every alias where its last audit event says);
    * no version is half-registered: each has its `version.register` event, its blob (verified by
      digest) and evaluations; a candidate's run names it and it names that run;
    * no report is lost: it is open, claimed (a lease), decided with one live decision (or a final one
      that asks a person to look), or resolved by exactly one succeeded decision;
    * no report is decided twice: at most one live decision and at most one success per report, and none
      live once it is resolved.
    """
    audit_verify_ok(fh)
    st = state(fh)
    with session_scope(fh.url, read_only=True) as s:
        registered = {int(e.entity_id) for e in audit.list_events(s, entity_type="model_version")
                      if e.action == "version.register"}
        evaluated = {v.id for v in st.versions if repo.list_evaluations(s, v.id)}
    runs = {r.id: r for r in st.runs}
    for v in st.versions:
        assert v.id in registered, f"{v.ref} has no version.register event"
        assert v.id in evaluated, f"{v.ref} has no evaluations"
        blobs.get_bytes(v.weights_digest, fh.home)  # present and intact
        if v.treatment_run_id is not None:
            run = runs[v.treatment_run_id]
            assert run.output_version_id == v.id, f"{v.ref}'s run {run.id} names {run.output_version_id}"
            assert run.outcome in (RunOutcome.accepted, RunOutcome.rejected, RunOutcome.held), run
    by_id = {v.id: v for v in st.versions}
    for r in st.runs:
        if r.output_version_id is not None:
            assert by_id[r.output_version_id].treatment_run_id == r.id, f"run {r.id}'s version names another run"
        if r.outcome in (RunOutcome.accepted, RunOutcome.rejected, RunOutcome.held):
            assert r.output_version_id is not None, f"run {r.id} is {r.outcome.value} without a version"
    for rep in st.reports:
        mine = [d for d in st.decisions if rep.id in d.report_ids]
        live = [d for d in mine if d.status in LIVE]
        won = [d for d in mine if d.status == DecisionStatus.succeeded]
        assert len(live) <= 1, f"report {rep.id} has {len(live)} live decisions: decided twice"
        assert len(won) <= 1, f"report {rep.id} was resolved by {len(won)} decisions"
        if rep.status == ReportStatus.open:
            assert not live, f"report {rep.id} is open while decision {live[0].id} is {live[0].status.value}"
        elif rep.status == ReportStatus.claimed:
            assert rep.claimed_by and not live, f"report {rep.id} is claimed: {rep}"
        elif rep.status == ReportStatus.decided:
            last = mine[-1] if mine else None
            assert live or (last is not None and last.status in (DecisionStatus.exhausted, DecisionStatus.rejected)), (
                f"report {rep.id} is decided but no decision will act on it: lost "
                f"({[(d.id, d.status.value) for d in mine]})")
        elif rep.status == ReportStatus.resolved:
            assert len(won) == 1, f"report {rep.id} is resolved without a succeeded decision"
            assert not live, f"report {rep.id} is resolved while decision {live[0].id} is {live[0].status.value}"
    return st


def check_settled(fh: FaultHome, report_id: int) -> State:
    """After recovery: the report is resolved by one succeeded decision whose accepted run's version is
    production, and nothing is left running or half-way."""
    st = check_whole(fh)
    [rep] = [r for r in st.reports if r.id == report_id]
    assert rep.status == ReportStatus.resolved, rep
    assert not [r.id for r in st.runs if r.outcome == RunOutcome.running], "a run is still running"
    assert not [d.id for d in st.decisions if d.status in (DecisionStatus.planned, DecisionStatus.running)]
    [won] = [d for d in st.decisions if report_id in d.report_ids and d.status == DecisionStatus.succeeded]
    accepted = [r for r in st.runs if r.decision_id == won.id and r.outcome == RunOutcome.accepted]
    assert len(accepted) == 1
    assert st.production == next(v.ref for v in st.versions if v.id == accepted[0].output_version_id)
    return st
