"""A site group's candidate, after its treatment: the grouped pathologies' operating points at the site.

A backbone treatment run for a site group (`decision.site_groups`) is handed the group's lead report (the one
furthest from its target): it trains once, with the site's labelled feedback for every output (its loss
covers every labelled pathology; F re-optimization's consistency term undoes the site's style for all of
them), and chooses the lead's threshold itself. Every other grouped pathology's threshold is then chosen here,
on the candidate's scores over the site's calibration share (the version's calibration sets and the site's
labelled feedback, rows of that site), by the same rule the treatment used for the lead
(`treatments.operating.target_point`: the lowest threshold meeting a false-positive target under the recall
floor, or the recall floor for a false-negative report). They become overrides for the site alone, so no
other site's operating points move. The treatment saw these rows while training (except F re-optimization's
held-out share), so the held-out gate — which judges every grouped target — is what vouches for them.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from decision.catalog import Catalog, head_of
from decision.evidence import report_info, slo_for
from policies import Policy
from registry.entities import DatasetEntity, ReportEntity
from treatments.base import TreatmentContext, probabilities
from treatments.operating import target_point

log = logging.getLogger(__name__)

__all__ = ["group_site_thresholds"]


def group_site_thresholds(cat: Catalog, policy: Policy, ctx: TreatmentContext, cand_w, calibration: list[DatasetEntity],
                          site: str, others: tuple[ReportEntity, ...]) -> tuple[dict[str, float], list[str]]:
    """Thresholds at `site` for the pathologies of `others` (the group's reports but the lead) on the candidate
    `cand_w`'s scores over the site's calibration rows, and one note per pathology (chosen, or why not: a
    pathology without both classes at the site keeps the threshold the treatment returned)."""
    split = cat.split(cand_w, [d for d in calibration if d.source.get("site") == site] or calibration, "group")
    if split is None:
        return {}, ["no calibration rows: the treatment's thresholds kept"]
    here = split.for_site(site)
    probs = probabilities(here.features, *head_of(cand_w))
    names = list(cand_w.spec.pathologies)
    chosen: dict[str, float] = {}
    notes: list[str] = []
    for r in others:
        if r.pathology not in names:
            notes.append(f"{r.pathology}: not an output of the model")
            continue
        j = names.index(r.pathology)
        known = ~np.isnan(here.labels[:, j])
        y, s = here.labels[known, j].astype(int), probs[known, j]
        if not (y == 1).any() or not (y == 0).any():
            notes.append(f"{r.pathology}: kept (one class missing among {int(known.sum())} {site} rows)")
            continue
        sub = dataclasses.replace(ctx, report=report_info(r), slo=slo_for(policy, r.pathology))
        op, warning = target_point(sub, y, s)
        if op.threshold is None:
            notes.append(f"{r.pathology}: kept ({op.reason})")
            continue
        chosen[r.pathology] = float(op.threshold)
        notes.append(f"{r.pathology} {op.threshold:.4f} on {len(y)} {site} rows ({op.method})"
                     + (f"; {warning}" if warning else ""))
    return chosen, notes
