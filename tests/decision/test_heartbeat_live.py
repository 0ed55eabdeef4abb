"""A live heartbeat keeps a long treatment its own: a concurrent pass must not take it over.

A treatment runs for longer than the stale threshold while its `Heartbeat` beats; another worker's pass
in the meantime must leave it running (also when told to take over), and it must finish with its own
outcome. If `heartbeat_run` wrote nothing (or the heartbeat never ran), the run's last beat would be its
start, older than the threshold, and the concurrent pass would mark it abandoned and reopen its report.
No timed assertions: the treatment holds until the heartbeat itself has seen the run outlive the
threshold, then the concurrent passes run, then the treatment is released. The stale threshold (1 s) is
20 beat intervals, so only a process frozen for a second could make a live run look dead.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from decision.liveness import Heartbeat
from policies import load_policy, parse_policy
from registry import audit, repo
from registry.entities import DecisionStatus, ReportStatus, RunOutcome
from registry.session import session_scope
from tests import dates
from treatments.base import TreatmentResult

pytestmark = [pytest.mark.xdist_group("tiny-home"), pytest.mark.slow]  # an engine pass on the tiny registry: ~3-8 s

EVERY = 0.05  # seconds between beats
STALE_S = 1.0
STALE = timedelta(seconds=STALE_S)  # the concurrent pass's threshold: 20 beats
WAIT = 60.0  # generous bound on each synchronisation, so a hang fails instead of blocking the suite


class SlowTreatment:
    """Holds inside `apply` until the test releases it; then calls the target almost never positive."""

    name, fixes, head_only = "toy_slow", frozenset({"false_positives"}), True

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.started_at = 0.0

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        self.started_at = time.monotonic()
        self.started.set()
        if not self.release.wait(WAIT):
            raise RuntimeError("the test never released the treatment")
        thresholds = dict(ctx.thresholds)
        thresholds[ctx.report.pathology] = 0.999
        return TreatmentResult(thresholds=thresholds, notes="a long, slow fix")


class MustNotRun(SlowTreatment):
    """The concurrent worker's plugin: reached only if that worker took the report over."""

    def apply(self, ctx):
        raise RuntimeError("the concurrent pass took over a live treatment")


def _report(url) -> int:
    rep = {"model": "cxr", "version": 1, "pathology": "Cardiomegaly", "kind": "false_positives", "metric": "fpr",
           "value": 0.6, "target": 0.2, "site": "site-b",
           "window_start": dates.day(0), "window_end": dates.day(1),
           "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1}, "cases": []}  # fmt: skip
    with session_scope(url) as s:
        return ingest(s, [parse_report(rep)]).ids[0]


def _policy():
    raw = load_policy().model_dump(mode="json")
    raw["treatments"]["toy_slow"] = {"prior_cost": 0.5, "fixes": ["false_positives"], "p_success_default": 0.9}
    return parse_policy(raw)


def test_a_live_heartbeat_keeps_a_long_treatment_from_being_taken_over(tiny_home, monkeypatch):
    treatment = SlowTreatment()
    aged = threading.Event()  # set once a beat committed after the run outlived 1.5 x the threshold
    beats: list[float] = []

    class WatchedHeartbeat(Heartbeat):
        def __init__(self, url, beat, *, every=EVERY, what="heartbeat"):
            def watched(session):
                # beats run one after another, each committed before the next: the previous one is stored
                outlived = beats and treatment.started.is_set() and beats[-1] - treatment.started_at > 1.5 * STALE_S
                if outlived:
                    aged.set()
                beat(session)
                beats.append(time.monotonic())

            super().__init__(url, watched, every=EVERY, what=what)

    monkeypatch.setattr("decision.treat.Heartbeat", WatchedHeartbeat)
    rid = _report(tiny_home.url)
    policy = _policy()
    first = Engine(tiny_home.url, tiny_home.home, policy, plugins={"toy_slow": treatment}, worker="first")
    outcome: dict = {}

    def run_first():
        try:
            outcome["summary"] = first.run_pass(stale_after=STALE)
        except BaseException as exc:  # re-raised below, in the test's own thread
            outcome["error"] = exc

    worker = threading.Thread(target=run_first, name="first-pass")
    worker.start()
    try:
        assert treatment.started.wait(WAIT), outcome.get("error")
        assert aged.wait(WAIT), f"the heartbeat stopped after {len(beats)} beats"
        second = Engine(tiny_home.url, tiny_home.home, policy, plugins={"toy_slow": MustNotRun()}, worker="second")
        concurrent = second.run_pass(stale_after=STALE)
        forced = second.run_pass(stale_after=STALE, take_over=True)  # `decide run --take-over`
        with session_scope(tiny_home.url, read_only=True) as s:
            during = ([r.outcome for r in repo.list_runs(s)], repo.get_report(s, rid).status)
    finally:
        treatment.release.set()
        worker.join(WAIT)
    assert not worker.is_alive()
    assert concurrent.abandoned_runs == [] and concurrent.decisions == []  # nothing taken over, nothing to claim
    assert during == ([RunOutcome.running], ReportStatus.decided)
    assert forced.abandoned_runs == [] and len(forced.refused_takeover) == 1  # alive: refused even when asked
    if "error" in outcome:
        raise outcome["error"]
    with session_scope(tiny_home.url, read_only=True) as s:
        (run,) = repo.list_runs(s)
        assert run.outcome in (RunOutcome.accepted, RunOutcome.rejected) and run.error_text == ""
        assert "run.abandon" not in [e.action for e in audit.list_events(s)]
        assert audit.verify_chain(s).ok
    (chosen,) = outcome["summary"].decisions
    assert chosen.status is not DecisionStatus.cancelled and [r.treatment for r in chosen.runs] == ["toy_slow"]
