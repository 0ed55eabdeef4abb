"""Per-site operating points and aliases: overrides, `production@site`, statuses, rollback, migration."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from cxr.errors import InvalidInput, NotFound
from registry import audit, repo
from registry.entities import VersionStatus
from registry.session import downgrade, get_engine, session_scope, upgrade
from tests.registry import factories as f


def test_a_site_override_changes_that_site_only(db_url):
    with session_scope() as s:
        v1 = f.version(s, thresholds={"Effusion": 0.3, "Cardiomegaly": 0.5})
        v2 = repo.derive_version(s, v1.id, site_thresholds={"site-b": {"Cardiomegaly": 0.8}}, reason="site-b FPR")
        v3 = repo.derive_version(s, v2.id, site_thresholds={"site-b": {"Effusion": 0.4}}, reason="again")
    assert v2.thresholds == v1.thresholds  # the defaults every other site uses are untouched
    assert v2.thresholds_for("site-b") == {"Effusion": 0.3, "Cardiomegaly": 0.8}
    assert v2.thresholds_for("site-a") == v1.thresholds == v2.thresholds_for(None)
    assert v3.site_thresholds == {"site-b": {"Cardiomegaly": 0.8, "Effusion": 0.4}}  # overrides accumulate
    with session_scope(read_only=True) as s:
        d = repo.diff_versions(s, v1.id, v2.id)
        event = audit.list_events(s, entity_type="model_version", entity_id=v2.id)[0]
    assert d.thresholds == {"Cardiomegaly@site-b": {"a": 0.5, "b": 0.8}}
    assert event.new["site_thresholds"] == {"site-b": {"Cardiomegaly": 0.8}}


def test_overrides_are_validated(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        with pytest.raises(InvalidInput, match="not one of"):
            repo.derive_version(s, v1.id, site_thresholds={"site-b": {"Nope": 0.5}})
        with pytest.raises(InvalidInput, match="site names"):
            repo.derive_version(s, v1.id, site_thresholds={"../etc": {"Effusion": 0.5}})
        with pytest.raises(InvalidInput):
            repo.derive_version(s, v1.id, site_thresholds={"site-b": {"Effusion": 1.5}})


def test_a_site_alias_wins_at_its_site_and_only_there(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        v2 = f.version(s, parent_id=v1.id, payload=b"w2")
        repo.set_alias(s, "cxr", "production", v1.id, reason="baseline")
        moved = repo.set_alias(s, "cxr", "production", v2.id, reason="site-b fix", site="site-b")
    assert moved.label == "production@site-b"
    with session_scope(read_only=True) as s:
        assert repo.resolve_version(s, "cxr@production").id == v1.id
        assert repo.resolve_version(s, "cxr@production", site="site-b").id == v2.id
        assert repo.resolve_version(s, "cxr@production", site="site-a").id == v1.id  # falls back to every site's
        assert repo.resolve_version(s, "cxr@production@site-b").id == v2.id
        with pytest.raises(NotFound, match="production@site-a"):
            repo.resolve_version(s, "cxr@production@site-a")
        # Both serve a site: both are production.
        assert repo.get_version(s, v1.id).status == VersionStatus.production
        assert repo.get_version(s, v2.id).status == VersionStatus.production
        assert repo.get_version(s, v2.id).aliases == ["production@site-b"]
        assert repo.sites_with_own_alias(s, "cxr") == {"site-b": v2.id}
        moves = repo.alias_moves(s, "cxr")
        events = audit.list_events(s, entity_type="alias", entity_id="cxr@production@site-b")
    assert [(m.alias, m.site, m.to_version) for m in moves] == [("production", "", 1), ("production", "site-b", 2)]
    assert events[0].new == {"version": "cxr:2", "site": "site-b", "grant": "override", "run_id": None}


def test_a_version_is_archived_only_when_no_site_runs_it(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        v2 = f.version(s, parent_id=v1.id, payload=b"w2")
        v3 = f.version(s, parent_id=v1.id, payload=b"w3")
        repo.set_alias(s, "cxr", "production", v1.id, reason="baseline")
        repo.set_alias(s, "cxr", "production", v1.id, site="site-b", reason="pinned")  # site-b pinned to v1
        repo.set_alias(s, "cxr", "production", v2.id, reason="site-a moves on")
        assert repo.get_version(s, v1.id).status == VersionStatus.production  # site-b still runs it
        repo.set_alias(s, "cxr", "production", v3.id, site="site-b", reason="site-b moves on")
        assert repo.get_version(s, v1.id).status == VersionStatus.archived
        repo.rollback(s, v1.id, reason="site-b back to the baseline", site="site-b")
        assert repo.resolve_version(s, "cxr@production", site="site-b").id == v1.id
        assert repo.get_version(s, v3.id).status == VersionStatus.archived
        assert repo.resolve_version(s, "cxr@production").id == v2.id  # the other sites were not touched
        repo.drop_site_alias(s, "cxr", "site-b", reason="site-b follows everyone again")
        assert repo.resolve_version(s, "cxr@production", site="site-b").id == v2.id
        assert repo.get_version(s, v1.id).status == VersionStatus.archived
        with pytest.raises(InvalidInput, match="reason"):
            repo.drop_site_alias(s, "cxr", "site-a", reason=" ")
        with pytest.raises(NotFound):
            repo.drop_site_alias(s, "cxr", "site-a", reason="none there")
        assert audit.verify_chain(s).ok


def test_existing_aliases_survive_the_migration_and_site_aliases_block_its_downgrade(db_url):
    with session_scope() as s:
        v1 = f.version(s, thresholds={"Effusion": 0.3})
        repo.set_alias(s, "cxr", "production", v1.id, reason="baseline")
    downgrade(db_url, "0002_scheduling")  # as a home from before per-site operating points
    with get_engine(db_url).connect() as c:
        assert c.execute(text("SELECT name FROM aliases")).scalars().all() == ["production"]
    upgrade(db_url)
    with session_scope(read_only=True) as s:
        prod = repo.resolve_version(s, "cxr@production", site="site-b")
        assert prod.id == v1.id and prod.site_thresholds == {} and prod.thresholds == {"Effusion": 0.3}
        assert [(a.alias, a.site) for a in repo.list_aliases(s, "cxr")] == [("production", "")]
    with session_scope() as s:
        repo.set_alias(s, "cxr", "production", v1.id, site="site-b", reason="pinned")
    with pytest.raises(Exception, match="site-scoped alias"):
        downgrade(db_url, "0002_scheduling")
