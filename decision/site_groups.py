"""Which open reports are treated together as one site-level decision. A pure function.

A site's films can be the cause of several reports at once: in the demo, site-b's five false-positive
reports (Atelectasis, Fibrosis, Pneumonia, Pleural_Thickening, Nodule) were each diagnosed as the same
input-level shift at site-b and each climbed its own ladder — two F re-optimizations and an augmentation
retrain, each aimed at one pathology, while the cause is the site's acquisition. A backbone treatment fixes
such a cause for every output at once, so it is run once for the site.

The rule (`group_reports`): reports group when they have

* the same site (a report without a site never groups),
* the same serving version (the parent every rung of the group would treat),
* the same shift diagnosis level at that site on that version, input- or feature-level (an output-level
  shift or none says nothing about a shared cause upstream of the head), and
* had their per-report cheap rungs tried (`cheap_tried`): the head-level rungs — threshold calibration,
  surgery, head retrain — move one pathology's threshold or classifier row in seconds to a minute, so each
  report tries them alone first, and only what they leave unfixed goes on to the site.

A group holds at least `min_reports` reports; a report that has had its cheap rungs but finds no partner
is `alone` (it climbs its backbone rungs by itself, as it would without grouping). Reports whose cheap
rungs have not been tried are in neither list: they are not ready. The output is ordered (site, version,
level, then report ids), so the same input always gives the same groups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["GROUPED_LEVELS", "GroupFacts", "Grouping", "SiteGroup", "group_reports"]

#: the shift levels whose cause lies upstream of the head, shared by every output
GROUPED_LEVELS = frozenset({"input", "feature"})


@dataclass(frozen=True)
class GroupFacts:
    """What the rule needs of one report: its site, the version serving it, the recorded (or computed) shift
    diagnosis level at that site on that version (None: none known), and whether its cheap rungs were tried."""

    report_id: int
    site: str | None
    version_id: int
    level: str | None
    cheap_tried: bool


@dataclass(frozen=True)
class SiteGroup:
    """Reports treated as one: at `site`, on version `version_id`, under a `level`-level shift."""

    site: str
    version_id: int
    level: str
    report_ids: tuple[int, ...]


@dataclass(frozen=True)
class Grouping:
    """The groups, and the ready reports that found no partner (`alone`)."""

    groups: tuple[SiteGroup, ...]
    alone: tuple[int, ...]


def group_reports(facts: Iterable[GroupFacts], min_reports: int = 2) -> Grouping:
    """Group ready reports by (site, serving version, diagnosis level); see the module docstring.

    Takes the facts of any reports (not-ready ones are ignored) and the smallest group size (>= 2).
    Raises ValueError for `min_reports` < 2 or a report id given twice.
    """
    if min_reports < 2:
        raise ValueError(f"a group needs at least 2 reports, not {min_reports}")
    facts = list(facts)
    ids = [f.report_id for f in facts]
    if len(ids) != len(set(ids)):
        raise ValueError("a report appears twice in the grouping facts")
    buckets: dict[tuple[str, int, str], list[int]] = {}
    alone: list[int] = []
    for f in facts:
        if not f.cheap_tried:
            continue
        if not f.site or f.level not in GROUPED_LEVELS:
            alone.append(f.report_id)
            continue
        buckets.setdefault((f.site, f.version_id, f.level), []).append(f.report_id)
    groups = []
    for (site, version_id, level), members in sorted(buckets.items()):
        if len(members) >= min_reports:
            groups.append(SiteGroup(site, version_id, level, tuple(sorted(members))))
        else:
            alone += members
    return Grouping(tuple(groups), tuple(sorted(alone)))
