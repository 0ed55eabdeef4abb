"""The monitor: statistically clear breaches only, case evidence, idempotent windows, no re-reporting."""

from __future__ import annotations

import numpy as np
import pytest

from decision.engine import Engine
from decision.error_reports import parse_report
from decision.jobs import feedback_source, monitor_pass
from decision.monitor import assess, wilson
from policies import load_policy, parse_policy
from registry import repo
from registry.session import session_scope
from tests import dates

WINDOW = dates.week(1)
NAMES = ["Cardiomegaly", "Effusion"]


def _world(n=600, fp_rate=0.5, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < 0.1).astype(np.float32)
    s = np.where(y == 1, rng.uniform(0.6, 1.0, y.shape), rng.uniform(0.0, 0.4, y.shape))
    flip = (y[:, 0] == 0) & (rng.random(n) < fp_rate)  # false alarms on Cardiomegaly
    s[flip, 0] = rng.uniform(0.5, 0.9, flip.sum())
    return y, s.astype(np.float32)


def _assess(y, s, **kw):
    return assess("cxr", 1, {"Cardiomegaly": 0.5, "Effusion": 0.5}, NAMES, y, s, [f"img{i}" for i in range(len(y))],
                  ["site-b"] * len(y), load_policy(), WINDOW, **kw)


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson(30, 100)
    assert lo < 0.3 < hi and 0.2 < lo and hi < 0.4
    assert wilson(0, 0) == (0.0, 1.0)


def test_clear_false_positive_breach_is_reported_with_the_worst_cases():
    y, s = _world(fp_rate=0.5)
    metrics, reports = _assess(y, s)
    fp = [r for r in reports if r["kind"] == "false_positives"]
    assert [r["pathology"] for r in fp] == ["Cardiomegaly"]
    r = fp[0]
    assert r["value"] > 0.4 and r["target"] == load_policy().slos.for_pathology("Cardiomegaly").max_fpr
    scores = [c["score"] for c in r["cases"]]
    assert scores == sorted(scores, reverse=True) and all(c["label"] == 0 for c in r["cases"])
    assert r["counts"]["fp"] + r["counts"]["tn"] == int((y[:, 0] == 0).sum())
    parse_report(r)  # the same validation path as `decide ingest`
    card = next(m for m in metrics if m.pathology == "Cardiomegaly")
    assert card.breaches == ["false_positives"] and card.fpr_ci[0] > 0.2


def test_a_rate_near_the_target_is_not_reported():
    # FPR about 0.22 over ~540 negatives: above the 0.2 target, but the interval straddles it.
    y, s = _world(fp_rate=0.22, seed=3)
    _, reports = _assess(y, s)
    assert not [r for r in reports if r["pathology"] == "Cardiomegaly"]


def test_too_few_cases_report_nothing():
    y, s = _world(n=20, fp_rate=0.9)
    assert _assess(y, s)[1] == []


@pytest.mark.xdist_group("tiny-home")
def test_a_window_is_monitored_once_and_open_issues_are_not_reported_again(tiny_home):
    raw = load_policy().model_dump(mode="json")
    raw["slos"]["pathologies"]["Cardiomegaly"]["max_fpr"] = 0.0001  # surely breached at site-b
    policy = parse_policy(raw)
    engine = Engine(tiny_home.url, tiny_home.home, policy)
    first = monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=0, per_window=200, treat=False)
    assert first.monitor.ingested.created >= 1
    again = monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=0, per_window=200, treat=False)
    assert again.monitor.ingested.created == 0  # same window: nothing new
    week2 = monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=1, per_window=200, treat=False)
    still = {(p["pathology"], p["kind"]) for p in week2.monitor.persisting}
    week1 = {(r["pathology"], r["kind"]) for r in first.monitor.reports}
    assert still and still <= week1  # breached again while still open: not reported again
    new = {(r["pathology"], r["kind"]) for r in week2.monitor.reports}
    assert not new & still
    with session_scope(tiny_home.url, read_only=True) as s:
        reports = repo.list_reports(s)
    assert len(reports) == first.monitor.ingested.created + week2.monitor.ingested.created
    assert len({(r.site, r.pathology, r.kind) for r in reports}) == len(reports)


@pytest.mark.xdist_group("tiny-home")
def test_a_site_is_monitored_with_its_own_version_and_operating_points(tiny_home):
    """A site's report fixed by its own threshold is not reported again: the monitor judges the site by the
    version serving it (production@site, else production) at that site's thresholds, not the defaults."""
    engine = Engine(tiny_home.url, tiny_home.home, load_policy())  # the 1-epoch tiny model breaches plenty
    week1 = monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=0, per_window=200, treat=False)
    assert ("Effusion", "false_positives") in {(r["pathology"], r["kind"]) for r in week1.monitor.reports}
    with session_scope(tiny_home.url) as s:
        prod = repo.resolve_version(s, "cxr@production")
        for r in repo.list_reports(s):  # week 1's reports closed: week 2 reports whatever it finds again
            repo.set_report_status(s, r.id, "rejected", reason="closed for this test")
        child = repo.derive_version(s, prod.id, site_thresholds={"site-b": {"Effusion": 1.0}},
                                    reason="site-b calls no Effusion")
        repo.set_alias(s, "cxr", "production", child.id, site="site-b", reason="site-b's own operating point")
    week2 = monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=1, per_window=200, treat=False)
    assert week2.monitor.version == child.ref
    eff = next(m for m in week2.monitor.metrics if m.pathology == "Effusion")
    assert eff.threshold == 1.0 and eff.fp == 0
    reported = {(r["pathology"], r["kind"]) for r in week2.monitor.reports}
    assert ("Effusion", "false_positives") not in reported and reported  # the others are still reported
    site_a = monitor_pass(engine, "cxr", "phantom:site-a", "site-a", index=0, per_window=200, treat=False)
    assert site_a.monitor.version == prod.ref  # site-a is still served by production, at the defaults
    assert next(m for m in site_a.monitor.metrics if m.pathology == "Effusion").threshold == \
        prod.thresholds["Effusion"]


def test_feedback_windows_are_fixed_weeks():
    src, w = feedback_source("phantom:site-b", "site-b", 2, 100, 32)
    assert src["rows"] == [200, 300] and (w.end - w.start).days == 7
    src2, w2 = feedback_source("phantom:site-b", "site-b", 2, 100, 32)
    assert (src2, w2) == (src, w)


def test_a_registry_keeps_its_phantom_weeks_as_the_calendar_turns():
    """Week k of a site is one window for a registry's life, a year on or not; a fresh site's weeks start
    on a Monday about a year back, so that a schedule's weeks never reach the future."""
    from datetime import timedelta

    from cxr import clock
    from decision.jobs import phantom_epoch
    from registry.session import init_registry

    init_registry()
    epoch = phantom_epoch("site-b")
    assert epoch.weekday() == 0 and timedelta(weeks=52) <= clock.now() - epoch < timedelta(weeks=53)
    src, week3 = feedback_source("phantom:site-b", "site-b", 3, 100, 32, epoch=epoch)
    assert week3.start == epoch + timedelta(weeks=3) and src["window"] == [week3.start.isoformat(),
                                                                            week3.end.isoformat()]
    with session_scope() as s:  # the week as the monitor records it
        repo.get_or_create_dataset(s, src["name"], "feedback", "d" * 64, 100, src)
    with clock.moved(timedelta(days=365)):
        assert phantom_epoch("site-b") == epoch  # read back from the recorded week
        assert feedback_source("phantom:site-b", "site-b", 3, 100, 32, epoch=phantom_epoch("site-b")) == (src, week3)
        assert phantom_epoch("site-a") > epoch + timedelta(weeks=51)  # another site: its own, a year on


@pytest.mark.xdist_group("tiny-home")
def test_a_watch_reports_only_the_audited_pathologies_and_kinds(tiny_home):
    """`--pathology/--kind` (what a site's radiologists audit): the same window, watched narrowly, reports
    exactly the watched subset of what the unwatched monitor reports, and scores nothing else."""
    from decision.jobs import Watch

    engine = Engine(tiny_home.url, tiny_home.home, load_policy())  # the 1-epoch tiny model breaches plenty
    full = monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=0, per_window=200, treat=False)
    everything = {(r["pathology"], r["kind"]) for r in full.monitor.reports}
    assert len({p for p, _ in everything}) >= 2, everything  # something to leave out
    pathology, kind = sorted(everything)[0]
    with session_scope(tiny_home.url) as s:
        for r in repo.list_reports(s):  # closed, so that the same issues may be reported again
            repo.set_report_status(s, r.id, "rejected", reason="closed for this test")
    narrow = monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=1, per_window=200, treat=False,
                          watch=Watch((pathology,), (kind,)))
    assert {m.pathology for m in narrow.monitor.metrics} == {pathology}
    assert all(set(m.breaches) <= {kind} for m in narrow.monitor.metrics)
    breached = any(kind in m.breaches for m in narrow.monitor.metrics)
    assert {(r["pathology"], r["kind"]) for r in narrow.monitor.reports} == ({(pathology, kind)} if breached else set())
    assert narrow.monitor.watched == f"{pathology} ({kind})"
    with session_scope(tiny_home.url, read_only=True) as s:
        recorded = len(repo.list_datasets(s, role="feedback", site="site-b"))
    with pytest.raises(Exception, match="unknown pathology Heart"):
        monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=2, per_window=200, treat=False,
                     watch=Watch(("Heart",)))
    with pytest.raises(Exception, match="unknown issue kind"):
        monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=2, per_window=200, treat=False,
                     watch=Watch((), ("drift",)))
    with session_scope(tiny_home.url, read_only=True) as s:  # refused before anything was recorded
        assert len(repo.list_datasets(s, role="feedback", site="site-b")) == recorded
