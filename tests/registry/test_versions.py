"""Registering versions: numbering, lineage, evaluations, thresholds-only children, aliases, refs."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from cxr.errors import InvalidInput, NotFound
from registry import audit, blobs, repo
from registry.entities import VersionStatus
from registry.models import EvaluationRow
from registry.session import session_scope
from tests.registry import factories as f


def test_register_writes_version_evaluations_and_one_audit_event(db_url):
    with session_scope() as s:
        ds = repo.get_or_create_dataset(s, "nih-val", "evaluation", "d" * 64, 500, {"split": "val"})
        v = f.version(s, thresholds={"Effusion": 0.3}, evaluations={ds.id: f.eval_rows()})
    assert (v.model, v.version, v.status, v.parent_id) == ("cxr", 1, VersionStatus.candidate, None)
    assert v.created_at.tzinfo is not None and v.dataset_ids == [ds.id]
    with session_scope(read_only=True) as s:
        got = repo.get_version(s, v.id)
        evals = repo.list_evaluations(s, v.id)
        events = audit.list_events(s, entity_type="model_version", entity_id=v.id)
    assert got.thresholds == {"Effusion": 0.3} and got.pathologies == f.PATHOLOGIES
    assert {e.pathology for e in evals} == set(f.PATHOLOGIES) and evals[0].dataset == "nih-val"
    assert [e.action for e in events] == ["version.register"]
    assert events[0].new["evaluations"] == 3 and events[0].actor == "tester"


def test_numbers_increase_per_model_and_lineage_is_recorded(db_url):
    with session_scope() as s:
        a1 = f.version(s)
        a2 = f.version(s, parent_id=a1.id, payload=b"w2")
        b1 = f.version(s, model="other", parent_id=a2.id)
    assert (a1.version, a2.version, b1.version) == (1, 2, 1)
    assert a2.parent_ref == "cxr:1" and b1.parent_ref == "cxr:2"


def test_thresholds_only_child_reuses_the_parent_blob(db_url):
    with session_scope() as s:
        p = f.version(s, thresholds={"Effusion": 0.5})
        c = repo.derive_version(s, p.id, thresholds={"Cardiomegaly": 0.2}, reason="calibrate")
    assert c.weights_digest == p.weights_digest and c.parent_id == p.id
    assert c.thresholds == {"Effusion": 0.5, "Cardiomegaly": 0.2}
    assert blobs.get_bytes(c.weights_digest) == b"weights-1"


@pytest.mark.parametrize(("thresholds", "field"), [
    ({"Nodule": 0.5}, "thresholds"),
    ({"Effusion": float("nan")}, "thresholds.Effusion"),
    ({"Effusion": 1.5}, "thresholds.Effusion"),
    ({"Effusion": "0.5"}, "thresholds.Effusion"),
])
def test_bad_thresholds_are_refused_and_nothing_is_written(db_url, thresholds, field):
    with pytest.raises(InvalidInput) as err, session_scope() as s:
        f.version(s, thresholds=thresholds)
    assert err.value.field == field
    with session_scope(read_only=True) as s:
        assert repo.list_versions(s) == [] and audit.list_events(s) == []


def test_bad_evaluation_rows_are_refused(db_url):
    rows = f.eval_rows()
    rows[1]["auroc"] = float("inf")
    with pytest.raises(InvalidInput, match=r"evaluations\[1\].auroc"), session_scope() as s:
        ds = repo.get_or_create_dataset(s, "x", "evaluation", "d" * 64, 1)
        f.version(s, evaluations={ds.id: rows})


def test_unknown_parent_and_unknown_blob(db_url):
    with pytest.raises(NotFound, match="parent"), session_scope() as s:
        f.version(s, parent_id=999)
    with pytest.raises(NotFound, match="not registered"), session_scope() as s:
        repo.register_version(s, "cxr", spec_json="{}", weights_digest="e" * 64, backbone_digest="b" * 64,
                              tensors_digest="c" * 64, pathologies=["A"], parameter_count=1)


def test_add_evaluations_bulk_and_duplicate_dataset_is_already_exists(db_url):
    from cxr.errors import AlreadyExists

    with session_scope() as s:
        v = f.version(s)
        ds = repo.get_or_create_dataset(s, "val", "evaluation", "d" * 64, 10)
        assert repo.add_evaluations(s, v.id, ds.id, f.eval_rows()) == 3
    with pytest.raises(AlreadyExists), session_scope() as s:
        repo.add_evaluations(s, v.id, ds.id, f.eval_rows())
    with session_scope(read_only=True) as s:
        assert s.scalar(select(func.count()).select_from(EvaluationRow)) == 3


def test_datasets_are_deduplicated(db_url):
    with session_scope() as s:
        a = repo.get_or_create_dataset(s, "val", "evaluation", "d" * 64, 10, {"path": "/x"})
        b = repo.get_or_create_dataset(s, "val", "evaluation", "d" * 64, 10)
        c = repo.get_or_create_dataset(s, "val", "calibration", "d" * 64, 10)
    assert a.id == b.id != c.id and a.source == {"path": "/x"}


def test_moving_production_archives_the_old_version_and_records_history(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        v2 = f.version(s, parent_id=v1.id, payload=b"w2")
        repo.set_alias(s, "cxr", "production", v1.id, reason="first", actor="alice")
        repo.set_alias(s, "cxr", "production", v2.id, reason="better", actor="bob")
    with session_scope(read_only=True) as s:
        h = repo.history(s, "cxr")
        assert [v.status for v in h.versions] == [VersionStatus.archived, VersionStatus.production]
    assert [(m.from_version, m.to_version, m.actor, m.reason) for m in h.moves] == [
        (None, 1, "alice", "first"), (1, 2, "bob", "better")]
    assert [(a.alias, a.version) for a in h.aliases] == [("production", 2)]
    with session_scope() as s:
        a = repo.rollback(s, v1.id, reason="regression at site-b")
        assert a.version == 1 and repo.get_version(s, v1.id).aliases == ["production"]
        assert repo.get_version(s, v2.id).status is VersionStatus.archived
        assert audit.list_events(s, entity_type="alias")[-1].action == "alias.rollback"


def test_rollback_needs_a_reason_and_rejected_versions_cannot_be_promoted(db_url):
    with session_scope() as s:
        v = f.version(s)
    with pytest.raises(InvalidInput, match="reason"), session_scope() as s:
        repo.rollback(s, v.id, reason=" ")
    with session_scope() as s:
        repo.set_version_status(s, v.id, "rejected", reason="gate")
    with pytest.raises(InvalidInput, match="rejected"), session_scope() as s:
        repo.set_alias(s, "cxr", "production", v.id)


def test_version_refs(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        v2 = f.version(s, parent_id=v1.id)
        repo.set_alias(s, "cxr", "production", v2.id, reason="better")
    with session_scope(read_only=True) as s:
        assert repo.resolve_version(s, "cxr:1").id == v1.id
        assert repo.resolve_version(s, "cxr@production").id == v2.id
        assert repo.resolve_version(s, "2").id == v2.id
        for bad, exc in [("cxr:9", NotFound), ("cxr@staging", NotFound), ("cxr:x", InvalidInput), ("", InvalidInput)]:
            with pytest.raises(exc):
                repo.resolve_version(s, bad)
    with session_scope() as s:
        f.version(s, model="second")
        with pytest.raises(InvalidInput, match="several models"):
            repo.resolve_version(s, "1")


def test_lineage_walks_ancestors_and_descendants(db_url):
    with session_scope() as s:
        chain = [f.version(s)]
        for _ in range(25):
            chain.append(f.version(s, parent_id=chain[-1].id))
        side = f.version(s, parent_id=chain[10].id)
        lin = repo.lineage(s, chain[10].id)
    assert [a.version for a in lin.ancestors] == list(range(10, 0, -1))
    assert [a.depth for a in lin.ancestors] == list(range(1, 11))
    assert {(d.version, d.depth) for d in lin.descendants} == (
        {(c.version, c.version - 11) for c in chain[11:]} | {(side.version, 1)})
    with pytest.raises(NotFound), session_scope() as s:
        repo.lineage(s, 10_000)


def test_diff_names_spec_threshold_metric_and_tensor_changes(db_url):
    with session_scope() as s:
        ds = repo.get_or_create_dataset(s, "val", "evaluation", "d" * 64, 10)
        a = f.version(s, thresholds={"Effusion": 0.5}, evaluations={ds.id: f.eval_rows(auroc=0.8)},
                      tensors={"w": "1", "classifier.weight": "2", "old": "3"})
        spec_b = f.SPEC.replace('"growth_rate": 4', '"growth_rate": 8')
        b = f.version(s, parent_id=a.id, payload=b"w2", spec=spec_b, thresholds={"Effusion": 0.4},
                      evaluations={ds.id: f.eval_rows(auroc=0.85)}, tensors={"w": "1", "classifier.weight": "9",
                                                                              "new": "4"})
        d = repo.diff_versions(s, a.id, b.id)
    assert d.spec == {"growth_rate": {"a": 4, "b": 8}}
    assert d.thresholds == {"Effusion": {"a": 0.5, "b": 0.4}}
    assert d.metrics_dataset == "val" and d.metrics["Effusion"]["auroc"]["delta"] == pytest.approx(0.05)
    assert (d.tensors_changed, d.tensors_added, d.tensors_removed) == (["classifier.weight"], ["new"], ["old"])
    assert not d.same_weights and d.same_backbone


def test_concurrent_registrations_get_distinct_numbers(db_url):
    import threading

    with session_scope() as s:
        f.version(s)
    errors, done = [], []

    def work():
        try:
            for _ in range(5):
                with session_scope() as s:
                    done.append(f.version(s).version)
        except Exception as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(done) == list(range(2, 17))
