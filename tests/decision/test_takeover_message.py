"""What an operator is told about a run still `running`: when a plain `decide run` and when
`decide run --take-over` can take it over — and, to whoever just gave `--take-over`, when to run again
rather than to give the flag they gave."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from decision.liveness import TAKEOVER_AFTER, describe, live_run
from registry.entities import RunEntity, RunOutcome

NOW = datetime(2030, 1, 2, 12, 0, 0, tzinfo=UTC)
STALE = timedelta(seconds=90)


def _run(age_s: float) -> RunEntity:
    t = NOW - timedelta(seconds=age_s)
    return RunEntity(id=7, decision_id=4, treatment="augmentation_retrain", parameters={}, input_version_id=1,
                     output_version_id=None, started_at=t, finished_at=None, heartbeat_at=t, wall_seconds=None,
                     trainable_parameters=None, outcome=RunOutcome.running, error_text="", metrics={},
                     artifacts={}, created_by="tester")


def test_with_take_over_given_it_says_when_to_run_again_not_to_give_the_flag():
    live = live_run(_run(27), NOW, STALE)
    assert live.take_over_in_s == TAKEOVER_AFTER.total_seconds() - 27 == 18
    line = describe(live, take_over_given=True)
    assert line == ("decision 4: run 7 (augmentation_retrain) is running; last heartbeat 27 s ago — it may still "
                    "be alive: take-over possible in 18 s (at 12:00:18 UTC) if it does not beat again; run again then")
    assert "--take-over" not in line


def test_without_the_flag_it_says_when_each_kind_of_run_takes_it_over():
    line = describe(live_run(_run(27), NOW, STALE))
    assert line == ("decision 4: run 7 (augmentation_retrain) is running; last heartbeat 27 s ago — taken over by "
                    "the next `decide run` in 63 s (at 12:01:03 UTC) unless it beats again "
                    "(`decide run --take-over` can take it over in 18 s (at 12:00:18 UTC))")
    silent = describe(live_run(_run(60), NOW, STALE))  # two beats missed: the flag acts now
    assert silent.endswith("in 30 s (at 12:00:30 UTC) unless it beats again (`decide run --take-over` now, if its "
                           "process is gone)")


def test_a_short_stale_time_bounds_the_take_over_too():
    live = live_run(_run(5), NOW, timedelta(seconds=10))
    assert (live.takeover_in_s, live.take_over_in_s) == (5, 5)
    assert describe(live, take_over_given=True).endswith("take-over possible in 5 s (at 12:00:05 UTC) if it does "
                                                         "not beat again; run again then")
