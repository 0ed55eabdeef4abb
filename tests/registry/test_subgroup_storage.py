"""Per-subgroup results travel with the evaluation: computed by `evaluate_scores`, stored in
`evaluations.subgroups`, read back, exported, diffed, and shown by `decide show` / `decide diff`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from cxr.errors import InvalidInput
from decision.evaluate import evaluate_scores
from decision.subgroups import SubgroupInput, SubgroupSettings, group_columns
from registry import repo
from registry.export import export_all
from registry.session import session_scope
from tests.registry import factories as f

SETTINGS = SubgroupSettings(intersections=(("sex", "view"),), min_positives=15, min_negatives=15, margin=0.05)


def _evaluation(seed: int):
    rng = np.random.default_rng(seed)
    n, p = 500, len(f.PATHOLOGIES)
    y = (rng.random((n, p)) < 0.2).astype(float)
    s = 1 / (1 + np.exp(-(rng.normal(size=(n, p)) + 1.5 * y - 1)))
    cols = group_columns(rng.choice(["F", "M"], n), rng.integers(20, 90, n), rng.choice(["AP", "PA"], n),
                         ["site-a"] * n, SETTINGS)
    return evaluate_scores(y, s, None, [0.4] * p, f.PATHOLOGIES, subgroups=SubgroupInput(cols, SETTINGS))


def test_rows_carry_every_group_of_their_pathology():
    ev = _evaluation(0)
    rows = ev.to_rows()
    assert sum(len(r["subgroups"]) for r in rows) == len(ev.subgroups) > 0
    for r in rows:
        assert {g["pathology"] for g in r["subgroups"]} == {r["pathology"]}
        # sex 2 + age bands 3 + view 2 + site 1 + sex & view 4
        assert len(r["subgroups"]) == 12
    assert "subgroups" not in evaluate_scores(np.ones((3, 1)), np.ones((3, 1))).to_rows()[0]


def test_stored_read_back_exported_and_diffed(db_url):
    ev1, ev2 = _evaluation(0), _evaluation(1)
    with session_scope() as s:
        ds = repo.get_or_create_dataset(s, "val", "evaluation", "d" * 64, 500)
        v1 = f.version(s, evaluations={ds.id: ev1.to_rows()})
        v2 = f.version(s, parent_id=v1.id, payload=b"weights-2", evaluations={ds.id: ev2.to_rows()})
        plain = f.version(s, payload=b"weights-3", evaluations={ds.id: f.eval_rows()})
    with session_scope(read_only=True) as s:
        got = repo.list_evaluations(s, v1.id)
        exported = export_all(s)
        d = repo.diff_versions(s, v1.id, v2.id)
        none = repo.diff_versions(s, v1.id, plain.id)
        assert all(e.subgroups is None for e in repo.list_evaluations(s, plain.id))
    stored = [g for e in got for g in e.subgroups]
    assert stored == [g.as_dict() for g in ev1.subgroups]
    ex = [g for e in exported["evaluations"] if e["version_id"] == v1.id for g in e["subgroups"]]
    assert ex == json.loads(json.dumps(stored))
    assert len(d.subgroups) == len(ev1.subgroups) and none.subgroups == []
    one = next(r for r in d.subgroups if (r["pathology"], r["attribute"], r["group"]) == ("Effusion", "sex", "F"))
    a = next(g for g in ev1.subgroups if (g.pathology, g.attribute, g.group) == ("Effusion", "sex", "F"))
    b = next(g for g in ev2.subgroups if (g.pathology, g.attribute, g.group) == ("Effusion", "sex", "F"))
    assert one["auroc"]["delta"] == pytest.approx(b.auroc - a.auroc)


def test_non_finite_or_unnamed_subgroups_are_refused(db_url):
    rows = f.eval_rows()
    with session_scope() as s:
        ds = repo.get_or_create_dataset(s, "val", "evaluation", "d" * 64, 10)
        for bad in ([{"attribute": "sex", "group": "F", "auroc": float("nan")}], [{"group": "F"}], "sex"):
            with pytest.raises(InvalidInput, match="subgroups"):
                f.version(s, evaluations={ds.id: [{**rows[0], "subgroups": bad}, *rows[1:]]})


def test_show_and_diff_list_the_groups(db_url, wide_console):
    ev1, ev2 = _evaluation(0), _evaluation(1)
    with session_scope() as s:
        ds = repo.get_or_create_dataset(s, "val", "evaluation", "d" * 64, 500)
        v1 = f.version(s, evaluations={ds.id: ev1.to_rows()})
        f.version(s, parent_id=v1.id, payload=b"weights-2", evaluations={ds.id: ev2.to_rows()})
    runner = CliRunner()
    res = runner.invoke(app, ["show", "cxr:1", "--subgroups"])
    assert res.exit_code == 0, res.output
    small = sum(not g.judgeable for g in ev1.subgroups)
    assert f"subgroups: {len(ev1.subgroups)} results ({small} too small to judge" in res.output
    assert "F & AP" in res.output and "too small" in res.output
    res = runner.invoke(app, ["show", "cxr:1", "--json"])
    shown = [g for e in json.loads(res.stdout)["evaluations"] for g in e["subgroups"]]
    assert len(shown) == len(ev1.subgroups)
    res = runner.invoke(app, ["diff", "cxr:1", "cxr:2", "--subgroups"])
    assert res.exit_code == 0, res.output
    assert f"subgroups on val: {len(ev1.subgroups)} compared" in res.output
    assert len(json.loads(runner.invoke(app, ["diff", "cxr:1", "cxr:2", "--json"]).stdout)["subgroups"]) == 36
