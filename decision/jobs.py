"""One monitoring pass: a feedback window → monitor → ingest → decide → treat.

This is the unit of work of `decide monitor run` and of every scheduled pass.
A feedback source is a data-source string: `phantom:SITE` replays the
phantom's labelled feedback of that site one window (a week) at a time,
`folder:DIR[:CSV]` and `nih:DIR` read a user's labelled studies as one window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cxr import clock
from cxr.data import CXRDataset
from cxr.errors import InvalidInput
from cxr.kinds import LABELLED_KINDS
from cxr.sources import open_recorded
from decision.catalog import record_dataset
from decision.engine import Engine, PassSummary
from decision.error_reports import ingest, parse_report
from decision.monitor import SiteMetrics, assess
from decision.unlabelled import UnlabelledResult, assess_unlabelled, check_realised
from registry import repo
from registry.entities import PRODUCTION, DatasetEntity, DatasetRole, IngestResult, ReportStatus
from registry.session import session_scope

log = logging.getLogger(__name__)

#: a site's phantom week 0 starts on the Monday at least this long before its first pass (see `phantom_epoch`)
PHANTOM_HEAD_START = timedelta(weeks=52)


@dataclass(frozen=True)
class Window:
    index: int
    start: datetime
    end: datetime


def _week_prefix(site: str) -> str:
    return f"feedback-{site}-week"  # + the 1-based week: the name a replayed phantom week is registered under


def next_window_index(source: str, site: str, url: str | None = None, *, unlabelled: bool = False) -> int:
    """The feedback window a manual pass reads by default: the one after the latest recorded for `site`
    (labelled, or with `unlabelled` unlabelled: labels for a week judged unlabelled come later, as its own pass).

    Only `phantom:` sources replay numbered weeks; a folder or NIH source is one window (0).
    """
    if not source.startswith("phantom"):
        return 0
    prefix = _week_prefix(site)
    role = DatasetRole.unlabelled if unlabelled else DatasetRole.feedback
    with session_scope(url, read_only=True) as s:
        weeks = [int(d.name[len(prefix):]) for d in repo.list_datasets(s, role=role, site=site)
                 if d.name.startswith(prefix) and d.name[len(prefix):].isdigit()]
    return max(weeks, default=0)


def _monday_on_or_before(t: datetime) -> datetime:
    day = t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def phantom_epoch(site: str, url: str | None = None) -> datetime:
    """Where week 0 (index 0) of `site`'s phantom feedback starts in the registry at `url`.

    The registry remembers it: every replayed phantom week is recorded as a feedback data set whose
    source holds its window (`source["window"]`), and week k starts 7·k days after the epoch, so the
    earliest recorded week of `site` gives it back. A site not replayed yet gets the Monday 00:00 UTC at
    least `PHANTOM_HEAD_START` (52 weeks) before now; its first pass records a week and with it fixes
    the epoch for the registry's life. Hence:

    * one (site, index) is one window in one registry, on any later day and with the clock moved, so
      monitoring a week again ingests identical reports (a no-op);
    * later indexes are later weeks;
    * week k ends 51 − k weeks or more before the site's first pass. A weekly schedule advances one index
      a week, as fast as the calendar, so its windows stay about a year in the past; only replaying many
      times faster than weekly reaches a future week, and only past index 51 — more weeks than a site's
      phantom feedback holds at the default 1,000 studies a week (site-a, the largest, has about 8,000).

    Two first passes of one site that straddle Monday 00:00 UTC in two processes pick different epochs;
    the one recorded first is read back from then on. Weeks recorded before windows were (no `window` in
    their source) are not read: such a registry starts a new epoch.
    """
    prefix = _week_prefix(site)
    with session_scope(url, read_only=True) as s:
        weeks = repo.list_datasets(s, role=DatasetRole.feedback, site=site) + repo.list_datasets(
            s, role=DatasetRole.unlabelled, site=site)
        for d in sorted(weeks, key=lambda d: d.id):  # oldest first, labelled or not
            week = d.name[len(prefix):]
            if d.name.startswith(prefix) and week.isdigit() and d.source.get("window"):
                return datetime.fromisoformat(d.source["window"][0]) - timedelta(weeks=int(week) - 1)
    return _monday_on_or_before(clock.now() - PHANTOM_HEAD_START)


def feedback_source(source: str, site: str, index: int, per_window: int, resolution: int, seed: int = 0, *,
                    epoch: datetime | None = None) -> tuple[dict[str, Any], Window]:
    """The recorded-source dict and time window of feedback window `index` of `source`.

    `epoch`: where a phantom source's week 0 starts — `phantom_epoch(site, url)` for a pass on a registry;
    by default the epoch of a site not replayed yet (the Monday 52 weeks or more before now).
    """
    kind, _, rest = source.partition(":")
    if kind == "phantom":
        if rest and rest != site:
            raise InvalidInput(f"source is {rest} but --site is {site}", field="site")
        start = (epoch or _monday_on_or_before(clock.now() - PHANTOM_HEAD_START)) + timedelta(weeks=index)
        end = start + timedelta(weeks=1)
        src = {"kind": "phantom", "site": site, "split": "feedback", "n": per_window * (index + 1),
               "rows": [per_window * index, per_window * (index + 1)], "resolution": resolution, "seed": seed,
               "missing_sign_rate": 0.10, "name": f"{_week_prefix(site)}{index + 1}",
               "window": [start.isoformat(), end.isoformat()]}  # read back by `phantom_epoch`
        return src, Window(index, start, end)
    if kind == "films":  # a folder of unlabelled films: one window ending now
        now = clock.now().replace(microsecond=0)
        src = {"kind": "films", "folder": str(Path(rest).expanduser().resolve()), "resolution": resolution,
               "site": site, "name": f"films-{site}-{now:%Y%m%d}"}
        return src, Window(index, now - timedelta(days=7), now)
    if kind in ("folder", "nih"):
        folder, _, csv = rest.partition(":")
        now = clock.now().replace(microsecond=0)
        # A feedback folder is feedback, all of it (not the "feedback" share of a patient split).
        src = {"kind": kind, "folder": folder, "csv": csv or None, "split": "all", "resolution": resolution,
               "seed": seed, "site": site, "name": f"feedback-{site}-{now:%Y%m%d}"}
        return src, Window(index, now - timedelta(days=7), now)
    raise InvalidInput(f"unknown feedback source {source!r}; expected phantom:SITE, folder:DIR[:CSV], nih:DIR or "
                       "films:DIR", field="source")


@dataclass
class MonitorResult:
    version: str
    dataset: DatasetEntity
    window: Window
    metrics: list[SiteMetrics]
    reports: list[dict[str, Any]]
    ingested: IngestResult
    persisting: list[dict[str, Any]] = field(default_factory=list)  # breaches of issues already reported
    watched: str = "every pathology"  # `Watch.describe()`
    #: the label-free estimates recorded for this window, against its labels (`unlabelled.check_realised`)
    realised: dict[str, Any] | None = None


@dataclass
class JobResult:
    monitor: MonitorResult | UnlabelledResult
    pass_summary: PassSummary
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Watch:
    """What a monitoring pass reports on: every output with an SLO (the default), or only some pathologies
    and issue kinds — e.g. what a site's radiologists audit ("Cardiomegaly", "false_positives")."""

    pathologies: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    def validate(self, names: list[str]) -> None:
        unknown = sorted(set(self.pathologies) - set(names))
        if unknown:
            raise InvalidInput(f"unknown pathology {', '.join(unknown)}; the model's outputs are "
                               f"{', '.join(n for n in names if n)}", field="pathology")
        bad = sorted(set(self.kinds) - set(LABELLED_KINDS))
        if bad:
            raise InvalidInput(f"unknown issue kind {', '.join(bad)}; choose from {', '.join(LABELLED_KINDS)}",
                               field="kind")

    def names(self, names: list[str]) -> list[str]:
        """The model's output names with the unwatched ones blanked (`assess` skips a blank name)."""
        return [n if not self.pathologies or n in self.pathologies else "" for n in names]

    def kind(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds

    def describe(self) -> str:
        return (", ".join(self.pathologies) or "every pathology") + (f" ({', '.join(self.kinds)})" if self.kinds
                                                                     else "")


def monitor_window(engine: Engine, model: str, ds: CXRDataset, source: dict[str, Any], site: str,
                   window: Window, watch: Watch = Watch()) -> MonitorResult:
    """Score a labelled window with the production version and ingest the reports its SLO breaches call for
    (of the watched pathologies and issue kinds only, when `watch` narrows them)."""
    ds = ds if set(ds.sites) == {site} else _with_site(ds, site)
    with session_scope(engine.url) as s:
        # The version serving this site (its own production@site, else production) at this site's operating
        # points: a site whose report was fixed by its own threshold is judged by that threshold.
        prod = repo.resolve_version(s, f"{model}@{PRODUCTION}", site=site)
        watch.validate(list(prod.pathologies))  # before anything is recorded
        dataset = record_dataset(s, ds, "feedback", source)
    engine.catalog.attach(dataset, ds)
    w = engine.catalog.weights(prod)
    probs = engine.catalog.probabilities(w, dataset)
    names = list(w.spec.pathologies)
    labels, thresholds = ds.aligned_labels(names), prod.thresholds_for(site)
    metrics, raw = assess(model, prod.version, thresholds, watch.names(names), labels, probs, list(ds.image_ids),
                          list(ds.sites), engine.policy, (window.start, window.end))
    from decision.subgroup_monitor import report_key, standing_report, subgroup_reports  # a group breaching alone

    raw += subgroup_reports(model, prod.version, thresholds, watch.names(names), labels, probs, ds, engine.policy,
                            (window.start, window.end), site_reports=raw, site_metrics=metrics)
    raw = [r for r in raw if watch.kind(r["kind"])]
    for m in metrics:
        m.breaches = [b for b in m.breaches if watch.kind(b)]
    with session_scope(engine.url) as s:
        # An issue already reported and not yet resolved is not reported again each window: the
        # open report (its decision may await approval) still stands for it.
        unresolved = {(r.site, r.subgroup, r.pathology, r.kind.value): r.id for r in repo.list_reports(s, model=model)
                      if r.status in (ReportStatus.open, ReportStatus.claimed, ReportStatus.decided)
                      and (r.window_start, r.window_end) != (window.start, window.end)}
        persisting = {report_key(r): rid for r in raw if (rid := standing_report(r, unresolved)) is not None}
        fresh = [r for r in raw if report_key(r) not in persisting]
        parsed = [parse_report(r) for r in fresh]
        result = ingest(s, parsed, default_source="monitor") if parsed else IngestResult([], 0, 0)
    log.info("monitor %s at %s week %d: %d breach(es), %d new report(s), %d still open", prod.ref, site,
             window.index + 1, len(raw), result.created, len(persisting))
    still = [{"site": k[0], "subgroup": k[1], "pathology": k[2], "kind": k[3], "report_id": v}
             for k, v in persisting.items()]
    realised = check_realised(engine, prod, ds, probs, site, window)
    return MonitorResult(prod.ref, dataset, window, metrics, fresh, result, still, watch.describe(), realised)


def _with_site(ds: CXRDataset, site: str) -> CXRDataset:
    from dataclasses import replace

    return replace(ds, sites=(site,) * len(ds))


def monitor_pass(engine: Engine, model: str, source: str, site: str, *, index: int = 0, per_window: int = 1000,
                 max_cost: float | None = None, treat: bool = True, stale_after: timedelta | None = None,
                 watch: Watch = Watch(), unlabelled: bool = False) -> JobResult:
    """One pass: open feedback window `index`, monitor it (the `watch`ed pathologies and kinds; with
    `unlabelled`, without reading its labels: `decision.unlabelled`), then let the engine treat open reports.

    `stale_after`: how long a run may go without a heartbeat before the engine marks it
    abandoned and reopens its report (default: `Engine.run_pass`'s).
    """
    import time

    t0 = time.perf_counter()
    with session_scope(engine.url, read_only=True) as s:
        prod = repo.resolve_version(s, f"{model}@{PRODUCTION}")
    from cxr.spec import ArchSpec

    resolution = ArchSpec.from_json(prod.spec_json).resolution
    if source.startswith("films:") and not unlabelled:
        raise InvalidInput(f"{source} holds films without labels: monitor it with --unlabelled", field="source")
    epoch = phantom_epoch(site, engine.url) if source.startswith("phantom") else None
    src, window = feedback_source(source, site, index, per_window, resolution, epoch=epoch)
    ds = open_recorded(src, cache_dir=Path(engine.home) / "cache")
    mon = (assess_unlabelled(engine, model, ds, src, site, window) if unlabelled
           else monitor_window(engine, model, ds, src, site, window, watch))
    recover = {} if stale_after is None else {"stale_after": stale_after}
    summary = engine.run_pass(max_cost=max_cost, **recover) if treat else PassSummary(worker=engine.worker)
    return JobResult(mon, summary, time.perf_counter() - t0)
