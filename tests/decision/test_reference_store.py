"""A version's reference statistics are computed once from its calibration split, stored with the version
(blob + registry row, audited, exported) and read back identical; a version without a calibration split
has none, and says why."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.errors import NotFound
from decision.catalog import Catalog
from decision.reference import reference_for
from registry import audit, repo
from registry.export import export_all
from registry.session import session_scope

pytestmark = pytest.mark.xdist_group("tiny-home")


def test_computed_once_stored_with_the_version_and_read_back_the_same(tiny_home):
    with session_scope(tiny_home.url, read_only=True) as s:
        v = repo.resolve_version(s, "cxr@production")
        cal = [d for d in repo.list_datasets(s, ids=v.dataset_ids) if d.role == "calibration"]
    first = reference_for(Catalog(tiny_home.home), tiny_home.url, v)
    assert first.drift.scores.shape[0] == sum(d.size for d in cal) and first.meta["datasets"] == [d.id for d in cal]
    again = reference_for(Catalog(tiny_home.home), tiny_home.url, v)  # a new process: from the registry
    assert np.array_equal(again.drift.features, first.drift.features) and set(again.maps) == set(first.maps)
    probe = first.drift.features[:5]
    assert np.array_equal(again.ood.features.distance(probe), first.ood.features.distance(probe))
    with session_scope(tiny_home.url, read_only=True) as s:
        row = repo.get_reference(s, v.id)
        exported = export_all(s)
        assert [e.action for e in audit.list_events(s) if e.action == "reference.create"] == ["reference.create"]
    assert row.summary["n_calibration"] == first.drift.scores.shape[0]
    assert row.summary["estimated"] == sorted(first.maps)
    assert [r["version_id"] for r in exported["references"]] == [v.id]
    assert row.digest in {b["digest"] for b in exported["blobs"]}


def test_a_version_without_a_calibration_split_has_no_reference(tiny_home):
    with session_scope(tiny_home.url) as s:
        v = repo.resolve_version(s, "cxr@production")
        bare = repo.derive_version(s, v.id, reason="a copy registered without its data links")
    with pytest.raises(NotFound, match="no calibration split"):
        reference_for(Catalog(tiny_home.home), tiny_home.url, bare)
