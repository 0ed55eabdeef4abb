"""The change record of a promoted version: its content, its schema, its page and the forest plots.

A real pass of the engine on the tiny registry (a Cardiomegaly false-positive report at site-b) promotes a
candidate that the gate judged per subgroup; its record must validate against the published schema, carry
every gate check exactly once, tie itself to the audit chain by the events' hashes, and open in headless
Chromium with its forest plot decoded.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from decision.documents.change_record import (
    change_record,
    change_records,
    policy_facts,
    promoted_version_ids,
    subgroup_deltas,
)
from decision.documents.change_record_html import write_record
from decision.documents.change_record_schema import change_record_schema
from decision.documents.forest import forest_png, record_forests, subgroup_forests
from decision.documents.registry_html import write_report
from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from policies import load_policy, parse_policy
from registry import repo
from registry.entities import DecisionStatus
from registry.export import export_all
from registry.session import session_scope
from tests import dates
from tests.decision.test_report_html import PNG_MAGIC, chromium_image_check
from treatments.base import TreatmentResult

pytestmark = pytest.mark.xdist_group("tiny-home")
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "change-record.schema.json"


def validator():
    """A validator of the published schema (jsonschema: a test-only dependency)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_the_published_schema_is_the_generated_one():
    assert json.loads(SCHEMA.read_text()) == change_record_schema()


TARGET = "Effusion"


class Nudge:
    """Nudges every classifier row, the target's included: every output changes a little, none systematically,
    so the candidate differs from its parent in every subgroup (and touches one tensor)."""

    name, fixes, head_only = "toy_nudge", frozenset({"false_positives"}), True

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        rng = np.random.default_rng(0)
        w = ctx.head_weight + rng.normal(0, 2e-2, ctx.head_weight.shape).astype(np.float32)
        return TreatmentResult(head_weight=w, trainable_parameters=int(w.size), notes="nudge <b>all</b> rows")


def _policy():
    raw = load_policy().model_dump(mode="json")
    raw["treatments"] = {"toy_nudge": {"prior_cost": 0.5, "fixes": ["false_positives"], "p_success_default": 0.9}}
    raw["gate"].update({"recall_floor": 0.01, "max_tp_loss_fraction": None})
    return parse_policy(raw)


@pytest.fixture
def promoted(tiny_home):
    return promote_one(tiny_home)


def promote_one(tiny_home):
    """(export, id of the promoted candidate, policy) after a pass on a site-b Effusion report (and, when the
    gate held the candidate for a person, that person's approval and the next pass)."""
    rep = {"model": "cxr", "version": 1, "pathology": TARGET, "kind": "false_positives", "metric": "fpr",
           "value": 0.99, "target": 0.999, "site": "site-b", "window_start": dates.day(1),
           "window_end": dates.day(2), "counts": {"tp": 5, "fp": 99, "tn": 1, "fn": 1}}
    with session_scope(tiny_home.url) as s:
        ingest(s, [parse_report(rep)])
    policy = _policy()
    engine = Engine(tiny_home.url, tiny_home.home, policy, plugins={"toy_nudge": Nudge()})
    d = engine.run_pass().decisions[0]
    if d.status == DecisionStatus.awaiting_approval:
        with session_scope(tiny_home.url) as s:
            repo.approve_decision(s, d.decision_id, actor="radiology-lead", reason="small groups; accepted")
        engine.run_pass()
    with session_scope(tiny_home.url, read_only=True) as s:
        export = export_all(s)
    parents = {v["id"]: v["parent_id"] for v in export["versions"]}
    candidates = [v for v in promoted_version_ids(export) if parents[v] is not None]
    assert candidates, "the pass promoted no candidate: " + "; ".join(
        str((r.get("metrics") or {}).get("gate", {}).get("summary") or r["error_text"]) for r in export["runs"])
    return export, candidates[-1], policy


def test_every_promoted_version_has_a_record_valid_against_the_schema(promoted):
    export, _, policy = promoted
    records = change_records(export, policy=policy_facts(policy))
    assert [r["version"]["id"] for r in records] == promoted_version_ids(export) and len(records) >= 2
    check = validator()
    for r in records:
        errors = [f"{list(e.path)}: {e.message}" for e in check.iter_errors(r)]
        assert not errors, errors
    broken = json.loads(json.dumps(records[-1]))
    broken["audit"]["events"][0]["hash"] = "not-a-digest"
    broken["promotions"][0]["at"] = "yesterday"
    assert len(list(check.iter_errors(broken))) >= 1


def test_the_record_says_what_triggered_changed_and_was_checked(promoted):
    export, vid, policy = promoted
    r = change_record(export, vid, policy=policy_facts(policy))
    v = next(x for x in export["versions"] if x["id"] == vid)
    run = next(x for x in export["runs"] if x["id"] == v["treatment_run_id"])
    [report] = r["trigger"]["reports"]
    assert (report["site"], report["pathology"], report["metric"], report["target"]) == (
        "site-b", TARGET, "fpr", 0.999)
    assert r["change"]["treatment"] == "toy_nudge" and r["change"]["parameters"] == run["parameters"]
    assert r["change"]["weights_changed"] and r["change"]["tensors_touched"] == ["classifier.weight"]
    vc = r["version_control"]
    assert vc["parent"] == v["parent_ref"] and vc["code_version"] == v["code_version"]
    assert vc["weights_digest"] == v["weights_digest"] and vc["run_id"] == run["id"]
    decision = next(d for d in export["decisions"] if d["id"] == v["decision_id"])
    assert [a["actor"] for a in r["approvals"]] == [a["actor"] for a in decision["approvals"]]
    # operating points: exactly the ones that differ from the parent's, per site
    parent = next(x for x in export["versions"] if x["id"] == v["parent_id"])
    for o in r["change"]["operating_points"]:
        site = o["site"]
        after = {**v["thresholds"], **(v["site_thresholds"].get(site, {}) if site != "*" else {})}
        before = {**parent["thresholds"], **(parent["site_thresholds"].get(site, {}) if site != "*" else {})}
        assert (o["before"], o["after"]) == (before[o["pathology"]], after[o["pathology"]])
        assert o["before"] != o["after"]
    # every gate check of the run is in the record exactly once, in its section
    sections = (r["verification"]["checks"] + r["verification"]["subgroup_checks"] + r["impact"]["parent_checks"]
                + r["impact"]["baseline_checks"] + r["sequestration"]["checks"])
    assert sorted(c["name"] for c in sections) == sorted(c["name"] for c in run["metrics"]["gate"]["checks"])
    assert all(c["name"].startswith("sequestration@") for c in r["sequestration"]["checks"])
    assert r["sequestration"]["checks"] and all(c["passed"] for c in r["sequestration"]["checks"])
    assert r["impact"]["baseline_checks"] and r["impact"]["authorised_baseline"]["site-b"]["ref"] == "cxr:1"
    assert any(c["name"].startswith("subgroup_family@") for c in r["verification"]["subgroup_checks"])
    # the protocol quotes the policy only because its digest is the decision's
    assert r["protocol"]["policy_verified"]
    assert r["protocol"]["declared"]["gate"] == policy.gate.model_dump(mode="json")
    assert r["protocol"]["declared_at"] <= r["protocol"]["run_started_at"]  # declared before the run
    assert r["verification"]["level"] == pytest.approx(1 - policy.gate.alpha)
    other = change_record(export, vid, policy={**policy_facts(policy), "digest": "0" * 64})
    assert not other["protocol"]["policy_verified"] and other["protocol"]["declared"] is None
    assert other["protocol"]["rules"] == r["protocol"]["rules"]  # the recorded limits stand either way


def test_the_record_is_tied_to_the_audit_chain_by_hashes(promoted):
    export, vid, _ = promoted
    r = change_record(export, vid)
    by_seq = {e["seq"]: e for e in export["audit_events"]}
    events = r["audit"]["events"]
    assert r["audit"]["chain"]["ok"] is True
    for e in events:
        assert e["hash"] == by_seq[e["seq"]]["hash"] and e["prev_hash"] == by_seq[e["seq"]]["prev_hash"]
    actions = {(e["action"], e["entity"]) for e in events}
    v = r["version"]
    assert ("version.register", f"model_version:{vid}") in actions
    assert ("decision.create", f"decision:{r['trigger']['decision_id']}") in actions
    assert any(a == "run.finish" and ent == f"treatment_run:{r['change']['run_id']}" for a, ent in actions)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    moves = [e for e in events if e["action"] == "alias.move"]
    assert v["ref"] != "cxr:1" and len(moves) == len(r["promotions"]) >= 1  # one audited move per promotion


def test_subgroup_differences_match_an_independent_computation(promoted):
    """ΔAUROC interval from the stored paired DeLong SE with scipy's quantile; Δrecall and its paired Wald
    interval from explicit per-patient hit vectors built from the discordant counts (numpy mean and std)."""
    from scipy.stats import norm

    export, vid, _ = promoted
    rows = subgroup_deltas(export, vid)
    assert rows and {r["pathology"] for r in rows} == {TARGET}
    stored = {(e["dataset_id"], g["attribute"], g["group"]): g for e in export["evaluations"]
              if e["version_id"] == vid and e["pathology"] == TARGET for g in e["subgroups"]}
    assert len(rows) == len(stored)
    z = norm.ppf(0.975)
    paired = 0
    for r in rows:
        g = stored[(r["dataset_id"], r["attribute"], r["group"])]
        if g.get("se_delta") is not None:
            assert r["delta_auroc_lo"] == pytest.approx(max(g["delta_auroc"] - z * g["se_delta"], -1.0), abs=1e-9)
            assert r["delta_auroc_hi"] == pytest.approx(min(g["delta_auroc"] + z * g["se_delta"], 1.0), abs=1e-9)
        if g.get("recall_lost") is None or not g["n_pos"]:
            assert r["delta_recall"] is None
            continue
        paired += 1
        n, b, c = g["n_pos"], g["recall_lost"], g["recall_gained"]
        d = np.zeros(n)
        d[:b], d[b:b + c] = -1.0, 1.0  # per positive: candidate hit minus parent hit
        assert r["delta_recall"] == pytest.approx(d.mean(), abs=1e-12)
        assert r["delta_recall"] == pytest.approx(g["recall"] - g["parent_recall"], abs=1e-9)
        se = d.std() / math.sqrt(n)
        assert r["delta_recall_lo"] == pytest.approx(max(d.mean() - z * se, -1.0), abs=1e-9)
        assert r["delta_recall_hi"] == pytest.approx(min(d.mean() + z * se, 1.0), abs=1e-9)
    assert paired > 0


def test_the_page_opens_in_chromium_with_its_forest_plot(promoted, tmp_path):
    export, vid, policy = promoted
    r = change_record(export, vid, policy=policy_facts(policy))
    r["change"]["notes"] = "<script>alert(1)</script>"
    forests = record_forests(r)
    assert forests and all(png.startswith(PNG_MAGIC) for _, png in forests)
    page = write_record(r, tmp_path / "record.html")
    text = page.read_text()
    for section in ("What triggered it", "What changed", "The protocol followed", "Verification", "Per subgroup",
                    "Approvals", "vs the authorised baseline", "Sequestered test data", "Version control",
                    "Audit chain"):
        assert section in text
    assert "http://" not in text and "https://" not in text
    assert "<script>alert" not in text and "&lt;script&gt;alert" in text
    assert all(e["hash"] in text for e in r["audit"]["events"])
    ok, total, widths = chromium_image_check(page, tmp_path)
    assert total == len(forests) and ok == total and all(w > 0 for w in widths)
    assert re.search(r'<img class="plot" id="forest-0"', text)


def test_the_demo_report_has_a_forest_per_promoted_candidate(promoted, tmp_path):
    export, vid, _ = promoted
    ref = next(f"{v['model']}:{v['version']}" for v in export["versions"] if v["id"] == vid)
    figs = subgroup_forests(export)
    assert figs and any(cap.startswith(f"{ref} vs") for cap, _ in figs)
    text = write_report(export, tmp_path / "report.html").read_text()
    assert "Per-subgroup change vs parent" in text and 'id="forest-0"' in text


def test_an_unpromoted_version_and_a_plot_without_pairs_are_refused_or_empty(promoted):
    from cxr.errors import InvalidInput

    export, _, _ = promoted
    unpromoted = [v["id"] for v in export["versions"] if v["id"] not in promoted_version_ids(export)]
    export = json.loads(json.dumps(export))
    export["versions"].append({**export["versions"][0], "id": 999, "version": 999, "parent_id": 1})
    for vid in [*unpromoted, 999]:
        with pytest.raises(InvalidInput, match="never promoted"):
            change_record(export, vid)
    assert forest_png([{"delta_auroc": None, "delta_recall": None}], "nothing") is None


def test_the_root_version_has_a_registration_record(promoted):
    export, _, _ = promoted
    r = change_record(export, 1)
    assert r["trigger"]["kind"] == "registration" and r["trigger"]["reports"] == []
    assert r["change"]["treatment"] is None and r["impact"]["parent"] is None and r["verification"]["gate"] is None
    assert r["change"]["tensors_touched"] is None
    assert any(e["action"] == "version.register" for e in r["audit"]["events"])
    assert not list(validator().iter_errors(r))
