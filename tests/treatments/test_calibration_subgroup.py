"""Threshold calibration for a subgroup report chooses the operating point on that subgroup's cases, and says
that the model's operating point is per site, not per subgroup."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cxr.nih import load_nih_metadata
from treatments.base import FeatureSplit, TreatmentDeclined
from treatments.calibration import ThresholdCalibration
from treatments.subgroup_split import PER_SITE_ONLY


def _nih_named(split: FeatureSplit, site: str) -> tuple[FeatureSplit, np.ndarray]:
    """The same rows, renamed after real NIH films (as phantom films are: SITE/IMAGE), half AP, half PA at `site`;
    returns the split and each row's NIH view (True = AP)."""
    meta = load_nih_metadata()
    ap, pa = np.flatnonzero(meta.view_ap), np.flatnonzero(~meta.view_ap)
    at = [i for i, s in enumerate(split.sites) if s == site]
    rows = np.empty(len(split), dtype=np.int64)
    rows[at] = np.concatenate([ap, pa])[np.r_[0:len(at) // 2, len(ap):len(ap) + len(at) - len(at) // 2]]
    others = [i for i in range(len(split)) if split.sites[i] != site]
    rows[others] = pa[len(at):len(at) + len(others)]
    ids = tuple(f"{split.sites[i]}/{meta.image_index[rows[i]].removesuffix('.png')}" for i in range(len(split)))
    return dataclasses.replace(split, image_ids=ids), meta.view_ap[rows]


def test_a_subgroup_report_is_calibrated_on_the_subgroups_cases(world):
    cal, is_ap = _nih_named(world.calibration, "site-b")
    ctx = dataclasses.replace(world, calibration=cal)
    sub = dataclasses.replace(ctx, report=dataclasses.replace(ctx.report, subgroup="view=AP"))
    result = ThresholdCalibration().apply(sub)
    # The reference: the whole-site treatment on a calibration split that holds only site-b's AP films.
    only_ap = cal.rows(np.array([s == "site-b" for s in cal.sites]) & is_ap)
    ref = ThresholdCalibration().apply(dataclasses.replace(ctx, calibration=only_ap,
                                                           params={"min_site_cases": 1}))
    assert result.thresholds["Cardiomegaly"] == ref.thresholds["Cardiomegaly"]
    assert result.artifacts["calibration_rows"] == "site site-b, AP films only"
    assert PER_SITE_ONLY in result.notes and f"on {len(only_ap)} calibration cases" in result.notes
    whole = ThresholdCalibration().apply(ctx)  # the same report about the whole site chooses on every site-b film
    assert PER_SITE_ONLY not in whole.notes and "(site site-b)" in whole.notes


def test_too_few_cases_of_the_subgroup_decline_and_say_why(world):
    sub = dataclasses.replace(world, report=dataclasses.replace(world.report, subgroup="view=AP"))
    # the world's own ids match no NIH film: no case is known to be AP
    with pytest.raises(TreatmentDeclined, match=r"only 0 calibration case\(s\) of AP films .* per site"):
        ThresholdCalibration().apply(sub)
