"""End to end: an input-level shift that no head-level treatment fixes is fixed by re-training the first block.

`site-d` (see `cxr.phantom`) films site-c's catchment through a hard look-up table (gamma 2.5 on the
detector's contrast curve): the lung fields are crushed into the dark end, and the site-a model calls
Cardiomegaly on nearly every film there. A labelled week of site-d feedback gives the engine a
false-positive report. Threshold calibration cannot meet the target (the scores barely rank the films),
a head retrain on the frozen features cannot either (it moves the readout, not the features the curve
distorted), surgery finds no channel to cut; F re-optimization diagnoses the shift itself (input level:
the films differ already in their pixel statistics), re-trains the stem and the first dense block to give
site-d films rendered in the estimated style what the parent gave the originals, and passes the gate at
site-d. It serves site-d alone (`production@site-d`): at site-a the re-trained stem is a compromise.

Sizes: a 4-block DenseNet one layer per block (growth 8, 32 px, 18 outputs) trained 8 epochs on 3,000
site-a films; site-d: 2,000 feedback films (60 Cardiomegaly positives), 800 evaluation films. The F
re-optimization runs with fewer labelled epochs and a faster consistency schedule than the default
policy (the whole run is a few minutes on two cores, not an hour); notes/early-block.md has the figures.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import dates
from tests.e2e.ladder_checks import assert_calibration_tried_or_skipped_as_infeasible

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("early-block")]

SITE = "site-d"
TARGET = "Cardiomegaly"
#: the F re-optimization schedule of this test (the rest of the policy is the bundled default)
#: (lr 3e-3: with the schema's 1e-3 the labelled epochs barely move the stem and the target is met or missed
#: by chance — FPR 0.166 or 0.222 at site-d depending on which training rows are sampled; with lr 2e-3 to 5e-3
#: it was met in each of seven variations of lr, rows sampled, epochs and consistency schedule, FPR 0.13-0.16)
FREOPT = {"epochs": 6, "lr": 0.003, "consistency_epochs": 8, "consistency_lr": 0.01, "second_block": False,
          "max_rows": 5000, "consistency_films": 3000}


def _phantom(site, split, n, cache):
    from cxr.data import phantom_dataset
    from cxr.phantom import PhantomConfig

    src = {"kind": "phantom", "site": site, "split": split, "n": n, "resolution": 32, "seed": 0,
           "missing_sign_rate": 0.1}
    return phantom_dataset(PhantomConfig(site=site, split=split, n=n, resolution=32), cache_dir=cache), src


def _policy():
    from policies import load_policy, parse_policy

    raw = load_policy().model_dump(mode="json")
    raw["treatments"]["f_reoptimization"]["params"].update(FREOPT)
    return parse_policy(raw)


def _report(url, home, policy):
    """The false-positive report a week of site-d feedback gives, measured at the parent's operating point."""
    from decision.catalog import Catalog
    from decision.error_reports import ingest, parse_report
    from registry import repo
    from registry.entities import DatasetRole
    from registry.session import session_scope

    cat = Catalog(home)
    with session_scope(url, read_only=True) as s:
        v = repo.resolve_version(s, "cxr@production")
        fb = repo.list_datasets(s, role=DatasetRole.feedback, site=SITE)[0]
    w = cat.weights(v)
    names = list(w.spec.pathologies)
    j = names.index(TARGET)
    ds = cat.dataset(fb)
    y, p = ds.aligned_labels(names)[:, j], cat.probabilities(w, fb)[:, j]
    pred = p >= v.thresholds_for(SITE)[TARGET]
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    tn, fn = int((~pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())
    worst = [i for i in np.argsort(-p) if y[i] == 0][:20]
    rep = {"model": "cxr", "version": v.version, "pathology": TARGET, "kind": "false_positives", "metric": "fpr",
           "value": fp / (fp + tn), "target": policy.slos.for_pathology(TARGET).max_fpr, "site": SITE,
           "window_start": dates.day(7), "window_end": dates.day(14),
           "counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
           "cases": [{"image_id": ds.image_ids[i], "score": float(p[i]), "label": 0} for i in worst]}
    with session_scope(url) as s:
        ingest(s, [parse_report(rep)])
    return rep


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    from cxr.spec import ArchSpec
    from cxr.train import TrainConfig, train
    from cxr.weights import to_bytes
    from decision.baseline import DataBinding, register_baseline
    from decision.catalog import record_dataset
    from decision.engine import Engine
    from registry.session import dispose_engines, init_registry, session_scope

    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("early-block")
    url = f"sqlite:///{home / 'registry.db'}"
    cache = home / "cache"
    init_registry(url)
    policy = _policy()
    tr, cal = _phantom("site-a", "train", 3000, cache), _phantom("site-a", "calibration", 1500, cache)
    ev_a, ev_d = _phantom("site-a", "evaluation", 800, cache), _phantom(SITE, "evaluation", 800, cache)
    spec = ArchSpec(growth_rate=8, block_config=(1, 1, 1, 1), num_init_features=16, resolution=32)
    model = train(spec, tr[0], TrainConfig(epochs=8, batch_size=32, threads=1)).model
    _, weights = to_bytes(spec, model.state_dict())
    register_baseline(url, home, "cxr", weights, [DataBinding(tr[0], "train", tr[1]),
                                                  DataBinding(cal[0], "calibration", cal[1]),
                                                  DataBinding(ev_a[0], "evaluation", ev_a[1]),
                                                  DataBinding(ev_d[0], "evaluation", ev_d[1])], policy)
    fb = _phantom(SITE, "feedback", 2000, cache)
    with session_scope(url) as s:
        record_dataset(s, fb[0], "feedback", fb[1])
    report = _report(url, home, policy)
    engine = Engine(url, home, policy, worker="early-block")
    first = engine.run_pass()
    yield {"url": url, "home": home, "engine": engine, "report": report, "first": first}
    dispose_engines()


def _runs(first):
    return {r.treatment: r for r in first.decisions[0].runs}


def test_the_report_is_real_and_head_level_treatments_cannot_fix_it(world):
    rep = world["report"]
    assert rep["value"] > 0.5 > rep["target"], rep  # nearly every normal heart is called enlarged at site-d
    runs = _runs(world["first"])
    first = world["first"].decisions[0]
    order = [r.treatment for r in first.runs]
    tried = assert_calibration_tried_or_skipped_as_infeasible(order, first.plan.rationale)
    for name in tried:
        r = runs[name]
        assert r.outcome.value == "rejected", (name, r.outcome, r.gate.summary if r.gate else r.error)
        failed = [c for c in r.gate.checks if not c.passed and c.binding]
        assert any(c.name == f"target_fixed@phantom-{SITE}-evaluation" for c in failed), r.gate.summary


def test_f_reoptimization_of_the_first_block_chosen_by_the_diagnosis_passes_the_gate(world):
    from registry import repo
    from registry.entities import RunOutcome
    from registry.session import session_scope

    r = _runs(world["first"])["f_reoptimization"]
    assert r.outcome in (RunOutcome.accepted, RunOutcome.held), r.gate.summary if r.gate else r.error
    assert r.gate.passed, r.gate.summary
    with session_scope(world["url"], read_only=True) as s:
        art = repo.get_run(s, r.run_id).artifacts
    assert art["block"] == 1 and art["blocks_tried"] == [1] and art["stem"]
    assert art["diagnosis"]["level"] == "input" and art["diagnosis"]["blocks"][0] == 1
    assert "input-level" in art["block_reason"] and art["site_style"]["gamma"] > 1.5  # the hard curve, estimated
    site_checks = [c for c in r.gate.checks if c.name.endswith(f"@phantom-{SITE}-evaluation")]
    target = next(c for c in site_checks if c.name.startswith("target_fixed"))
    assert target.passed and "met" in target.detail
    for c in site_checks:  # every pathology at the site: non-inferior, or underpowered with no significant harm
        if c.name.startswith("noninferiority["):
            assert c.passed and c.binding, c.detail
            assert c.flag in (None, "", "underpowered", "unchanged") or "not evaluable" in c.detail, c.detail
    assert r.gate.scope in ("site", "all_sites")


def test_the_fix_serves_site_d_once_the_gate_or_a_person_accepts_it(world):
    from registry import repo
    from registry.entities import RunOutcome
    from registry.session import session_scope

    r = _runs(world["first"])["f_reoptimization"]
    if r.outcome == RunOutcome.held:  # underpowered checks: a second person approves
        with session_scope(world["url"]) as s:
            repo.approve_decision(s, world["first"].decisions[0].decision_id, actor="radiology-lead",
                                  reason="underpowered at site-d, no significant harm; target met")
        world["engine"].run_pass()
    with session_scope(world["url"], read_only=True) as s:
        assert repo.get_run(s, r.run_id).outcome == RunOutcome.accepted
        assert repo.resolve_version(s, "cxr@production", site=SITE).id == r.version.id
